"""Where the model runs, and in which precision.

One place decides the device and the arithmetic the course uses on it:

* the device: CUDA if there is a GPU, then Apple's MPS, then the CPU, unless you ask for one;
* the autocast dtype: bfloat16 on CUDA GPUs that support it (Ampere and newer), float16 on older
  ones such as Colab's free T4 (float16's narrow range then needs a gradient scaler), and plain
  float32 on CPU and MPS, where autocast would be slower or less reliable than it helps.

MPS is only used from torch 2.9 on: older versions give wrong or unstable losses for this kind of
model, so with an older torch we say so and train on the CPU instead.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import torch

import lal

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")

#: The first torch release whose MPS backend trains these models reliably.
MIN_TORCH_FOR_MPS = (2, 9)


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch, e.g. (2, 9) for "2.9.1+cu126"."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _mps_built_and_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def mps_usable() -> bool:
    """True when an MPS device is there *and* torch is new enough to train on it correctly."""
    return _mps_built_and_available() and torch_version() >= MIN_TORCH_FOR_MPS


def _mps_too_old_message() -> str:
    found = ".".join(map(str, torch_version()))
    wanted = ".".join(map(str, MIN_TORCH_FOR_MPS))
    return (
        f"An Apple GPU (MPS) is available, but torch {found} gives unreliable losses on it; "
        f"using the CPU. Upgrade with `pip install -U 'torch>={wanted}'` to train on the GPU."
    )


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to train and sample on.

    ``None`` or ``"auto"`` picks the best available: CUDA, then MPS (torch ≥ 2.9), then the CPU.
    Naming a device ("cuda", "cuda:1", "mps", "cpu") insists on it, and raises ``ValueError``
    with what to do instead when it is not there, rather than silently training somewhere else.
    The one exception is MPS with a torch older than 2.9: it is there but unreliable, so a
    warning says so and the CPU is used.
    """
    if isinstance(preferred, torch.device):
        preferred = str(preferred)
    choice = (preferred or "auto").strip().lower()
    kind = choice.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {preferred!r}; choose one of {', '.join(DEVICE_CHOICES)} (or e.g. 'cuda:1').")

    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_built_and_available():
            if mps_usable():
                return torch.device("mps")
            warnings.warn(_mps_too_old_message(), stacklevel=2)
        return torch.device("cpu")

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device='cuda' was requested, but torch sees no CUDA GPU (this torch build is "
                f"{torch.__version__}). Install a CUDA build of torch, pick a GPU runtime on Colab "
                "(Runtime → Change runtime type), or use device='auto' to fall back to the CPU."
            )
        index = int(choice.split(":")[1]) if ":" in choice else None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"There is no {choice}: torch sees {torch.cuda.device_count()} CUDA device(s).")
        return torch.device(choice)

    if kind == "mps":
        if not _mps_built_and_available():
            raise ValueError("device='mps' was requested, but no Apple GPU (MPS) is available; use 'auto' or 'cpu'.")
        if not mps_usable():
            warnings.warn(_mps_too_old_message(), stacklevel=2)
            return torch.device("cpu")
        return torch.device("mps")

    return torch.device("cpu")


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The reduced precision to compute in on ``device``, or ``None`` for plain float32.

    bfloat16 has float32's range, so it trains without tricks; float16 does not (small gradients
    underflow to zero), so where it is the only option a gradient scaler is needed
    (see :func:`needs_grad_scaler`). CPU and MPS train in float32 here.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def needs_grad_scaler(device: str | torch.device) -> bool:
    """True when training on ``device`` uses float16, whose gradients must be scaled up to survive."""
    return autocast_dtype(device) == torch.float16


def autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """A context manager that runs the forward pass in :func:`autocast_dtype` (or does nothing)."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: str | torch.device) -> None:
    """Turn on the fast matmul path on CUDA: float32 matmuls in TF32, at tensor-core speed.

    TF32 keeps float32's range with a 10-bit mantissa, which is plenty for training; it only
    matters for the few matmuls autocast leaves in float32. Nothing changes on the CPU.
    """
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and all GPUs) random generators at once."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def describe_environment() -> str:
    """A few lines about this Python, torch, lal and the device, for the first cell of a notebook.

    When a notebook misbehaves, the cause is most often a kernel running another Python than the
    one lal was installed into, or a GPU that is not seen: these lines show both at a glance.
    """
    with _quiet_warnings():
        device = pick_device("auto")
    lines = [
        # The environment's folder, not sys.executable: the same environment is reached through
        # python, python3 or python3.11, and stored notebook outputs should not depend on which.
        f"Python  {platform.python_version()} (environment {_short_path(sys.prefix)})",
        f"torch   {torch.__version__}",
        f"lal     {lal.__version__} ({_short_path(os.path.dirname(lal.__file__))})",
        f"device  {_describe_device(device)}",
        f"threads {torch.get_num_threads()} (CPU cores: {os.cpu_count()})",
    ]
    if _mps_built_and_available() and not mps_usable():
        lines.append("note    " + _mps_too_old_message())
    if "google.colab" in sys.modules and device.type == "cpu":
        lines.append(
            "note    No GPU runtime on Colab: chapters 1-7 run fine on the CPU, but for chapter 8 choose "
            "Runtime → Change runtime type → T4 GPU, then run the notebook again."
        )
    return "\n".join(lines)


def _short_path(path: str) -> str:
    """``path`` relative to the working folder when it is inside the repository, else from ``~``.

    Enough to tell which Python a kernel runs, without writing a machine's folders into the
    outputs that notebooks store.
    """
    try:
        relative = os.path.relpath(path)
    except ValueError:  # Windows: another drive has no relative path
        relative = os.path.join(os.pardir, os.pardir, path)
    if not relative.startswith(os.path.join(os.pardir, os.pardir)):
        return relative
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path.startswith(home + os.sep) else path


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            precision = "bf16 autocast"
        else:
            precision = "no bf16: fp16 autocast with a gradient scaler"
        return f"cuda ({name}; {precision})"
    if device.type == "mps":
        return "mps (Apple GPU; float32)"
    return "cpu (no GPU found; float32, no bf16 autocast)"
