"""lal.course: the stand-in for chapter 5's model is retrained when its last run did not finish."""

from __future__ import annotations

import json

import pytest

import lal.course as course


class _Trained(Exception):
    pass


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv(course.RUNS_VARIABLE, str(tmp_path))
    monkeypatch.setattr(course, "load_checkpoint", lambda path, device: type("Loaded", (), {"model": _Model()})())

    def train(steps, device):
        raise _Trained(steps)

    monkeypatch.setattr(course, "_train_quick_model", train)
    return tmp_path


class _Model:
    def num_parameters(self) -> int:
        return 400_000


def _write_run(folder, steps) -> None:
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"weights")
    rows = [{"step": step, "train_loss": None, "val_loss": 4.2, "lr": 0.0, "tokens": 0, "elapsed_s": 0.0} for step in steps]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_a_missing_stand_in_is_trained(runs) -> None:
    with pytest.raises(_Trained):
        course.load_chapter5_model(quick_steps=5)


def test_an_interrupted_stand_in_is_trained_again(runs) -> None:
    _write_run(runs / course.QUICK_RUN, steps=[0])  # best.pt of step 0: the run stopped before its end
    with pytest.raises(_Trained):
        course.load_chapter5_model(quick_steps=5)


def test_a_finished_stand_in_is_loaded(runs, capsys) -> None:
    _write_run(runs / course.QUICK_RUN, steps=[0, 800])
    course.load_chapter5_model()
    assert "quick stand-in" in capsys.readouterr().out
