"""``lal.train`` with MLX doing the arithmetic: the same run, step for step.

Only the step and the evaluation are MLX's; everything around them *is* ``lal.train``'s:
:class:`Trainer` subclasses ``lal.train.Trainer`` and keeps its loop, its batches (the same
``torch.Generator`` cuts the same random windows, handed to MLX through NumPy), its schedule
(``lal.train.lr_at``), its fixed evaluation windows (``lal.data.eval_windows`` with
``EVAL_SEED``), its stopping rules, callbacks, ``History``, ``metrics.jsonl`` and checkpoint
files (in the one lal format, so ``--backend torch`` samples from an MLX run). From the same
initial weights and batches the two backends give the same losses (``tests/test_mlx.py``).

How the step differs from PyTorch's:

* **Gradients from a function, not from ``.backward()``.** ``nn.value_and_grad(model, loss_fn)``
  turns "the loss of these weights on this batch" into a function that returns the loss *and*
  its gradient with respect to every parameter, as a dict shaped like ``model.parameters()``.
  Nothing accumulates in ``.grad``, so there is no ``zero_grad``; accumulation over
  micro-batches is a sum of those dicts.
* **One ``mx.eval`` per step.** The forward pass, the backward pass, clipping and the AdamW
  update are only *recorded* until ``mx.eval(loss, model.parameters(), optimizer.state)``, which
  computes them as one graph. (``--compile`` also fuses that graph with ``mx.compile``.)
* **Immutable arrays.** An update makes new arrays; the old weights stay valid as long as
  something refers to them. So a step whose loss turns out NaN puts the previous weights back,
  the same guarantee as PyTorch's check before the update on a CPU.
* **Parameter groups as a filter.** ``mlx.optimizers.AdamW`` decays every weight it is given, so
  two of them (weight decay and none) sit in a ``MultiOptimizer`` whose filter is
  ``GPT.parameter_groups``'s rule: matrices decay, biases and LayerNorm gains do not.
  ``bias_correction=True`` makes it PyTorch's AdamW (MLX's default leaves Adam's bias uncorrected).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import torch
from mlx.utils import tree_map

import lal.train
from lal.checkpoint import CheckpointError
from lal.data import batches_from_windows, eval_windows
from lal.distributed import current_context
from lal.mlx.convert import save_checkpoint
from lal.mlx.model import GPT
from lal.tokenizers import Tokenizer
from lal.train import EVAL_SEED, Callback, History, TrainConfig, lr_at

#: The precisions the MLX backend trains in: float32 weights and arithmetic.
MLX_PRECISIONS = ("auto", "fp32")

#: ``eps`` of torch.optim.AdamW, so the two optimisers take the same steps.
ADAMW_EPS = 1e-8


def mlx_device(name: str | None = None) -> mx.Device:
    """The MLX device for ``--device``: None = MLX's default (the GPU on a Mac), ``cpu``, or ``mps``/``gpu``."""
    if name is None:
        return mx.default_device()
    if name == "cpu":
        return mx.cpu
    if name in ("mps", "gpu"):
        if not mx.metal.is_available():
            raise ValueError("--device mps needs Apple's GPU (Metal), which this machine does not have; use --device cpu.")
        return mx.gpu
    raise ValueError(
        f"The MLX backend runs on Apple's GPU (--device mps) or the CPU (--device cpu), not {name!r}. "
        "For a CUDA GPU use --backend torch."
    )


def device_label(device: mx.Device) -> str:
    """``"Metal GPU"`` or ``"CPU"``: where MLX computes."""
    return "Metal GPU" if device == mx.gpu else "CPU"


def decays(name: str, weight: mx.array) -> bool:
    """Whether AdamW decays this parameter: ``lal.model.GPT.parameter_groups``'s rule (matrices only)."""
    return weight.ndim >= 2


def make_optimizer(cfg: TrainConfig) -> optim.MultiOptimizer:
    """AdamW with PyTorch's update, over the decay / no-decay groups of ``lal.train.make_optimizer``."""

    def adamw(weight_decay: float) -> optim.AdamW:
        return optim.AdamW(learning_rate=lr_at(0, cfg), betas=[cfg.beta1, cfg.beta2], eps=ADAMW_EPS,
                           weight_decay=weight_decay, bias_correction=True)

    return optim.MultiOptimizer([adamw(cfg.weight_decay), adamw(0.0)], [decays])


