"""Weights both ways between ``lal.model.GPT`` (PyTorch) and ``lal.mlx.GPT``, and lal checkpoints in MLX.

The two models use the same parameter names and shapes (``nn.Linear`` stores ``(out, in)`` in
both), so converting is copying arrays through NumPy. One name differs: PyTorch's state dict
lists the tied head twice (``lm_head.weight`` is ``transformer.wte.weight``), while the MLX model
has no head parameter at all; :func:`from_torch` checks that the two are one tensor and drops
the copy, :func:`to_torch` writes both keys.

Checkpoints stay in the one lal format (``lal.checkpoint``): :func:`load_checkpoint` reads a file
written by either backend, :func:`save_checkpoint` writes one that ``lal generate --backend torch``
reads, so a run trained with one backend samples with the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import numpy as np
import torch
from mlx.utils import tree_flatten, tree_unflatten

import lal.checkpoint
import lal.model
from lal.mlx.model import GPT
from lal.tokenizers import Tokenizer

#: The PyTorch state-dict key of the tied output head, which MLX computes from the token table.
TIED_HEAD = "lm_head.weight"
TOKEN_TABLE = "transformer.wte.weight"


def from_torch(model: lal.model.GPT) -> GPT:
    """An MLX :class:`~lal.mlx.model.GPT` with the weights of a PyTorch ``lal.model.GPT`` (float32)."""
    config = lal.checkpoint.unwrap_model(model).config
    state = lal.checkpoint.clean_state_dict(lal.checkpoint.unwrap_model(model).state_dict())
    return from_state_dict(config, state)


def from_state_dict(config: lal.model.GPTConfig, state: Mapping[str, torch.Tensor]) -> GPT:
    """An MLX model of ``config`` holding a PyTorch state dict's weights."""
    state = dict(state)
    head = state.pop(TIED_HEAD, None)
    if head is not None and not torch.equal(head, state[TOKEN_TABLE]):
        raise ValueError(
            f"{TIED_HEAD} differs from {TOKEN_TABLE}: lal's GPT ties the output head to the token "
            "table, and so does the MLX model; these weights come from an untied model."
        )
    mlx_model = GPT(config)
    expected = {name: param.shape for name, param in tree_flatten(mlx_model.parameters())}
    if set(expected) != set(state):
        missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"The weights do not fit the MLX model: missing {missing[:4]}, unexpected {unknown[:4]}.")
    arrays = []
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; the MLX model expects {tuple(expected[name])}.")
        arrays.append((name, mx.array(tensor.detach().to("cpu", torch.float32).numpy())))
    mlx_model.update(tree_unflatten(arrays))
    mx.eval(mlx_model.parameters())  # copy now, not lazily when first used
    return mlx_model


def state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The MLX model's weights as a PyTorch state dict, the tied head included under both names."""
    state = {name: torch.from_numpy(np.array(param, copy=True)) for name, param in tree_flatten(model.parameters())}
    state[TIED_HEAD] = state[TOKEN_TABLE]
    return state


def to_torch(model: GPT) -> lal.model.GPT:
    """A PyTorch ``lal.model.GPT`` (on the CPU, in training mode) with the MLX model's weights."""
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves torch's global RNG as it was
        torch_model = lal.model.GPT(model.config)
    lal.checkpoint.load_model_state(torch_model, state_dict(model), source="the MLX model")
    return torch_model


@dataclass
class Checkpoint:
    """A lal checkpoint loaded for MLX: the model (in eval mode), its tokenizer and what was saved with it."""

    model: GPT
    tokenizer: Tokenizer
    config: lal.model.GPTConfig
    extra: dict[str, Any]
    path: Path | None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a lal checkpoint (a file, or a training folder's best.pt, else last.pt) into an MLX model."""
    loaded = lal.checkpoint.load_checkpoint(path, device="cpu")  # validates the file, rebuilds the tokenizer
    model = from_torch(loaded.model)
    model.eval()
    return Checkpoint(model=model, tokenizer=loaded.tokenizer, config=loaded.config, extra=loaded.extra,
                      path=loaded.path)


def save_checkpoint(
    path: str | os.PathLike,
    model: GPT,
    tokenizer: Tokenizer,
    *,
    train_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the MLX model as a lal checkpoint, atomically (``lal.checkpoint.save_checkpoint``)."""
    return lal.checkpoint.save_checkpoint(path, to_torch(model), tokenizer, train_state=train_state, extra=extra)
