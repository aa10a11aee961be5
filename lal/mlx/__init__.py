"""The same GPT in Apple's MLX: a second backend for Macs, tested on Linux with MLX's CPU build.

``lal.mlx`` mirrors the PyTorch reference piece by piece, with the same presets, parameter names
and shapes, so a ``lal`` checkpoint loads into it and back (:func:`from_torch`, :func:`to_torch`):

* :mod:`lal.mlx.model`: :class:`GPT` written in ``mlx.nn``;
* :mod:`lal.mlx.train`: ``train``, the training loop of :mod:`lal.train` (the same schedule, batches,
  evaluation windows and checkpoint files) with ``nn.value_and_grad`` and ``mlx.optimizers.AdamW``;
* :mod:`lal.mlx.sample`: generation with a KV cache, choosing tokens with :mod:`lal.sample`;
* :mod:`lal.mlx.bench`: the same throughput measurement as :mod:`lal.bench`.

MLX is an optional dependency (``pip install "lal[mlx]"``: the Metal build on a Mac, the CPU
build on Linux). This module imports without it; everything that needs it goes through
:func:`require_mlx`, which turns a missing install into one line that says what to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

#: What to run when MLX is missing; named by every error that needs it.
INSTALL_COMMAND = 'pip install "lal[mlx]"'

#: Names this package exports, and the submodule that defines each (imported on first use).
_EXPORTS = {
    "GPT": "lal.mlx.model",
    "from_torch": "lal.mlx.convert",
    "to_torch": "lal.mlx.convert",
    "generate": "lal.mlx.sample",
    "generate_text": "lal.mlx.sample",
}

__all__ = ["INSTALL_COMMAND", "MLXUnavailableError", "mlx_available", "require_mlx", *_EXPORTS]


class MLXUnavailableError(RuntimeError):
    """MLX cannot be imported here; the message names the command that installs it."""


def require_mlx() -> ModuleType:
    """``mlx.core``, or :class:`MLXUnavailableError` saying how to install it.

    A RuntimeError (not an ImportError), so the command line shows it as its usual one line.
    """
    try:
        return importlib.import_module("mlx.core")
    except ImportError as error:
        raise MLXUnavailableError(
            f"the MLX backend needs MLX, which is not installed in this Python ({error}). "
            f"Install it with: {INSTALL_COMMAND} (the Metal build on a Mac, the CPU build on Linux), "
            "or use --backend torch."
        ) from None


def mlx_available() -> bool:
    """Whether MLX imports here (the notebooks and tests ask before they use it)."""
    try:
        require_mlx()
    except MLXUnavailableError:
        return False
    return True


def __getattr__(name: str) -> Any:
    """``lal.mlx.GPT``, ``lal.mlx.from_torch``, …: imported on first use, after checking for MLX."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lal.mlx' has no attribute {name!r}")
    require_mlx()
    return getattr(importlib.import_module(_EXPORTS[name]), name)
