"""What `lal train` says about its run before it starts: the schedule and the vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from lal.cli import main
from lal.train import TrainConfig, lr_at

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60
CHARACTERS = len(set(TEXT))  # 27 distinct characters in TEXT


def _train(tmp_path: Path, *extra: str) -> None:
    text = tmp_path / "mine.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["train", "--text", str(text), "--tokenizer", "char", "--preset", "char-tiny",
                 "--out", str(tmp_path / "run"), "--block-size", "32", "--batch-size", "8", "--eval-interval", "10",
                 "--device", "cpu", "--seed", "3", "--quiet", *extra]) == 0


def test_a_run_shorter_than_its_warmup_says_it_ends_still_warming_up(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "20")
    out = capsys.readouterr().out
    # 20 of the preset's 100 warmup steps: the last step's rate is 0.005 × 20 / 100 = 0.001.
    assert ("learning rate warms up towards 0.005 over 100 steps, longer than this run: it ends still warming up, "
            "at 0.001; 20 steps.") in out
    assert "cosine" not in out.split("Global batch", 1)[1].splitlines()[0]


def test_a_run_long_enough_keeps_the_presets_warmup(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "1000", "--target-val-loss", "99")  # stops at the first evaluation
    out = capsys.readouterr().out
    assert "warms up to 0.005 over 100 steps, then cosine to 0.0005 at step 1000; 1000 steps." in out


def test_the_vocabulary_line_counts_characters_and_special_tokens(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "1")
    out = capsys.readouterr().out
    assert f"char tokenizer with {CHARACTERS + 3} tokens ({CHARACTERS} characters + 3 special tokens)." in out
