"""Where the chapters keep their runs: train_or_reuse, the LAL_REUSE_RUNS switch, chapter 5's model
(and its stand-in, retrained when its last run did not finish)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import lal.course
import lal.course as course
from lal.course import CHAPTER5_RUN, QUICK_RUN, REUSE_VARIABLE, RUNS_VARIABLE, load_chapter5_model, run_dir, train_or_reuse
from lal.model import GPT, GPTConfig
from lal.tokenizers import CharTokenizer
from lal.train import BEST_CHECKPOINT, TrainConfig
from word_corpus import char_corpus, word_text

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.py)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A private runs folder, and the reuse switch off unless a test turns it on."""
    monkeypatch.setenv(RUNS_VARIABLE, str(tmp_path / "runs"))
    monkeypatch.delenv(REUSE_VARIABLE, raising=False)
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    return char_corpus(word_text(2000, seed=0, words=("to", "be", "or", "not", "that", "is")))


def tiny_model(vocab_size: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))


CONFIG = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10,
                     eval_windows=8, device="cpu", seed=3, progress=False)


def test_train_or_reuse_trains_then_reloads_the_same_run_without_training(runs, corpus, monkeypatch, capsys) -> None:
    tokenizer, train_ids, val_ids = corpus
    trained = tiny_model(tokenizer.vocab_size, seed=0)
    history = train_or_reuse("demo", trained, train_ids, val_ids, CONFIG, tokenizer=tokenizer)
    assert history.step == [0, 10, 20, 30] and history.val_loss[-1] < history.val_loss[0]
    assert (runs / "demo" / "last.pt").is_file() and (runs / "demo" / BEST_CHECKPOINT).is_file()

    monkeypatch.setenv(REUSE_VARIABLE, "1")
    monkeypatch.setattr(lal.course, "train", lambda *args, **kwargs: pytest.fail("the switch must not train"))
    fresh = tiny_model(tokenizer.vocab_size, seed=1)  # other weights, replaced by the saved ones
    reused = train_or_reuse("demo", fresh, train_ids, val_ids, CONFIG, tokenizer=tokenizer)
    assert "loaded the saved run 'demo'" in capsys.readouterr().out
    assert reused.rows() == history.rows()
    assert reused.best_val_loss == history.best_val_loss and reused.best_step == history.best_step
    for (name, expected), actual in zip(trained.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)


def test_without_the_switch_a_run_is_trained_again_from_scratch(runs, corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    first = train_or_reuse("again", tiny_model(tokenizer.vocab_size, 0), train_ids, val_ids, CONFIG, tokenizer=tokenizer)
    (runs / "again" / "stale.txt").write_text("from an older run", encoding="utf-8")
    second = train_or_reuse("again", tiny_model(tokenizer.vocab_size, 0), train_ids, val_ids, CONFIG,
                            tokenizer=tokenizer)
    assert second.val_loss == first.val_loss  # same seed, same story
    assert not (runs / "again" / "stale.txt").exists()  # the folder was replaced, not mixed


def test_the_switch_trains_when_no_run_was_saved(runs, corpus, monkeypatch) -> None:
    tokenizer, train_ids, val_ids = corpus
    monkeypatch.setenv(REUSE_VARIABLE, "1")
    history = train_or_reuse("new", tiny_model(tokenizer.vocab_size, 0), train_ids, val_ids, CONFIG,
                             tokenizer=tokenizer)
    assert history.step[-1] == CONFIG.max_steps


def test_run_names_are_one_folder_name(runs) -> None:
    assert run_dir(CHAPTER5_RUN) == runs / CHAPTER5_RUN
    for bad in ("", "../elsewhere", "a/b"):
        with pytest.raises(ValueError, match="one folder name"):
            run_dir(bad)


def test_chapter5_model_falls_back_to_a_quick_stand_in_then_prefers_chapter5s(runs, monkeypatch, capsys) -> None:
    stand_in = load_chapter5_model(quick_steps=3)
    out = capsys.readouterr().out
    assert "training a quick stand-in for 3 steps" in out and "quick stand-in" in out
    assert (runs / QUICK_RUN / BEST_CHECKPOINT).is_file()
    assert stand_in.model.config.n_layer == 2 and stand_in.tokenizer.vocab_size == stand_in.model.config.vocab_size

    monkeypatch.setattr(lal.course, "_train_quick_model", lambda *a: pytest.fail("the stand-in is saved"))
    again = load_chapter5_model(quick_steps=3)
    assert "training" not in capsys.readouterr().out
    for expected, actual in zip(stand_in.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    (runs / CHAPTER5_RUN).mkdir()
    shutil.copy(runs / QUICK_RUN / BEST_CHECKPOINT, runs / CHAPTER5_RUN / BEST_CHECKPOINT)
    load_chapter5_model()
    assert "Loaded chapter 5's model" in capsys.readouterr().out


# ------------------------------------------------------------------ an unfinished stand-in


class _Trained(Exception):
    """Raised by the faked stand-in training: the test sees that it was asked for."""


@pytest.fixture
def faked_runs(tmp_path, monkeypatch):
    """A runs folder where loading and training the stand-in are faked (no model is built)."""
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


def test_a_missing_stand_in_is_trained(faked_runs) -> None:
    with pytest.raises(_Trained):
        course.load_chapter5_model(quick_steps=5)


def test_an_interrupted_stand_in_is_trained_again(faked_runs) -> None:
    _write_run(faked_runs / course.QUICK_RUN, steps=[0])  # best.pt of step 0: the run stopped before its end
    with pytest.raises(_Trained):
        course.load_chapter5_model(quick_steps=5)


def test_a_finished_stand_in_is_loaded(faked_runs, capsys) -> None:
    _write_run(faked_runs / course.QUICK_RUN, steps=[0, 800])
    course.load_chapter5_model()
    assert "quick stand-in" in capsys.readouterr().out
