"""``lal train`` for a real run: the dry-run plan, the model card, out-of-memory advice; ``lal bench`` input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import lal.train
from lal.checkpoint import load_checkpoint
from lal.cli import main

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(120))
ARGS = ["--tokenizer", "char", "--preset", "char-tiny", "--block-size", "32", "--batch-size", "8",
        "--eval-interval", "10", "--device", "cpu", "--seed", "3", "--quiet"]


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_dry_run_prints_the_plan_and_writes_nothing(text_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--text", str(text_file), "--out", str(out), *ARGS, "--max-steps", "200", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Plan: 0.40M parameters on" in printed and "(cpu), fp32" in printed
    assert "8 windows × 32 tokens × 1 accumulation step(s) × 1 process(es)" in printed
    for part in ("weights", "gradients", "AdamW state", "activations", "free memory", "ms/step", "200 steps"):
        assert part in printed, part
    assert not out.exists()


def test_every_run_writes_a_model_card(text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--text", str(text_file), "--out", str(out), *ARGS, "--max-steps", "30"]) == 0
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = min(rows, key=lambda row: row["val_loss"])
    n_train = int(len(TEXT) * 0.9)
    expected = [
        f"| SHA-256 | `{hashlib.sha256(text_file.read_bytes()).hexdigest()}` |",
        f"| tokens | {n_train:,} training, {len(TEXT) - n_train:,} validation",
        "| tokenizer | char,",
        f"| parameters | {load_checkpoint(out / 'best.pt').model.num_parameters():,} |",
        "2 layers, 4 heads, width 128, context 32",
        f"| steps | 30 (max_steps), {30 * 8 * 32:,} tokens read |",
        f"| best validation loss | {best['val_loss']:.4f} at step {best['step']}",
        "| hardware | ",
        "| precision | fp32 |",
        "![Training and validation loss](loss_curve.png)",
        "## Samples",
        "## Limitations",
        "## Intended use",
    ]
    for part in expected:
        assert part in card, part
    assert card.count("```text") == 2
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_of_memory_names_the_setting_to_lower(text_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(lal.train, "train", out_of_memory)
    assert main(["train", "--text", str(text_file), "--out", str(tmp_path / "run"), *ARGS, "--max-steps", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "micro-batches of 8 windows × 32 tokens" in err and "--batch-size 4 --grad-accum-steps 2" in err


def test_bench_with_zero_steps_is_one_clear_line(capsys) -> None:
    assert main(["bench", "--steps", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err == "error: --steps must be at least 1 (got 0): there is nothing to time otherwise.\n"


def test_bench_reports_dtype_and_the_readme_batch(capsys) -> None:
    assert main(["bench", "--preset", "char-tiny", "--steps", "2", "--block-size", "16", "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch_size"] == 16  # the README's table is at batch 16
    assert result["precision"] == "fp32" and result["peak_source"].startswith("measured")
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["peak_memory_mb"] > 0
