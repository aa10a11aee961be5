"""GPT-2's weights in lal's GPT: the same logits as ``transformers``' GPT2LMHeadModel, offline.

A small GPT-2 with random weights is saved with ``save_pretrained`` (Hugging Face's own writer of
``config.json`` + ``model.safetensors``), loaded through :func:`lal.pretrained.load_gpt2`, and
compared with the model that wrote it. Downloads are served by a local HTTP server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from lal import pretrained
from lal.cli import main
from lal.data import DownloadError
from lal.pretrained import (GPT2_RELEASES, GPT2Release, convert_gpt2_state_dict, gpt2_config, gpt2_state_dict,
                            load_gpt2)
from lal.sample import generate
from local_server import LocalServer

# GPT-2's vocabulary (so GPT-2's tokenizer fits), everything else tiny. n_embd is not a power of
# two and heads are 12 wide, so a transposed square matrix or a mixed-up split would show.
SMALL = dict(vocab_size=50257, n_positions=48, n_embd=36, n_layer=3, n_head=3)


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SMALL)).eval()
    with torch.no_grad():  # biases and LayerNorm gains start at 0 and 1: make every one count
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    return model


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2-small-random")
    hf_model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    return folder


def _hf_logits(hf_model: GPT2LMHeadModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(ids).logits


def test_same_logits_as_transformers(hf_model, hf_folder) -> None:
    model, tokenizer = load_gpt2(hf_folder)
    ids = torch.randint(0, SMALL["vocab_size"], (2, SMALL["n_positions"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(ids)
    torch.testing.assert_close(logits, _hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)
    assert not model.training
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied, so fine-tuning keeps it tied
    assert model.num_parameters() == sum(p.numel() for p in hf_model.parameters())


def test_conv1d_weights_are_transposed_into_linear_layers(hf_model, hf_folder) -> None:
    model, _ = load_gpt2(hf_folder)
    ours, theirs = model.transformer.h[1], hf_model.transformer.h[1]
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        torch.testing.assert_close(ours.get_submodule(name).weight, theirs.get_submodule(name).weight.t(),
                                   rtol=0, atol=0)


def test_tokenizer_is_gpt2s() -> None:
    tokenizer = pretrained.gpt2_tokenizer()
    assert tokenizer.vocab_size == 50257
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("<|endoftext|>") == [50256]


def test_greedy_generation_with_the_kv_cache_matches_transformers(hf_model, hf_folder) -> None:
    model, _ = load_gpt2(hf_folder)
    prompt = [464, 3290, 286, 1204, 318]  # "The meaning of life is"
    ours = generate(model, prompt, max_new_tokens=12, temperature=0.0)  # KV-cache path: the new ids
    theirs = torch.tensor([prompt])
    for _ in range(12):  # greedy decoding by hand, full forward each time
        next_id = _hf_logits(hf_model, theirs)[:, -1].argmax(-1, keepdim=True)
        theirs = torch.cat([theirs, next_id], dim=1)
    assert ours == theirs[0, len(prompt):].tolist()


def test_openai_layout_without_prefix_and_with_mask_buffers_loads(hf_model, hf_folder, tmp_path) -> None:
    """The files on the Hub name tensors ``h.0.attn.c_attn.weight`` and carry ``h.N.attn.bias`` masks."""
    state = {name.removeprefix("transformer."): tensor.clone() for name, tensor in hf_model.state_dict().items()
             if name != "lm_head.weight"}
    for layer in range(SMALL["n_layer"]):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, SMALL["n_positions"], SMALL["n_positions"]))
    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
    model, _ = load_gpt2(tmp_path)
    ids = torch.tensor([[15496, 995, 13, 314]])
    torch.testing.assert_close(model(ids)[0].detach(), _hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


def test_export_to_openai_layout_round_trips_through_safetensors(tmp_path, hf_model, hf_folder) -> None:
    model, _ = load_gpt2(hf_folder)
    exported = gpt2_state_dict(model)
    assert set(exported) == {name.removeprefix("transformer.") for name in hf_model.state_dict()
                             if name != "lm_head.weight"} | {f"h.{i}.attn.bias" for i in range(SMALL["n_layer"])}
    torch.testing.assert_close(exported["h.0.mlp.c_fc.weight"], hf_model.transformer.h[0].mlp.c_fc.weight,
                               rtol=0, atol=0)  # Conv1D's (in, out) again
    save_file(exported, tmp_path / "model.safetensors")
    shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
    again, _ = load_gpt2(tmp_path)
    for (name, ours), theirs in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(ours, theirs), name


# --------------------------------------------------------------------------- bad input, one line each


def _config(hf_folder: Path, **changes) -> dict:
    values = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))
    values.update(changes)
    return values


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_type="llama"), "model_type is 'llama', not 'gpt2'"),
        (dict(activation_function="relu"), "activation_function = 'relu'.*tanh GELU"),
        (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon = 1e-06"),
        (dict(n_inner=100), "n_inner = 100.*4 × n_embd"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings = False"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(n_head=5), "n_embd \\(36\\) must be divisible by n_head \\(5\\)"),
    ],
)
def test_configs_lal_cannot_run_are_refused(hf_folder, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        gpt2_config(_config(hf_folder, **changes))


def test_missing_key_is_named(hf_folder) -> None:
    values = _config(hf_folder)
    del values["n_positions"]
    with pytest.raises(ValueError, match="no 'n_positions'"):
        gpt2_config(values)


def test_config_of_another_shape_names_the_tensor(hf_folder) -> None:
    with pytest.raises(ValueError, match="missing transformer.h.3.*config.json the one that came with"):
        convert_gpt2_state_dict(pretrained._read_safetensors(hf_folder / "model.safetensors"),
                                gpt2_config(_config(hf_folder, n_layer=4)))
    with pytest.raises(ValueError, match="wpe.weight has shape \\(48, 36\\) but config.json implies \\(64, 36\\)"):
        convert_gpt2_state_dict(pretrained._read_safetensors(hf_folder / "model.safetensors"),
                                gpt2_config(_config(hf_folder, n_positions=64)))


def test_missing_folder_and_files_say_what_to_do(hf_folder, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="There is no folder .*Give a GPT-2 name \\(gpt2, gpt2-medium"):
        load_gpt2(tmp_path / "nowhere")
    shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors: a GPT-2 folder needs both"):
        load_gpt2(tmp_path)


def test_truncated_weights_and_broken_config_are_one_line_errors(hf_folder, tmp_path) -> None:
    shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable safetensors file.*Download it again") as error:
        load_gpt2(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="config.json is not a readable JSON file"):
        load_gpt2(tmp_path)


def test_a_model_with_another_vocabulary_is_not_given_gpt2s_tokenizer(tmp_path) -> None:
    GPT2LMHeadModel(GPT2Config(**{**SMALL, "vocab_size": 100})).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="100 tokens, not GPT-2's 50,257"):
        load_gpt2(tmp_path)
    assert pretrained.load_gpt2_folder(tmp_path).config.vocab_size == 100


# --------------------------------------------------------------------------- downloading by name


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _routes(release: GPT2Release, folder: Path, weights_headers: dict | None = None) -> dict:
    """The Hub's paths for ``release``; like the Hub, only the large (LFS) weights file states its SHA-256."""
    prefix = f"/{release.repo}/resolve/{release.revision}"
    return {f"{prefix}/{name}": (200, "application/octet-stream", (folder / name).read_bytes(),
                                 (weights_headers or {}) if name == "model.safetensors" else {})
            for name in ("config.json", "model.safetensors")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_by_name_verifies_caches_and_then_works_offline(hf_model, hf_folder, cache, monkeypatch) -> None:
    release = GPT2Release("gpt2-medium", "test/gpt2-medium", revision="abc123", sha256={
        "config.json": _sha256(hf_folder / "config.json"), "model.safetensors": _sha256(hf_folder / "model.safetensors")})
    monkeypatch.setitem(GPT2_RELEASES, "gpt2-medium", release)
    server = LocalServer(_routes(release, hf_folder))
    try:
        model, _ = load_gpt2("gpt2-medium", base_url=server.url(""))
        assert sorted(server.paths) == sorted(f"/test/gpt2-medium/resolve/abc123/{n}"
                                              for n in ("config.json", "model.safetensors"))
        folder = cache / "gpt2" / "gpt2-medium"
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "verified.json"]
        load_gpt2("gpt2-medium", base_url=server.url(""))
        assert len(server.paths) == 2  # the second load read the cache
    finally:
        server.close()
    ids = torch.tensor([[15496, 995]])
    torch.testing.assert_close(model(ids)[0].detach(), _hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


def test_pinned_checksum_rejects_other_files_and_keeps_nothing(hf_folder, cache) -> None:
    server = LocalServer(_routes(GPT2_RELEASES["gpt2"], hf_folder))  # the real gpt2 entry, pinned
    try:
        with pytest.raises(DownloadError, match="gpt2's config.json .* does not match its SHA-256.*Nothing was kept"):
            load_gpt2("gpt2", base_url=server.url(""))
    finally:
        server.close()
    assert [p.name for p in (cache / "gpt2" / "gpt2").iterdir()] == []


def test_stated_checksum_is_checked_when_none_is_pinned(hf_folder, cache) -> None:
    release = GPT2_RELEASES["gpt2-large"]
    assert not release.sha256
    wrong = {"X-Linked-Etag": '"' + "0" * 64 + '"'}
    server = LocalServer(_routes(release, hf_folder, weights_headers=wrong))
    try:
        with pytest.raises(DownloadError, match="model.safetensors .*expected 0000"):
            load_gpt2("gpt2-large", base_url=server.url(""))
        right = {"X-Linked-Etag": f'"{_sha256(hf_folder / "model.safetensors")}"'}
        server.routes.update(_routes(release, hf_folder, weights_headers=right))
        load_gpt2("gpt2-large", base_url=server.url(""))
    finally:
        server.close()
    record = json.loads((cache / "gpt2" / "gpt2-large" / "verified.json").read_text(encoding="utf-8"))
    assert record["model.safetensors"]["sha256"] == _sha256(hf_folder / "model.safetensors")


def test_failed_download_says_how_to_work_offline(cache) -> None:
    server = LocalServer({})
    try:
        with pytest.raises(DownloadError, match="HTTP 404.*pass that folder instead of the name"):
            load_gpt2("gpt2-xl", base_url=server.url(""))
    finally:
        server.close()
    with pytest.raises(ValueError, match="Unknown GPT-2 model 'gpt3'"):
        pretrained.download_gpt2("gpt3")


# --------------------------------------------------------------------------- the command line


def test_lal_generate_samples_from_gpt2_weights(hf_model, hf_folder, capsys) -> None:
    prompt = "The meaning of life is"
    assert main(["generate", "--gpt2", str(hf_folder), "--prompt", prompt, "--max-new-tokens", "6",
                 "--temperature", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tokenizer = pretrained.gpt2_tokenizer()
    ids = torch.tensor([tokenizer.encode(prompt)])
    for _ in range(6):
        ids = torch.cat([ids, _hf_logits(hf_model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert printed == tokenizer.decode(ids[0].tolist()) + "\n"


def test_lal_generate_bad_folder_is_one_line(tmp_path, capsys) -> None:
    assert main(["generate", "--gpt2", str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: There is no folder") and error.count("\n") == 1
