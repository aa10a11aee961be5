"""Several processes with DistributedDataParallel: ``torchrun -m lal train`` on the CPU (gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lal.cli import main
from word_corpus import WORDS, word_text

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ARGS = ["--tokenizer", "char", "--preset", "char-tiny", "--block-size", "32", "--eval-interval", "10",
              "--device", "cpu", "--seed", "5", "--quiet"]
GLOBAL_BATCH = 16


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(word_text(4000, seed=0, words=(*WORDS, "my", "lord")) + "\n", encoding="utf-8")
    return path


def torchrun(text_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m lal train ...``, as a learner types it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lal", "train", "--text", str(text_file), "--out", str(out), *TRAIN_ARGS,
               "--batch-size", str(GLOBAL_BATCH // 2), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "elapsed_s"} for row in rows]


@pytest.fixture(scope="module")
def two_process_run(text_file: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, torchrun(text_file, out, "--max-steps", "40")


def test_two_processes_train_and_only_rank_0_writes(two_process_run) -> None:
    out, result = two_process_run
    assert result.stdout.count("Done after 40 steps") == 1  # one process speaks
    assert result.stdout.count("Training char-tiny") == 1
    assert f"Global batch {GLOBAL_BATCH} windows" in result.stdout and "× 2 process(es)" in result.stdout
    rows = metrics(out)
    assert [row["step"] for row in rows] == [0, 10, 20, 30, 40]  # each evaluation written once
    assert rows[-1]["tokens"] == 40 * GLOBAL_BATCH * 32  # both processes' windows counted
    assert sorted(path.name for path in out.iterdir()) == ["MODEL_CARD.md", "best.pt", "last.pt", "loss_curve.png",
                                                           "metrics.jsonl"]
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "× 2 processes" in card and f"{GLOBAL_BATCH} windows × 32 tokens per step" in card


def test_the_loss_falls_like_one_process_with_the_same_global_batch(two_process_run, text_file, tmp_path) -> None:
    out, _ = two_process_run
    single = tmp_path / "single"
    assert main(["train", "--text", str(text_file), "--out", str(single), *TRAIN_ARGS, "--batch-size",
                 str(GLOBAL_BATCH), "--max-steps", "40"]) == 0
    ddp_rows, single_rows = metrics(out), metrics(single)
    assert ddp_rows[0]["val_loss"] == pytest.approx(single_rows[0]["val_loss"], abs=1e-5)  # same weights, same windows
    assert [row["tokens"] for row in ddp_rows] == [row["tokens"] for row in single_rows]
    for ddp_row, single_row in zip(ddp_rows[1:], single_rows[1:]):
        # Other windows (each rank draws its own), the same amount of learning per step.
        assert ddp_row["val_loss"] == pytest.approx(single_row["val_loss"], abs=0.06)
    assert ddp_rows[-1]["val_loss"] < ddp_rows[0]["val_loss"] - 1.0


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(two_process_run, text_file, tmp_path) -> None:
    out, _ = two_process_run
    resumed = tmp_path / "resumed"
    torchrun(text_file, resumed, "--max-steps", "20")
    torchrun(text_file, resumed, "--max-steps", "40", "--resume")
    assert without_time(metrics(resumed)) == without_time(metrics(out))


def test_resuming_with_another_number_of_processes_says_how_many(two_process_run, text_file, tmp_path, capsys) -> None:
    out, _ = two_process_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("last.pt", "metrics.jsonl"):
        (copy / name).write_bytes((out / name).read_bytes())
    assert main(["train", "--text", str(text_file), "--out", str(copy), *TRAIN_ARGS, "--max-steps", "50",
                 "--resume"]) == 1
    assert "resume it with the same number (torchrun --nproc_per_node 2)" in capsys.readouterr().err