def to_mx(tokens: torch.Tensor) -> mx.array:
    """A CPU tensor of token ids as an MLX array (int32, MLX's index type)."""
    return mx.array(tokens.numpy().astype(np.int32))


def loss_fn(model: GPT, x: mx.array, y: mx.array) -> mx.array:
    """The mean cross-entropy of ``model`` on one batch: what ``nn.value_and_grad`` differentiates."""
    _, loss = model(x, y)
    return loss


def estimate_loss(model: GPT, data: Any, starts: torch.Tensor, block_size: int, batch_size: int) -> float:
    """Mean cross-entropy over the windows beginning at ``starts``: ``lal.train.estimate_loss`` in MLX.

    Each batch is evaluated before the next is built, so the lazy graph never holds more than one.
    """
    was_training = model.training
    model.eval()  # no dropout
    total, n_windows = mx.array(0.0), 0
    try:
        for x, y in batches_from_windows(data, starts, block_size, batch_size):
            _, loss = model(to_mx(x), to_mx(y))
            total = total + loss * x.size(0)  # every window has block_size targets: weight by windows
            mx.eval(total)
            n_windows += x.size(0)
    finally:
        model.train(was_training)
    return total.item() / n_windows


class Trainer(lal.train.Trainer):
    """One MLX training run: ``lal.train.Trainer``'s loop with an MLX model, step and evaluation.

    Not supported here (each refused with a message): several processes (torchrun), resuming,
    and 16-bit precisions (MLX trains in float32 in this backend).
    """

    def __init__(
        self,
        model: GPT,
        train_data: Any,
        val_data: Any,
        cfg: TrainConfig,
        tokenizer: Tokenizer | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        cfg.validate()
        if not isinstance(model, GPT):
            raise TypeError(f"lal.mlx.train expects a lal.mlx GPT (convert with lal.mlx.from_torch), got {type(model).__name__}.")
        if cfg.precision not in MLX_PRECISIONS:
            raise ValueError(f"The MLX backend trains in float32; --precision {cfg.precision} needs --backend torch.")
        self.dist = current_context()
        if self.dist.is_distributed:
            raise ValueError("The MLX backend trains in one process; for several GPUs use torchrun with --backend torch.")
        self.cfg = cfg
        self.model = model
        self.block_size = cfg.block_size or model.config.block_size
        if self.block_size > model.config.block_size:
            raise ValueError(
                f"TrainConfig.block_size={self.block_size} is longer than the model's context "
                f"({model.config.block_size}). Use block_size ≤ {model.config.block_size}."
            )
        self.out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
        if self.out_dir is not None and cfg.save_checkpoints and tokenizer is None:
            raise ValueError("Checkpoints need the tokenizer: pass train(..., tokenizer=tokenizer), or out_dir=None.")
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks)
        self.train_batches = train_data if callable(train_data) else None
        self.train_data = None if self.train_batches is not None else lal.train._as_token_data(train_data, "train_data")
        self.val_data = lal.train._as_token_data(val_data, "val_data")
        # Batches are cut on the host by lal.data, as in lal.train; MLX computes on mlx_device.
        self.device = torch.device("cpu")
        self.mlx_device = mlx_device(cfg.device)
        mx.set_default_device(self.mlx_device)
        for split, data in (("training", self.train_data), ("validation", self.val_data)):
            if data is not None and len(data) < self.block_size + 1:
                raise ValueError(
                    f"The {split} split has {len(data)} tokens, but one window of context needs "
                    f"block_size + 1 = {self.block_size + 1}. Use a longer text or a smaller block_size."
                )
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)  # the windows lal.train draws
        mx.random.seed(cfg.seed)  # dropout
        self.eval_starts = eval_windows(self.val_data, cfg.eval_windows, self.block_size, seed=EVAL_SEED)
        self.eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
        self.state = lal.train._RunState()
        self.step_losses: list[torch.Tensor] = []
        self.step_grad_norms: list[torch.Tensor] = []
        self.model.train()
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(self.model.trainable_parameters())
        self.loss_and_grad = nn.value_and_grad(self.model, loss_fn)
        self.step_fn = self._compiled_step() if cfg.compile else self._step

    # ------------------------------------------------------------------ the step

    def _step(self, batches: list[tuple[mx.array, mx.array]]) -> tuple[mx.array, mx.array]:
        """Record one optimiser step: mean loss and gradient over the micro-batches, clip, update.

        Returns the mean loss and the gradient norm before clipping, still unevaluated.
        """
        loss, grads = mx.array(0.0), None
        for x, y in batches:
            micro_loss, micro_grads = self.loss_and_grad(self.model, x, y)
            loss = loss + micro_loss / len(batches)
            micro_grads = tree_map(lambda g: g / len(batches), micro_grads)
            grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
        if self.cfg.grad_clip is not None:
            grads, grad_norm = optim.clip_grad_norm(grads, self.cfg.grad_clip)
        else:
            grad_norm = mx.array(math.nan)
        self.optimizer.update(self.model, grads)
        return loss, grad_norm

    def _compiled_step(self):
        """``_step`` under ``mx.compile``: the model, optimizer and random state are its inputs and outputs."""
        state = [self.model.state, self.optimizer.state, mx.random.state]
        return mx.compile(self._step, inputs=state, outputs=state)

    def _train_step(self) -> None:
        cfg, state = self.cfg, self.state
        lr = lr_at(state.step, cfg)
        self.optimizer.learning_rate = lr
        batches = [(to_mx(x), to_mx(y)) for x, y in self._micro_batches(state.step)]
        before = self.model.parameters()  # still valid after the update: MLX arrays are immutable
        loss, grad_norm = self.step_fn(batches)
        mx.eval(loss, grad_norm, self.model.parameters(), self.optimizer.state)  # the whole step computes here
        step_loss = loss.item()
        if not math.isfinite(step_loss):
            self.model.update(before)  # keep the last good weights in memory, as lal.train does
            self._diverged(state.step + 1, lr)
        state.step += 1
        self.step_losses.append(torch.tensor(step_loss))
        if cfg.grad_clip is not None:
            self.step_grad_norms.append(torch.tensor(grad_norm.item()))

    train_step = _train_step  # the public name of one step, as on lal.train.Trainer (lal.bench times it)

    # ------------------------------------------------------------------ evaluation and files

    def _validation_loss(self) -> float:
        return estimate_loss(self.model, self.val_data, self.eval_starts, self.block_size, self.eval_batch_size)

    def _train_state(self, elapsed_s: float) -> dict[str, Any]:
        """Where the run stood; an MLX checkpoint holds no optimizer state, so it cannot be resumed."""
        state = self.state
        return {
            "backend": "mlx",
            "step": state.step,
            "tokens": state.tokens,
            "history": state.history.to_dict(),
            "evals_since_best": state.evals_since_best,
            "patience_best": state.patience_best,
            "elapsed_s": elapsed_s,
        }

    def _checkpoint(self, name: str, train_state: dict[str, Any], extra: dict[str, Any]) -> None:
        save_checkpoint(self.out_dir / name, self.model, self.tokenizer, train_state=train_state,
                        extra={**extra, "backend": "mlx"})

    def _resume(self) -> None:
        raise CheckpointError(
            "The MLX backend cannot resume a run yet (its checkpoints hold the weights, not the optimizer's "
            "state). Start a new run, or train with --backend torch to be able to resume."
        )


def train(
    model: GPT,
    train_data: Any,
    val_data: Any,
    cfg: TrainConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    callbacks: Iterable[Callback] = (),
    resume: bool = False,
) -> History:
    """Train an MLX ``model`` exactly as ``lal.train.train`` trains a PyTorch one; return the History.

    The arguments, the files written to ``cfg.out_dir``, the callbacks and the errors (a NaN
    loss raises ``lal.train.TrainingDivergedError``) are those of ``lal.train.train``.
    """
    return Trainer(model, train_data, val_data, cfg or TrainConfig(), tokenizer, tuple(callbacks)).run(resume)
