"""Where the chapters keep the models they train, and the one switch that skips long training.

Every chapter notebook runs on its own, but later chapters are better with the model chapter 5
trained. The contract between them lives here:

* **one place for runs**: :func:`run_dir` names a folder under :func:`runs_dir` (``./runs`` next to
  the notebook, or ``LAL_RUNS_DIR``). Chapter 5 saves its best character-level model in
  ``run_dir(CHAPTER5_RUN)``; chapters 6, 7 and 8 load it with :func:`load_chapter5_model`, which
  trains a quick, seeded stand-in (and says so) when chapter 5 has not been run.
* **one switch for instructors**: with ``LAL_REUSE_RUNS=1`` in the environment (or
  ``%env LAL_REUSE_RUNS=1`` in a notebook's first cell), every training cell that goes through
  :func:`train_or_reuse` loads the weights and loss history its last run saved instead of
  training again, so a workshop running late loses no part of the story.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch.nn as nn

from lal.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, load_model_state
from lal.train import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE, History, LossFn, TrainConfig, train
from lal.tokenizers import Tokenizer

#: The environment variable that turns every :func:`train_or_reuse` into a load of the saved run.
REUSE_VARIABLE = "LAL_REUSE_RUNS"
#: The environment variable that moves the runs folder (default: ``runs`` in the current folder).
RUNS_VARIABLE = "LAL_RUNS_DIR"
#: The run chapter 5 trains and chapters 6–8 load: the best character-level TinyShakespeare model.
CHAPTER5_RUN = "ch05-char"
#: The quick stand-in trained when chapter 5's run is missing.
QUICK_RUN = "quick-char"
#: Steps of the quick stand-in: about half a minute on two CPU cores, validation loss ≈ 1.9.
QUICK_STEPS = 800


def runs_dir() -> Path:
    """The folder that holds the course's runs: ``$LAL_RUNS_DIR``, else ``runs`` here."""
    return Path(os.environ.get(RUNS_VARIABLE) or "runs")


def run_dir(name: str) -> Path:
    """The folder of the run called ``name`` (``best.pt``, ``last.pt``, ``metrics.jsonl``)."""
    if not name or Path(name).name != name:
        raise ValueError(f"A run name is one folder name (like {CHAPTER5_RUN!r}), got {name!r}.")
    return runs_dir() / name


def reuse_runs() -> bool:
    """True when ``LAL_REUSE_RUNS`` asks training cells to load their saved runs instead of training."""
    return os.environ.get(REUSE_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def saved_run(name: str) -> Path | None:
    """The folder of a finished run called ``name``, or None when it has no checkpoint and metrics."""
    folder = run_dir(name)
    if (folder / LAST_CHECKPOINT).is_file() and (folder / METRICS_FILE).is_file():
        return folder
    return None


def train_or_reuse(
    name: str,
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    cfg: TrainConfig,
    *,
    tokenizer: Tokenizer,
    callbacks: Iterable[Callable[..., Any]] = (),
    loss_fn: LossFn | None = None,
) -> History:
    """Train ``model`` into ``run_dir(name)``, or, with ``LAL_REUSE_RUNS=1``, load that run.

    Training starts afresh (an earlier run of the same cell is replaced), so re-running a notebook
    tells the same story. When reusing, the model gets the weights the run ended with
    (``last.pt``) and the returned :class:`History` is the one it wrote, so every later cell
    (plots, samples, the best checkpoint) behaves as if the training had just happened.
    ``loss_fn`` is :func:`lal.train.train`'s (what a step minimises, e.g. ``lal.dpo``'s loss).
    """
    folder = run_dir(name)
    if reuse_runs() and saved_run(name) is not None:
        payload, _ = read_checkpoint(folder / LAST_CHECKPOINT)
        load_model_state(model, payload["model"], source=folder / LAST_CHECKPOINT)
        history = History.from_jsonl(folder / METRICS_FILE)
        print(f"{REUSE_VARIABLE}=1: loaded the saved run '{name}' instead of training "
              f"(best validation loss {history.best_val_loss:.3f}).")
        return history
    if folder.exists():
        shutil.rmtree(folder)
    cfg = dataclasses.replace(cfg, out_dir=folder, save_checkpoints=True)
    return train(model, train_data, val_data, cfg, tokenizer=tokenizer, callbacks=callbacks, loss_fn=loss_fn)


def load_chapter5_model(device: str = "cpu", quick_steps: int = QUICK_STEPS) -> Checkpoint:
    """Chapter 5's best character-level model, or a quick seeded stand-in when it is missing.

    The stand-in is ``char-tiny`` trained for ``quick_steps`` steps with the course's defaults
    (about half a minute on two CPU cores) and saved in ``run_dir(QUICK_RUN)``, so the next
    chapter that needs it loads it at once. The line printed says which model was loaded.
    """
    chapter5 = run_dir(CHAPTER5_RUN) / BEST_CHECKPOINT
    if chapter5.is_file():
        checkpoint = load_checkpoint(chapter5, device=device)
        print(f"Loaded chapter 5's model ({checkpoint.model.num_parameters() / 1e6:.2f}M parameters).")
        return checkpoint
    quick = run_dir(QUICK_RUN) / BEST_CHECKPOINT
    if not _finished(run_dir(QUICK_RUN)):
        print(f"Chapter 5's model is not here (it saves to {CHAPTER5_RUN!r} under the runs folder): "
              f"training a quick stand-in for {quick_steps} steps instead.")
        _train_quick_model(quick_steps, device)
    checkpoint = load_checkpoint(quick, device=device)
    print(f"Loaded the quick stand-in for chapter 5's model ({checkpoint.model.num_parameters() / 1e6:.2f}M "
          "parameters); run chapter 5 for a better one.")
    return checkpoint


def _finished(folder: Path) -> bool:
    """True when the stand-in's run reached its last evaluation.

    Training saves ``best.pt`` at step 0 already, so a run interrupted on the way (the kernel
    stopped, a timeout) leaves an untrained model behind; without this check every later chapter
    would load it as if it were trained.
    """
    metrics = folder / METRICS_FILE
    if not (folder / BEST_CHECKPOINT).is_file() or not metrics.is_file():
        return False
    steps = History.from_jsonl(metrics).step
    return bool(steps) and steps[-1] > 0


def _train_quick_model(steps: int, device: str) -> None:
    # Imported here: the data and model modules are only needed when the stand-in is trained.
    from lal.data import prepare_text_data
    from lal.device import seed_everything
    from lal.model import GPT, preset_config
    from lal.train import default_train_config

    seed_everything(1337)
    data = prepare_text_data(dataset="tinyshakespeare", tokenizer_kind="char")
    model = GPT(preset_config("char-tiny", vocab_size=data.tokenizer.vocab_size))
    cfg = default_train_config("char-tiny", max_steps=steps, eval_interval=steps, device=device, progress=False)
    train_or_reuse(QUICK_RUN, model, data.train, data.val, cfg, tokenizer=data.tokenizer)
