"""The training loop: AdamW, warmup + cosine, clipping, accumulation, evaluation, checkpoints, resume.

The loop is the one chapter 5 builds by hand, plus what a real run needs:

* **batches** of random windows from a dedicated ``torch.Generator``, so the data order is
  reproducible and its state can be saved and restored (exact resume);
* **evaluation** on a *fixed* seeded set of validation windows, so two evaluations score the same
  tokens and their difference is progress, not sampling noise;
* **checkpoints**: ``best.pt`` whenever the validation loss improves, ``last.pt`` at every
  evaluation, and ``metrics.jsonl`` with one line per evaluation;
* **stopping**: after ``max_steps``, when ``target_val_loss`` is reached, after ``patience``
  evaluations without improvement (early stopping), or when a callback asks;
* **divergence**: a NaN or infinite loss stops training at once with :class:`TrainingDivergedError`;
  nothing is saved after the last good evaluation, so ``last.pt`` still holds good weights;
* **speed**: mixed precision where the device has it (bf16 on CUDA GPUs that compute it natively,
  fp16 with a gradient scaler on older ones; ``TrainConfig.precision`` overrides), fused attention
  and fused AdamW, optional ``torch.compile``, and no host-device synchronisation between
  evaluations on a GPU (losses are summed on the device and read at evaluation time);
* **several processes**: under ``torchrun`` the model is wrapped in DistributedDataParallel, each
  rank draws its own windows, evaluation is shared and only rank 0 writes (``lal.distributed``).

The ``train_loss`` reported at an evaluation is the mean loss of the training batches since the
previous evaluation. It costs nothing extra (those losses were computed anyway), but it is an
average over weights that kept improving, so it lags slightly behind the current model; the
validation loss is measured on the current weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lal.checkpoint import (
    CheckpointError,
    load_model_state,
    read_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    unwrap_model,
)
from lal.data import batch_to_device, batches_from_windows, eval_windows, get_batch
from lal.device import (
    PRECISIONS,
    ThreadFitter,
    autocast,
    compile_model,
    configure_backends,
    needs_grad_scaler,
    pick_device,
)
from lal.distributed import all_reduce_sum, current_context, gather_objects
from lal.model import GPT
from lal.tokenizers import Tokenizer

#: Evaluation windows are drawn with this seed whatever the training seed, so that runs with
#: different seeds are scored on the same validation tokens and compare directly.
EVAL_SEED = 0

#: Devices where AdamW's fused implementation is used (MPS support is more recent than torch 2.4).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")

METRICS_FILE = "metrics.jsonl"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


@dataclass
class TrainConfig:
    """How to train: optimiser, schedule, batches, evaluation, stopping and where to save.

    The defaults are the course's character-level recipe, tuned for the ``char-tiny`` model on
    TinyShakespeare on a 2-core CPU: validation loss 1.89 (nanoGPT's CPU result) in about 20 s and
    ≈ 1.78 after the whole 1500 steps (``benchmarks/README.md``). A small model learns fastest with
    a high learning rate and many small steps. :func:`default_train_config` gives the settings
    for the other presets.
    """

    # Steps and batches
    max_steps: int = 1500
    batch_size: int = 16
    block_size: int | None = None  # context length of the training windows; None = the model's
    grad_accum_steps: int = 1  # micro-batches per optimiser step: a larger batch in the same memory
    # Optimiser and schedule
    lr: float = 5e-3  # peak learning rate, reached at the end of warmup
    min_lr: float = 5e-4  # where the cosine decay ends
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # step at which min_lr is reached; None = max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # small batches give noisy gradients: average their squares over ~100 steps
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None = no clipping
    # Evaluation and stopping
    eval_interval: int = 100  # optimiser steps between evaluations
    eval_windows: int = 256  # fixed validation windows scored at each evaluation (256 × 64 = 16,384 tokens)
    eval_batch_size: int | None = None  # windows per forward pass at evaluation; None = 2 × batch_size
    patience: int | None = None  # evaluations without improvement before stopping; None = never
    min_delta: float = 0.0  # how much lower the validation loss must be to count as an improvement
    target_val_loss: float | None = None  # stop as soon as the validation loss is at or below this
    # Where and how
    device: str | None = None  # "cuda", "mps", "cpu"; None = the best available
    seed: int = 1337
    out_dir: str | os.PathLike | None = None  # metrics.jsonl, best.pt and last.pt go here; None = no files
    save_checkpoints: bool = True
    save_best: bool = True  # best.pt at each new lowest validation loss (fine-tuning: off, see lal.sft)
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs)
    precision: str = "auto"  # "auto" (bf16 where native, fp16 + scaler on older GPUs, fp32 on CPU/MPS), "bf16", "fp16", "fp32"
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work, and what would."""
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("block_size", "eval_batch_size", "lr_decay_steps", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"TrainConfig.{name} must be a positive integer or None, got {value!r}.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an integer ≥ 0, got {self.warmup_steps!r}.")
        for name in ("lr", "min_lr", "beta1", "beta2", "weight_decay", "grad_clip", "min_delta", "target_val_loss"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {value}.")
        if not 0.0 < self.lr:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}.")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr must be between 0 and lr ({self.lr}), got {self.min_lr}.")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got beta1={self.beta1}, beta2={self.beta2}.")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be ≥ 0, got {self.weight_decay}.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive or None (no clipping), got {self.grad_clip}.")
        if self.min_delta < 0:
            raise ValueError(f"TrainConfig.min_delta must be ≥ 0, got {self.min_delta}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return values


#: Per-preset departures from the :class:`TrainConfig` defaults, which are char-tiny's recipe
#: (measured: benchmarks/README.md). The others are starting points in the spirit of nanoGPT's
#: recipes: bigger models want a lower peak learning rate and more steps, and longer contexts
#: fewer evaluation windows for the same ≈ 16k evaluation tokens. ``char-medium`` is chapter 8's
#: GPU run, nanoGPT's shakespeare-char recipe (published: validation loss 1.4697 after 5000
#: steps); on a GPU lal adds bf16 (or fp16 + scaler), fused attention and fused AdamW.
PRESET_TRAIN_SETTINGS: dict[str, dict[str, Any]] = {
    "char-tiny": {},
    "char-small": dict(max_steps=3000, batch_size=32, lr=2e-3, min_lr=2e-4, eval_interval=250, eval_windows=64),
    "char-medium": dict(max_steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, eval_interval=250, eval_windows=64),
    "bpe-tiny": dict(max_steps=2000, batch_size=32, lr=3e-3, min_lr=3e-4, eval_interval=200, eval_windows=128),
    "bpe-small": dict(max_steps=3000, batch_size=32, lr=1e-3, min_lr=1e-4, eval_interval=250, eval_windows=64),
    "bpe-medium": dict(max_steps=5000, batch_size=32, lr=6e-4, min_lr=6e-5, beta2=0.95, eval_interval=250,
                       eval_windows=32),
    "lal": dict(max_steps=5000, batch_size=16, grad_accum_steps=8, lr=6e-4, min_lr=6e-5, warmup_steps=500,
                beta2=0.95, eval_interval=500, eval_windows=16),
}


def default_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """The recommended :class:`TrainConfig` for a model preset, with ``overrides`` applied."""
    if preset is not None and preset not in PRESET_TRAIN_SETTINGS:
        raise ValueError(f"No training defaults for preset {preset!r}; known: {', '.join(PRESET_TRAIN_SETTINGS)}.")
    settings = dict(PRESET_TRAIN_SETTINGS.get(preset, {}) if preset else {})
    settings.update(overrides)
    return TrainConfig(**settings)


# --------------------------------------------------------------------------------- the schedule


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warmup, then cosine to ``min_lr``.

    Warmup climbs from ``lr / warmup_steps`` at step 0 to ``lr`` at step ``warmup_steps - 1``: the
    first updates, made while Adam's statistics are still poor, stay small. Cosine decay then takes
    the rate from ``lr`` at ``warmup_steps`` to ``min_lr`` at ``lr_decay_steps`` (default
    ``max_steps``) and holds it there; the last steps refine instead of jumping around.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)  # 0 → 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's decay / no-decay parameter groups (see ``GPT.parameter_groups``).

    On CUDA and on the CPU the fused implementation updates each tensor in one pass instead of
    a dozen small operations; for the small models of the course that makes the optimiser step
    about 5× faster on a CPU (0.35 ms instead of 1.9 ms for char-tiny).
    """
    plain_model = unwrap_model(model)
    groups = plain_model.parameter_groups(cfg.weight_decay)
    device_type = next(plain_model.parameters()).device.type
    fused = True if device_type in FUSED_ADAMW_DEVICES else None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


# --------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: torch.Tensor | np.ndarray,
    starts: torch.Tensor,
    block_size: int,
    batch_size: int,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> float:
    """Mean cross-entropy over the windows beginning at ``starts`` (see ``lal.data.eval_windows``).

    The model is put in eval mode (no dropout) for the measurement and back in its previous mode
    afterwards. Losses are summed on the device (by default the model's own) and read once at the end.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    n_windows = 0
    try:
        for x, y in batches_from_windows(data, starts, block_size, batch_size, device):
            with autocast(device, precision):
                _, loss = model(x, y)
            total += loss.float() * x.size(0)  # every window has block_size targets: weight by windows
            n_windows += x.size(0)
    finally:
        model.train(was_training)
    return total.item() / n_windows


def forward_backward(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_batches: int,
    device: str | torch.device = "cpu",
    scaler: torch.amp.GradScaler | None = None,
    precision: str = "auto",
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of the mean loss over ``n_batches`` micro-batches.

    Each micro-batch loss is divided by ``n_batches`` before ``backward``, so the summed gradients
    equal those of one batch ``n_batches`` times larger (gradient accumulation: a big batch in
    the memory of a small one). Returns that mean loss as a detached device scalar (no sync).
    ``loss_fn(model, x, y)`` replaces the model's own cross-entropy (see :func:`train`).
    """
    device = torch.device(device)
    total = torch.zeros((), device=device)
    for index, (x, y) in enumerate(batches):
        # Under DistributedDataParallel, average gradients across processes once per step, not per micro-batch.
        last = index == n_batches - 1
        no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with no_sync:
            with autocast(device, precision):
                loss = model(x, y)[1] if loss_fn is None else loss_fn(model, x, y)
            loss = loss / n_batches
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


def _reads_are_free(device: torch.device) -> bool:
    """Whether reading a loss on the host costs nothing (CPU) or stalls an asynchronous device (GPU)."""
    return device.type == "cpu"


# --------------------------------------------------------------------------------- history


@dataclass
class History:
    """What happened at each evaluation, as parallel lists (one entry per evaluation).

    ``train_loss`` is the mean of the training-batch losses since the previous evaluation (None at
    step 0, before any training); ``grad_norm`` likewise averages the gradient norms before
    clipping (None without clipping). ``tokens`` counts training tokens seen so far and
    ``elapsed_s`` the wall-clock seconds of training, evaluation included.
    """

    step: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    grad_norm: list[float | None] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_step: int | None = None
    stopped_reason: str | None = None

    COLUMNS = ("step", "train_loss", "val_loss", "lr", "tokens", "elapsed_s", "grad_norm")

    def append(self, row: dict[str, Any]) -> None:
        """Add one evaluation; keeps ``best_val_loss`` / ``best_step`` up to date."""
        for name in self.COLUMNS:
            getattr(self, name).append(row.get(name))
        if row["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.best_step = row["val_loss"], row["step"]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per evaluation: the lines of ``metrics.jsonl``."""
        return [dict(zip(self.COLUMNS, values)) for values in zip(*(getattr(self, n) for n in self.COLUMNS))]

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {name: list(getattr(self, name)) for name in self.COLUMNS}
        values.update(best_val_loss=self.best_val_loss, best_step=self.best_step, stopped_reason=self.stopped_reason)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        known = {f.name for f in fields(cls)}
        return cls(**{name: (list(v) if isinstance(v, list) else v) for name, v in values.items() if name in known})

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> History:
        history = cls()
        for row in rows:
            history.append(row)
        return history

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> History:
        """Read a ``metrics.jsonl`` written by :func:`train` (to plot a finished or running job)."""
        with open(path, encoding="utf-8") as file:
            return cls.from_rows(json.loads(line) for line in file if line.strip())


@dataclass
class EvalEvent:
    """What a training callback receives at each evaluation. Set ``stop = True`` to end training."""

    step: int
    train_loss: float | None
    val_loss: float
    lr: float
    tokens: int
    elapsed_s: float
    improved: bool
    history: History
    stop: bool = False
    #: The gradient norm (before clipping) of every step since the previous evaluation.
    grad_norms: list[float] = field(default_factory=list)


Callback = Callable[[EvalEvent], Any]

#: What a training step can minimise instead of the model's cross-entropy: ``loss_fn(model, x, y)``
#: returns a scalar for the batch ``(x, y)`` (preference tuning, ``lal.dpo``, compares two answers).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped without saving the broken weights."""

    def __init__(self, message: str, step: int, history: History, last_good_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.history = history
        self.last_good_checkpoint = last_good_checkpoint


# --------------------------------------------------------------------------------- training


@dataclass
class _RunState:
    """Everything that changes during a run and must be saved to resume it exactly."""

    step: int = 0
    tokens: int = 0  # training tokens read so far
    history: History = field(default_factory=History)
    evals_since_best: int = 0  # evaluations since the loss last improved by more than min_delta
    patience_best: float = math.inf  # the loss of that last improvement
    elapsed_before_s: float = 0.0  # training time of earlier sessions, when resumed


class _Trainer:
    """One training run. A class to share state between the small steps of :func:`train`.

    Public as :class:`Trainer` for tools that drive single steps (``lal.bench``, ``lal.plan``):
    ``Trainer(model, train_data, val_data, cfg).train_step()`` is exactly a step of :func:`train`.
    Under ``torchrun`` (a process group is initialised) the model is wrapped in
    DistributedDataParallel: see ``lal.distributed``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        val_data: Any,
        cfg: TrainConfig,
        tokenizer: Tokenizer | None = None,
        callbacks: Sequence[Callback] = (),
        loss_fn: LossFn | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.model = unwrap_model(model)
        if not isinstance(self.model, GPT):
            raise TypeError(f"train() expects a lal GPT model, got {type(self.model).__name__}.")
        self.block_size = cfg.block_size or self.model.config.block_size
        if self.block_size > self.model.config.block_size:
            raise ValueError(
                f"TrainConfig.block_size={self.block_size} is longer than the model's context "
                f"({self.model.config.block_size}). Use block_size ≤ {self.model.config.block_size} or a model "
                "built with a longer block_size."
            )
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        if self.out_dir is not None and cfg.save_checkpoints and tokenizer is None:
            raise ValueError(
                "Checkpoints need the tokenizer (so a saved model can be used on its own): pass "
                "train(..., tokenizer=tokenizer), or set out_dir=None / save_checkpoints=False."
            )
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        # Token ids to cut random windows from, or a function that makes each micro-batch itself
        # (fine-tuning's padded, masked batches): ``batches(i) -> (x, y)`` for micro-batch i.
        self.train_batches = train_data if callable(train_data) else None
        self.train_data = None if self.train_batches is not None else _as_token_data(train_data, "train_data")
        self.val_data = _as_token_data(val_data, "val_data")
        self.device = pick_device(cfg.device)
        configure_backends(self.device)
        self.dist = current_context()  # rank 0 of 1 without torchrun

        self.model.to(self.device)
        self.model.train()
        self.eval_model = compile_model(self.model, self.device) if cfg.compile else self.model
        self.step_model = self.eval_model
        if self.dist.is_distributed:  # gradients averaged across processes after each backward
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.eval_model, device_ids=device_ids)
        self.optimizer = make_optimizer(self.model, cfg)
        # Only float16 needs loss scaling; everywhere else the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=needs_grad_scaler(self.device, cfg.precision))
        # Each rank draws its own windows and dropout masks; rank 0's are a single process's.
        self.batch_generator = torch.Generator().manual_seed(cfg.seed + self.dist.rank)
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout
        for split, data in (("training", self.train_data), ("validation", self.val_data)):
            if data is not None and len(data) < self.block_size + 1:
                raise ValueError(
                    f"The {split} split has {len(data)} tokens, but one window of context needs "
                    f"block_size + 1 = {self.block_size + 1}. The validation split is the last 10 % of "
                    "the text: use a longer text, or a smaller block_size (--block-size)."
                )
        self.eval_starts = eval_windows(self.val_data, cfg.eval_windows, self.block_size, seed=EVAL_SEED)
        self.eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
        self.state = _RunState()
        # Per-step losses and gradient norms since the last evaluation, kept as device tensors so
        # that a GPU never waits for the host; they are read once per evaluation.
        self.step_losses: list[torch.Tensor] = []
        self.step_grad_norms: list[torch.Tensor] = []
        # Reading a CPU tensor costs nothing, so there a NaN is caught before it reaches the weights
        # (not across processes: one rank stopping alone would leave the others waiting forever).
        self.check_every_step = _reads_are_free(self.device) and not self.dist.is_distributed
        # Follow other programs' CPU use, so a busy machine does not stall torch's threads.
        self.fit_threads = ThreadFitter()

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool) -> History:
        cfg = self.cfg
        if resume:
            self._resume()
        else:
            self._start_metrics_file([])
        state = self.state
        skip_eval_at = state.step if resume else None  # that evaluation is in the resumed history
        start_time = time.perf_counter()
        progress = tqdm(total=cfg.max_steps, initial=state.step, disable=not (cfg.progress and self.dist.is_main),
                        unit="step", desc="training", dynamic_ncols=True)
        try:
            while True:
                at_eval = state.step % cfg.eval_interval == 0 or state.step >= cfg.max_steps
                if at_eval and state.step != skip_eval_at:
                    if self._evaluate(start_time, progress):
                        break
                if state.step >= cfg.max_steps:
                    state.history.stopped_reason = "max_steps"
                    break
                self._train_step()
                progress.update(1)
        finally:
            progress.close()
        return state.history

    def _train_step(self) -> None:
        cfg, state = self.cfg, self.state
        lr = lr_at(state.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = self._micro_batches(state.step)
        step_loss = forward_backward(self.step_model, batches, cfg.grad_accum_steps, self.device, self.scaler,
                                     cfg.precision, self.loss_fn)
        if self.check_every_step and not math.isfinite(step_loss.item()):
            self._diverged(state.step + 1, lr)  # before the update: the weights in memory stay good
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.step_grad_norms.append(grad_norm.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.step_losses.append(step_loss)
        self.fit_threads()

    def _micro_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``grad_accum_steps`` micro-batches of optimiser step ``step``, counting their tokens."""
        cfg = self.cfg
        for micro in range(cfg.grad_accum_steps):
            if self.train_batches is not None:
                x, y = self.train_batches(step * cfg.grad_accum_steps + micro)  # (B, T) each
                x, y = batch_to_device(x, y, self.device)  # pinned and asynchronous to a GPU
            else:
                x, y = get_batch(self.train_data, cfg.batch_size, self.block_size, self.device, self.batch_generator)
            self.state.tokens += x.numel() * self.dist.world_size  # every rank reads as many
            yield x, y

    def _evaluate(self, start_time: float, progress: tqdm) -> bool:
        """Evaluate, record, save, notify callbacks; return True when training should stop."""
        cfg, state = self.cfg, self.state
        train_loss = self._mean_and_check(self.step_losses, check=True)
        grad_norm = self._mean_and_check(self.step_grad_norms, check=False)
        grad_norms = torch.stack(self.step_grad_norms).float().cpu().tolist() if self.step_grad_norms else []
        self.step_losses, self.step_grad_norms = [], []
        val_loss = self._validation_loss()
        elapsed_s = state.elapsed_before_s + time.perf_counter() - start_time
        lr = lr_at(max(state.step - 1, 0), cfg)  # the rate of the last update made
        if not math.isfinite(val_loss):
            self._diverged(state.step, lr)
        improved = val_loss < state.history.best_val_loss  # best.pt keeps the lowest loss seen
        if val_loss < state.patience_best - cfg.min_delta:  # patience counts only clear progress
            state.patience_best, state.evals_since_best = val_loss, 0
        else:
            state.evals_since_best += 1
        row = dict(step=state.step, train_loss=train_loss, val_loss=val_loss, lr=lr,
                   tokens=state.tokens, elapsed_s=round(elapsed_s, 3), grad_norm=grad_norm)
        state.history.append(row)
        stop_reason = self._stop_reason(val_loss)
        if stop_reason is not None:
            state.history.stopped_reason = stop_reason
        self._save(row, improved, elapsed_s)
        progress.set_postfix_str(_progress_text(row, state.history.best_val_loss), refresh=False)
        event = EvalEvent(step=state.step, train_loss=train_loss, val_loss=val_loss, lr=lr, tokens=row["tokens"],
                          elapsed_s=elapsed_s, improved=improved, history=state.history, grad_norms=grad_norms)
        for callback in self.callbacks:
            callback(event)
        if event.stop and stop_reason is None:
            state.history.stopped_reason = stop_reason = "callback"
        return stop_reason is not None

    def _validation_loss(self) -> float:
        """The loss on the fixed validation windows; under DDP each rank scores its share, then all sum."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world_size
        starts = self.eval_starts[rank::world]  # (≈ eval_windows / world,)
        mean = estimate_loss(self.eval_model, self.val_data, starts, self.block_size, self.eval_batch_size,
                             self.device, cfg.precision) if len(starts) else 0.0
        if not self.dist.is_distributed:
            return mean
        totals = all_reduce_sum(torch.tensor([mean * len(starts), float(len(starts))], dtype=torch.float64,
                                             device=self.device))
        return float(totals[0] / totals[1])

    def _stop_reason(self, val_loss: float) -> str | None:
        cfg, state = self.cfg, self.state
        if cfg.target_val_loss is not None and val_loss <= cfg.target_val_loss:
            return "target_val_loss"
        if cfg.patience is not None and state.evals_since_best >= cfg.patience:
            return "early_stopping"
        return None

    def _mean_and_check(self, values: list[torch.Tensor], check: bool) -> float | None:
        """Mean of per-step device scalars (one host sync); with ``check``, raise if one was not finite.

        Without ``check`` (gradient norms) non-finite values are left out of the mean: they are the
        steps float16's gradient scaler skipped on purpose (the scale was too high, nothing was
        updated), and a NaN would not even be valid JSON in ``metrics.jsonl``. None if all were.
        """
        if not values:
            return None
        stacked = torch.stack(values).float()  # (steps since the last evaluation,)
        if self.dist.is_distributed:  # the mean over all processes; a NaN on any rank reaches every rank
            stacked = all_reduce_sum(stacked) / self.dist.world_size
        stacked = stacked.cpu()
        finite = torch.isfinite(stacked)
        if check and not bool(finite.all()):
            first_bad = int((~finite).nonzero()[0])
            bad_step = self.state.step - len(values) + first_bad + 1
            self._diverged(bad_step, lr_at(bad_step - 1, self.cfg))
        if not bool(finite.any()):
            return None
        return float(stacked[finite].mean())

    def _diverged(self, step: int, lr: float) -> None:
        last_good = self.out_dir / LAST_CHECKPOINT if self.out_dir is not None and self.cfg.save_checkpoints else None
        if last_good is not None and last_good.is_file():
            where = f"The last good checkpoint is {last_good} (step {self.state.history.step[-1]}); nothing newer was saved."
        elif last_good is not None:
            where = "No checkpoint had been saved yet."
        else:
            where = "No checkpoints were being written (out_dir is None)."
        self.state.history.stopped_reason = "diverged"
        raise TrainingDivergedError(
            f"The loss became NaN or infinite at step {step} (learning rate {lr:.2e}); training stopped. "
            f"{where} Try a lower learning rate (e.g. lr={self.cfg.lr / 3:.1e}; it is {self.cfg.lr:.1e}) or a "
            f"longer warmup (warmup_steps is {self.cfg.warmup_steps})"
            + (", and gradient clipping (grad_clip=1.0)" if self.cfg.grad_clip is None or self.cfg.grad_clip > 1.0 else "")
            + ", then train again (from scratch, or resume from the last good checkpoint).",
            step=step,
            history=self.state.history,
            last_good_checkpoint=last_good if last_good is not None and last_good.is_file() else None,
        )

    # ------------------------------------------------------------------ files

    def _save(self, row: dict[str, Any], improved: bool, elapsed_s: float) -> None:
        if self.out_dir is None:
            return
        # Every rank takes part in gathering the training state; only rank 0 writes.
        train_state = self._train_state(elapsed_s) if self.cfg.save_checkpoints else None
        if not self.dist.is_main:
            return
        if train_state is not None:
            extra = {"train_config": self.cfg.to_dict(), "val_loss": row["val_loss"], "step": row["step"]}
            if improved and self.cfg.save_best:
                self._checkpoint(BEST_CHECKPOINT, train_state, extra)
            self._checkpoint(LAST_CHECKPOINT, train_state, extra)
        with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")

    def _checkpoint(self, name: str, train_state: dict[str, Any], extra: dict[str, Any]) -> None:
        save_checkpoint(self.out_dir / name, self.model, self.tokenizer, optimizer=self.optimizer,
                        train_state=train_state, extra=extra)

    def _start_metrics_file(self, rows: list[dict[str, Any]]) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        tmp_path = self.out_dir / (METRICS_FILE + ".tmp")
        with open(tmp_path, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(tmp_path, self.out_dir / METRICS_FILE)

    def _train_state(self, elapsed_s: float) -> dict[str, Any]:
        """Plain values and tensors only, so the checkpoint loads with weights_only=True."""
        state = self.state
        rng = {"batches": self.batch_generator.get_state(), "torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.dist.is_distributed:  # rank 0 saves every rank's generators, so each can resume its own
            rng["per_rank"] = [{k: v.cpu() for k, v in ranks_rng.items()} for ranks_rng in gather_objects(rng)]
        return {
            "step": state.step,
            "tokens": state.tokens,
            "history": state.history.to_dict(),
            "evals_since_best": state.evals_since_best,
            "patience_best": state.patience_best,
            "elapsed_s": elapsed_s,
            "rng": rng,
            "grad_scaler": self.scaler.state_dict(),
        }

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs TrainConfig.out_dir: the folder whose last.pt to continue from.")
        path = self.out_dir / LAST_CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"Cannot resume: there is no {path}. Train without resume=True to start a new run.")
        payload, _ = read_checkpoint(path)
        train_state = payload.get("train_state")
        if not train_state or payload.get("optimizer") is None:
            raise CheckpointError(f"Cannot resume from {path}: it holds weights but no training state or optimizer.")
        load_model_state(self.model, payload["model"], source=path)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler.is_enabled() and train_state["grad_scaler"]:  # empty when saved without fp16
            self.scaler.load_state_dict(train_state["grad_scaler"])
        rng = train_state["rng"]
        per_rank = rng.get("per_rank")
        if self.dist.is_distributed or per_rank is not None:
            if per_rank is None or len(per_rank) != self.dist.world_size:
                saved = 1 if per_rank is None else len(per_rank)
                raise CheckpointError(
                    f"{path} was saved by a run of {saved} process(es); resume it with the same number "
                    f"(torchrun --nproc_per_node {saved}), not {self.dist.world_size}, to continue exactly."
                )
            rng = per_rank[self.dist.rank]
        self.batch_generator.set_state(rng["batches"])
        torch.set_rng_state(rng["torch_cpu"])
        if self.device.type == "cuda" and "torch_cuda" in rng:
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        history = History.from_dict(train_state["history"])
        history.stopped_reason = None
        self.state = _RunState(step=train_state["step"], tokens=train_state["tokens"], history=history,
                               evals_since_best=train_state["evals_since_best"],
                               patience_best=train_state["patience_best"],
                               elapsed_before_s=train_state["elapsed_s"])
        self._start_metrics_file(history.rows())


def _as_token_data(data: Any, name: str) -> torch.Tensor | np.ndarray:
    """Token ids as a 1-D tensor or NumPy array (memmaps stay memmaps: they may not fit in RAM)."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return data
    if isinstance(data, Sequence):
        return torch.tensor(data, dtype=torch.long)
    raise TypeError(f"{name} must be token ids (a 1-D tensor, NumPy array or list), got {type(data).__name__}.")


def _progress_text(row: dict[str, Any], best: float) -> str:
    train = "—" if row["train_loss"] is None else f"{row['train_loss']:.3f}"
    return f"train {train} | val {row['val_loss']:.3f} (best {best:.3f}) | lr {row['lr']:.1e}"


def out_of_memory_advice(cfg: TrainConfig, block_size: int, device: torch.device | str | None = None) -> str:
    """What to say when training runs out of memory: the settings to lower, with values to try."""
    half = max(cfg.batch_size // 2, 1)
    accum = cfg.grad_accum_steps * max(cfg.batch_size // half, 1)
    return (
        f"Out of {torch.device(device).type if device is not None else 'device'} memory with micro-batches of {cfg.batch_size} windows × {block_size} "
        f"tokens. Lower --batch-size (e.g. --batch-size {half} --grad-accum-steps {accum} trains the same global "
        f"batch in less memory), or --block-size, or pick a smaller --preset. `lal train --dry-run` shows what fits."
    )


def train(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    cfg: TrainConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    callbacks: Iterable[Callback] = (),
    resume: bool = False,
    loss_fn: LossFn | None = None,
) -> History:
    """Train ``model`` on ``train_data``, evaluating on ``val_data``; return the :class:`History`.

    ``train_data`` / ``val_data`` are 1-D token ids (tensor, NumPy array or memmap). ``train_data``
    may instead be a batch function ``batches(i) -> (x, y)`` returning micro-batch ``i`` (step
    ``s`` uses ``s · grad_accum_steps`` onwards): fine-tuning passes its padded, masked batches
    this way. A batch function that depends only on ``i`` keeps resuming exact. Every
    ``cfg.eval_interval`` steps (and at step 0 and at the end) the model is scored on the same
    ``cfg.eval_windows`` validation windows; each callback is then called with an
    :class:`EvalEvent`. With ``cfg.out_dir`` set, ``metrics.jsonl``, ``best.pt`` and ``last.pt``
    are written there (the tokenizer is then required, so checkpoints are self-contained).
    ``loss_fn(model, x, y)``, when given, is what each step minimises instead of the model's own
    cross-entropy (``lal.dpo`` trains on preference pairs this way); the ``train_loss`` recorded is
    then its mean, and the validation loss stays the cross-entropy on ``val_data``.

    ``resume=True`` continues from ``out_dir/last.pt``: weights, optimizer, step, history and
    random-generator states, so the result equals a run that was never interrupted.
    Raises :class:`TrainingDivergedError` if the loss becomes NaN or infinite, and
    ``torch.OutOfMemoryError`` with the settings to lower when a step does not fit in memory.
    """
    trainer = _Trainer(model, train_data, val_data, cfg or TrainConfig(), tokenizer, tuple(callbacks), loss_fn)
    try:
        return trainer.run(resume)
    except torch.OutOfMemoryError as error:  # say which setting to lower, not only how many bytes were missing
        advice = out_of_memory_advice(trainer.cfg, trainer.block_size, trainer.device)
        raise torch.OutOfMemoryError(f"{advice} ({str(error).splitlines()[0][:200]})") from error


#: The run object behind :func:`train`, public for tools that time or plan single steps.
Trainer = _Trainer
Trainer.train_step = _Trainer._train_step
