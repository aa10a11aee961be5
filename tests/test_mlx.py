"""The MLX backend (lal.mlx) against the PyTorch reference: weights, logits, training losses, the CLI.

These tests run with MLX's CPU build on Linux (``pip install "lal[mlx]"``). Where MLX is not
importable they skip, except under ``LAL_REQUIRE_MLX=1`` (``make test`` sets it where the mlx extra
installs MLX), where a missing MLX fails them instead: a broken install must not pass as "skipped".
The test of the missing-MLX message runs everywhere: it simulates the failed import.

Tolerances (float32, CPU): logits within 1e-4 (measured: under 1e-6); each of the first 20
training losses within 1e-4 of PyTorch's (measured: under 3e-6), and the weights after them within 1e-4.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lal.cli
import lal.train
from lal.checkpoint import load_checkpoint, save_checkpoint
from lal.cli import main
from lal.mlx import INSTALL_COMMAND, mlx_available
from lal.model import GPT, PRESETS, GPTConfig, preset_config
from lal.sample import generate as generate_torch
from lal.tokenizers import build_tokenizer

REQUIRE_MLX = os.environ.get("LAL_REQUIRE_MLX") == "1"

#: Logits of the same weights on the same tokens, MLX vs PyTorch (float32).
LOGITS_ATOL = 1e-4
#: Each training loss of the first 20 steps, and each weight after them, MLX vs PyTorch (float32, CPU).
TRAINING_ATOL = 1e-4

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60


@pytest.fixture(scope="module")
def mx():
    """``mlx.core``; skips the test where MLX is missing, fails it where MLX was promised."""
    if not mlx_available():
        if REQUIRE_MLX:
            pytest.fail(f"MLX is not importable (LAL_REQUIRE_MLX=1: this run promised it; {INSTALL_COMMAND})")
        pytest.skip(f"MLX is not installed ({INSTALL_COMMAND})")
    import mlx.core

    return mlx.core


def tiny_config(**overrides) -> GPTConfig:
    """A model small enough for MLX's CPU build (reference BLAS) to train in a second."""
    return GPTConfig(**{**dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32), **overrides})


def _logits(mlx_model, idx: torch.Tensor, mx) -> np.ndarray:
    logits, _ = mlx_model(mx.array(idx.numpy().astype(np.int32)))
    return np.array(logits)


