"""What `lal train` says about its run before it starts: the schedule and the vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from lal.cli import _warmup_for_run, main
from lal.train import TrainConfig, lr_at

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60
CHARACTERS = len(set(TEXT))  # 27 distinct characters in TEXT


def _train(tmp_path: Path, *extra: str) -> None:
    text = tmp_path / "mine.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["train", "--text", str(text), "--tokenizer", "char", "--preset", "char-tiny",
                 "--out", str(tmp_path / "run"), "--block-size", "32", "--batch-size", "8", "--eval-interval", "10",
                 "--device", "cpu", "--seed", "3", "--quiet", *extra]) == 0


def test_a_short_run_warms_up_for_a_tenth_of_its_steps(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "20")
    out = capsys.readouterr().out
    assert ("learning rate warms up to 0.005 over 2 steps (the preset's 100, shortened to a tenth of this run), "
            "then cosine to 0.0005 at step 20; 20 steps.") in out


def test_a_run_long_enough_keeps_the_presets_warmup(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "1000", "--target-val-loss", "99")  # stops at the first evaluation
    out = capsys.readouterr().out
    assert "warms up to 0.005 over 100 steps, then cosine to 0.0005 at step 1000; 1000 steps." in out


@pytest.mark.parametrize("max_steps, warmup", [(20, 2), (5, 1), (999, 99), (1000, 100), (1500, 100)])
def test_the_warmup_used_is_the_one_printed(max_steps: int, warmup: int) -> None:
    cfg = TrainConfig(max_steps=max_steps)
    assert _warmup_for_run(cfg) == warmup
    shortened = TrainConfig(max_steps=max_steps, warmup_steps=warmup)
    assert lr_at(warmup - 1, shortened) == pytest.approx(shortened.lr)  # the peak is reached inside the run
    assert lr_at(max_steps, shortened) == pytest.approx(shortened.min_lr)


def test_the_vocabulary_line_counts_characters_and_special_tokens(tmp_path: Path, capsys) -> None:
    _train(tmp_path, "--max-steps", "1")
    out = capsys.readouterr().out
    assert f"char tokenizer with {CHARACTERS + 3} tokens ({CHARACTERS} characters + 3 special tokens)." in out
