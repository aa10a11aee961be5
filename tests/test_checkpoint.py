"""Checkpoints: one self-contained format, atomic writes, safe loading, and clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lal import checkpoint as lal_checkpoint
from lal.checkpoint import CheckpointError, load_checkpoint, load_model_state, read_checkpoint, save_checkpoint
from lal.model import GPT, GPTConfig
from lal.tokenizers import CharTokenizer

TEXT = "to be, or not to be: that is the question.\n"


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    values = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**values, **overrides}))


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture
def saved(tmp_path, tokenizer) -> tuple[Path, GPT]:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.tensor([tokenizer.encode(TEXT[:16])])
    _, loss = model(idx, idx)
    loss.backward()
    optimizer.step()
    rng_state = torch.Generator().manual_seed(5).get_state()
    path = save_checkpoint(tmp_path / "model.pt", model, tokenizer, optimizer=optimizer,
                           train_state={"step": 7, "rng": rng_state}, extra={"note": "hello"})
    return path, model


def test_round_trip_gives_the_same_logits_tokenizer_and_state(saved, tokenizer) -> None:
    path, model = saved
    loaded = load_checkpoint(path)
    idx = torch.tensor([tokenizer.encode("to be or not")])
    model.eval()
    torch.testing.assert_close(loaded.model(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert not loaded.model.training
    assert loaded.config == model.config
    assert loaded.tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    assert loaded.train_state["step"] == 7
    assert torch.equal(loaded.train_state["rng"], torch.Generator().manual_seed(5).get_state())
    assert loaded.extra == {"note": "hello"}
    assert loaded.optimizer_state["state"][0]["step"].item() == 1
    assert loaded.path == path


def test_tied_weights_are_stored_once_and_stay_tied(saved) -> None:
    path, _ = saved
    payload, _ = read_checkpoint(path)
    weights = payload["model"]
    assert weights["lm_head.weight"].data_ptr() == weights["transformer.wte.weight"].data_ptr()
    model = load_checkpoint(path).model
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = 42.0
    assert model.lm_head.weight[0, 0].item() == 42.0


def test_compiled_model_prefix_is_stripped(tmp_path, tokenizer) -> None:
    model = tiny_model()
    # torch.compile wraps the model without compiling anything until the first call, and its
    # wrapper's state dict names every weight `_orig_mod.<name>`: the keys the loader must strip.
    compiled = torch.compile(model, backend="eager")
    prefixed = compiled.state_dict()
    assert all(key.startswith("_orig_mod.") for key in prefixed)
    path = save_checkpoint(tmp_path / "c.pt", compiled, tokenizer)
    payload, _ = read_checkpoint(path)
    assert sorted(payload["model"]) == sorted(model.state_dict())
    other = tiny_model(seed=1)
    load_model_state(other, prefixed)
    torch.testing.assert_close(other.state_dict(), model.state_dict(), rtol=0, atol=0)
    into_compiled = torch.compile(tiny_model(seed=2), backend="eager")
    load_model_state(into_compiled, payload["model"])
    torch.testing.assert_close(into_compiled.state_dict(), prefixed, rtol=0, atol=0)


def test_folder_prefers_best_then_last(tmp_path, tokenizer) -> None:
    save_checkpoint(tmp_path / "last.pt", tiny_model(), tokenizer, extra={"which": "last"})
    assert load_checkpoint(tmp_path).extra["which"] == "last"
    save_checkpoint(tmp_path / "best.pt", tiny_model(), tokenizer, extra={"which": "best"})
    assert load_checkpoint(tmp_path).extra["which"] == "best"


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, tokenizer, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model(seed=0), tokenizer, extra={"version": "old"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, tiny_model(seed=1), tokenizer, extra={"version": "new"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # the temporary file is gone
    assert load_checkpoint(path).extra == {"version": "old"}  # and the previous checkpoint intact


def test_missing_file_and_empty_folder_name_the_paths_tried(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"No checkpoint at .*nope\.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"tried .*best\.pt, .*last\.pt"):
        load_checkpoint(tmp_path)


def test_truncated_and_empty_files_are_reported_as_corrupt(saved, tmp_path) -> None:
    path, _ = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(garbage)
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(bytes((index * 7919 + 13) % 256 for index in range(4000)))
    with pytest.raises(CheckpointError, match="is not a checkpoint") as raised:
        load_checkpoint(random_bytes)
    assert "run code" not in str(raised.value)  # random bytes are no pickle that would run code
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)


def test_foreign_files_are_not_lal_checkpoints(tmp_path) -> None:
    state_dict = tmp_path / "weights.pt"
    torch.save(tiny_model().state_dict(), state_dict)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(state_dict)
    other = tmp_path / "other.pt"
    torch.save({"model_args": {"n_layer": 2}, "iter_num": 5}, other)
    with pytest.raises(CheckpointError, match="keys iter_num, model_args"):
        load_checkpoint(other)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tensor)


def test_future_format_version_asks_for_an_upgrade(saved, tmp_path) -> None:
    payload, _ = read_checkpoint(saved[0])
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99.*Upgrade lal"):
        load_checkpoint(tmp_path / "future.pt")


CODE_RAN = []


def _record_code_execution(marker: str) -> str:
    CODE_RAN.append(marker)
    return marker


class _Malicious:
    """Unpickling this calls a function: the mechanism a booby-trapped checkpoint uses."""

    def __reduce__(self):
        return (_record_code_execution, ("pwned",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, writer) -> None:
    path = tmp_path / "evil.pt"
    payload = {"format": "lal-checkpoint", "version": 1, "model": _Malicious()}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert pickle.loads(pickle.dumps(_Malicious())) == "pwned"  # the trap works when unpickled...
    CODE_RAN.clear()
    with pytest.raises(CheckpointError, match="Refused to load .* for safety"):
        load_checkpoint(path)
    assert CODE_RAN == []  # ...but loading the checkpoint never ran it


def test_weights_of_another_shape_are_explained(saved, tmp_path, tokenizer) -> None:
    path, _ = saved
    wider = tiny_model(n_embd=32)
    with pytest.raises(CheckpointError, match=r"do not fit this model \(2 layers, 2 heads, width 32.*size mismatch"):
        load_model_state(wider, read_checkpoint(path)[0]["model"], source=path)
    payload, _ = read_checkpoint(path)
    payload["model_config"]["n_layer"] = 3  # a config that does not match its own weights
    torch.save(payload, tmp_path / "inconsistent.pt")
    with pytest.raises(CheckpointError, match="do not fit this model.*Missing key"):
        load_checkpoint(tmp_path / "inconsistent.pt")


def test_saving_needs_a_tokenizer(tmp_path) -> None:
    with pytest.raises(TypeError, match="needs the tokenizer"):
        save_checkpoint(tmp_path / "x.pt", tiny_model(), None)
    assert not (tmp_path / "x.pt").exists()


def test_saved_file_is_readable_by_others(saved) -> None:
    path, _ = saved
    assert path.stat().st_mode & 0o044  # not the private 0600 of a temporary file
    assert lal_checkpoint.FORMAT_NAME == read_checkpoint(path)[0]["format"]