# ------------------------------------------------------------------------- weights and logits


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_logits_match_and_weights_go_both_ways(mx, attn_impl: str) -> None:
    from lal.mlx import from_torch, to_torch

    torch.manual_seed(0)
    torch_model = GPT(tiny_config(attn_impl=attn_impl)).eval()
    mlx_model = from_torch(torch_model)
    idx = torch.randint(37, (3, 16))
    with torch.no_grad():
        expected, torch_loss = torch_model(idx, idx)
    _, mlx_loss = mlx_model(mx.array(idx.numpy().astype(np.int32)), mx.array(idx.numpy().astype(np.int32)))
    np.testing.assert_allclose(_logits(mlx_model, idx, mx), expected.numpy(), rtol=0, atol=LOGITS_ATOL)
    assert abs(mlx_loss.item() - torch_loss.item()) < LOGITS_ATOL

    back = to_torch(mlx_model)
    assert back.lm_head.weight is back.transformer.wte.weight  # still tied
    for (name, a), (_, b) in zip(torch_model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name  # float32 through NumPy: bit for bit


def test_kv_cache_and_attention_maps_match_pytorch(mx) -> None:
    from lal.mlx import from_torch

    torch.manual_seed(1)
    torch_model = GPT(tiny_config()).eval()
    mlx_model = from_torch(torch_model)
    idx = torch.randint(37, (2, 12))
    with torch.no_grad():
        expected, _ = torch_model(idx)
        torch_maps = torch_model.attention_maps(idx)
    cache = mlx_model.new_kv_cache()
    prefill, _ = mlx_model(mx.array(idx[:, :7].numpy().astype(np.int32)), kv_cache=cache)  # a chunk, then one by one
    steps = [np.array(prefill)] + [
        np.array(mlx_model(mx.array(idx[:, t : t + 1].numpy().astype(np.int32)), kv_cache=cache)[0]) for t in range(7, 12)
    ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected.numpy(), rtol=0, atol=LOGITS_ATOL)
    mlx_maps = mlx_model.attention_maps(mx.array(idx.numpy().astype(np.int32)))
    for a, b in zip(mlx_maps, torch_maps):
        np.testing.assert_allclose(np.array(a), b.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_has_the_same_names_and_shapes(mx, preset: str) -> None:
    from mlx.utils import tree_flatten

    from lal.mlx import GPT as MLXGPT

    config = preset_config(preset, vocab_size=65)
    with torch.device("meta"):  # shapes only: nothing is allocated
        torch_shapes = {name: tuple(p.shape) for name, p in GPT(config).state_dict().items()}
    mlx_shapes = {name: tuple(p.shape) for name, p in tree_flatten(MLXGPT(config).parameters())}  # lazy: not computed
    torch_shapes.pop("lm_head.weight")  # the tied head: the token table again, not a parameter in MLX
    assert mlx_shapes == torch_shapes


def test_checkpoints_cross_between_backends(mx, tmp_path: Path) -> None:
    from lal.mlx import from_torch
    from lal.mlx.convert import load_checkpoint as load_mlx_checkpoint
    from lal.mlx.convert import save_checkpoint as save_mlx_checkpoint

    tokenizer = build_tokenizer("char", text=TEXT)
    torch.manual_seed(2)
    torch_model = GPT(tiny_config(vocab_size=tokenizer.vocab_size)).eval()
    idx = torch.randint(tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        expected, _ = torch_model(idx)

    save_checkpoint(tmp_path / "torch.pt", torch_model, tokenizer)
    loaded = load_mlx_checkpoint(tmp_path / "torch.pt")
    assert loaded.tokenizer.encode("To be") == tokenizer.encode("To be")
    np.testing.assert_allclose(_logits(loaded.model, idx, mx), expected.numpy(), rtol=0, atol=LOGITS_ATOL)

    save_mlx_checkpoint(tmp_path / "mlx.pt", from_torch(torch_model), tokenizer)
    reloaded = load_checkpoint(tmp_path / "mlx.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(idx)[0], expected, rtol=0, atol=LOGITS_ATOL)


# ------------------------------------------------------------------------- training


def test_decay_groups_are_lal_trains(mx) -> None:
    from mlx.utils import tree_flatten

    from lal.mlx import from_torch
    from lal.mlx.train import decays

    torch_model = GPT(tiny_config())
    decayed_ids = {id(p) for p in torch_model.parameter_groups(0.1)[0]["params"]}
    torch_decayed = {name for name, p in torch_model.named_parameters() if id(p) in decayed_ids}
    mlx_decayed = {name for name, w in tree_flatten(from_torch(torch_model).parameters()) if decays(name, w)}
    assert mlx_decayed == torch_decayed
    assert "transformer.h.0.ln_1.weight" not in mlx_decayed and "transformer.wte.weight" in mlx_decayed


def test_first_20_training_losses_match_pytorch(mx) -> None:
    """Same initial weights, same batches (the same generator), same schedule, accumulation and clipping."""
    from lal.mlx import from_torch, to_torch
    from lal.mlx.train import Trainer as MLXTrainer

    tokenizer = build_tokenizer("char", text=TEXT)
    data = torch.tensor(tokenizer.encode(TEXT))
    train_data, val_data = data[:4000], data[4000:]
    torch.manual_seed(3)
    torch_model = GPT(tiny_config(vocab_size=tokenizer.vocab_size))
    mlx_model = from_torch(torch_model)
    settings = dict(max_steps=20, batch_size=8, grad_accum_steps=2, warmup_steps=5, lr=5e-3, min_lr=5e-4,
                    grad_clip=1.0, eval_windows=16, device="cpu", progress=False)
    torch_trainer = lal.train.Trainer(torch_model, train_data, val_data, lal.train.TrainConfig(**settings))
    mlx_trainer = MLXTrainer(mlx_model, train_data, val_data, lal.train.TrainConfig(**settings))
    for _ in range(20):
        torch_trainer.train_step()
        mlx_trainer.train_step()

    torch_losses = torch.stack(torch_trainer.step_losses).numpy()
    mlx_losses = torch.stack(mlx_trainer.step_losses).numpy()
    assert torch_losses[-1] < torch_losses[0] - 0.5  # it learned: the comparison is of a real run
    np.testing.assert_allclose(mlx_losses, torch_losses, rtol=0, atol=TRAINING_ATOL)
    np.testing.assert_allclose(torch.stack(mlx_trainer.step_grad_norms).numpy(),
                               torch.stack(torch_trainer.step_grad_norms).numpy(), rtol=1e-4, atol=0)
    assert abs(mlx_trainer._validation_loss() - torch_trainer._validation_loss()) < TRAINING_ATOL  # same windows
    for (name, a), (_, b) in zip(to_torch(mlx_model).state_dict().items(), torch_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=TRAINING_ATOL, msg=name)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_weights(mx) -> None:
    from mlx.utils import tree_flatten

    from lal.mlx import from_torch
    from lal.mlx.train import Trainer as MLXTrainer

    torch.manual_seed(5)
    model = from_torch(GPT(tiny_config()))
    data = torch.randint(37, (2000,))
    cfg = lal.train.TrainConfig(max_steps=10, batch_size=4, lr=1e30, warmup_steps=1, grad_clip=None, eval_windows=4,
                                device="cpu", progress=False)
    trainer = MLXTrainer(model, data[:1800], data[1800:], cfg)
    trainer.train_step()  # an absurd step: the weights are now huge, and the next loss is not finite
    after_first = {name: np.array(w) for name, w in tree_flatten(model.parameters())}
    with pytest.raises(lal.train.TrainingDivergedError, match="NaN or infinite at step 2") as caught:
        trainer.train_step()
    assert caught.value.step == 2 and trainer.state.step == 1
    for name, weight in tree_flatten(model.parameters()):  # the update of the NaN step was undone
        np.testing.assert_array_equal(np.array(weight), after_first[name], err_msg=name)


def test_generation_matches_pytorch_past_the_context(mx) -> None:
    """Greedy and seeded sampling, with the window sliding past block_size (the cache rebuilt)."""
    from lal.mlx import from_torch, generate

    torch.manual_seed(4)
    torch_model = GPT(tiny_config()).eval()
    mlx_model = from_torch(torch_model)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    for sampling in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, seed=7), dict(top_p=0.9, seed=8)):
        expected = generate_torch(torch_model, prompt, 20, **sampling)  # 10 + 20 > block_size 16
        assert generate(mlx_model, prompt, 20, **sampling) == expected, sampling


# ------------------------------------------------------------------------- the command line


def _train(text_file: Path, out: Path, backend: str) -> int:
    return main(["train", "--backend", backend, "--text", str(text_file), "--tokenizer", "char", "--preset",
                 "char-tiny", "--out", str(out), "--block-size", "8", "--batch-size", "4", "--max-steps", "20",
                 "--eval-interval", "10", "--device", "cpu", "--seed", "5", "--quiet"])


def _generate(out: Path, backend: str, capsys) -> str:
    capsys.readouterr()
    assert main(["generate", "--backend", backend, "--ckpt", str(out), "--prompt", "To be", "--max-new-tokens", "20",
                 "--seed", "1", "--device", "cpu"]) == 0
    return capsys.readouterr().out


def test_cli_trains_with_one_backend_and_samples_with_the_other(mx, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(lal.train.PRESET_TRAIN_SETTINGS, "char-tiny", dict(eval_windows=16))  # fast evaluations
    text_file = tmp_path / "mine.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    runs = {backend: tmp_path / backend for backend in ("torch", "mlx")}
    with monkeypatch.context() as patch:  # the PyTorch run's model card is tested in test_cli.py
        patch.setattr(lal.cli, "_write_model_card", lambda args, *rest: args.out / "MODEL_CARD.md")
        assert _train(text_file, runs["torch"], "torch") == 0
    assert _train(text_file, runs["mlx"], "mlx") == 0
    assert "MLX backend" in (runs["mlx"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    rows = {b: [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
            for b, out in runs.items()}
    assert [r["step"] for r in rows["mlx"]] == [0, 10, 20]
    for torch_row, mlx_row in zip(rows["torch"], rows["mlx"]):  # the same seed: the same start and batches
        assert abs(torch_row["val_loss"] - mlx_row["val_loss"]) < TRAINING_ATOL
    assert rows["mlx"][-1]["val_loss"] < rows["mlx"][0]["val_loss"] - 0.5
    assert load_checkpoint(runs["mlx"]).extra["backend"] == "mlx"  # a lal checkpoint, read by PyTorch

    for out in runs.values():
        by_torch, by_mlx = _generate(out, "torch", capsys), _generate(out, "mlx", capsys)
        assert by_torch.startswith("To be") and len(by_torch) > len("To be") + 15
        assert by_mlx == by_torch  # same weights, same seed, lal.sample's choices: the same text


def test_cli_bench_with_mlx_reports_the_torch_models_figures(mx, capsys) -> None:
    common = ["--preset", "char-tiny", "--batch-size", "2", "--block-size", "16", "--steps", "2", "--json",
              "--device", "cpu"]
    assert main(["bench", "--backend", "mlx", *common]) == 0
    mlx_result = json.loads(capsys.readouterr().out)
    assert main(["bench", "--backend", "torch", *common]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert mlx_result["device"] == "mlx-cpu" and mlx_result["tokens_per_s"] > 0
    for key in ("n_params", "batch_size", "block_size", "steps"):
        assert mlx_result[key] == torch_result[key], key


def test_cli_refuses_what_only_torch_does(mx, tmp_path: Path, capsys) -> None:
    assert main(["train", "--backend", "mlx", "--out", str(tmp_path / "run"), "--precision", "bf16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision bf16 needs --backend torch" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [
    ["train", "--backend", "mlx", "--out", "OUT"],
    ["generate", "--backend", "mlx", "--ckpt", "OUT"],
    ["bench", "--backend", "mlx"],
])
def test_without_mlx_one_line_names_the_install_command(command: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    for name in [m for m in sys.modules if m == "mlx" or m.startswith("mlx.")] + ["mlx", "mlx.core"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import mlx.core` now raises ImportError
    out = tmp_path / "run"
    assert main([str(out) if word == "OUT" else word for word in command]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the MLX backend needs MLX")
    assert INSTALL_COMMAND in err and "--backend torch" in err
    assert not out.exists()  # refused before touching anything
