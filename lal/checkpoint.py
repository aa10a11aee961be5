"""One checkpoint format: everything needed to use a model or to resume training it, in one file.

A checkpoint is a dictionary of plain values, written with ``torch.save``::

    {
        "format": "lal-checkpoint", "version": 1,
        "model_config": GPTConfig.to_dict(),    # the shape of the network
        "model": model.state_dict(),            # the weights
        "tokenizer": tokenizer.to_dict(),       # how text becomes ids, so the model can be used alone
        "optimizer": optimizer.state_dict() or None,
        "train_state": {...} or None,           # step, history, random-generator states: to resume
        "extra": {...},                         # anything else worth keeping (metrics, notes)
    }

Only tensors, numbers, strings, lists, tuples and dicts go in, so ``torch.load(weights_only=True)``
reads it. That matters: a pickle can contain instructions that run code while loading, and
``weights_only=True`` refuses them, so opening a checkpoint someone sent you cannot run
their code.

Files are written atomically: to a temporary file beside the destination, flushed to disk, then
renamed over it. A crash or a full disk in the middle of a save leaves the previous checkpoint
intact instead of a half-written one.
"""

from __future__ import annotations

import os
import errno
import pickle
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lal.model import GPT, GPTConfig
from lal.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT_NAME = "lal-checkpoint"
FORMAT_VERSION = 1

#: The files a training folder holds, in the order :func:`resolve_checkpoint_path` prefers them.
CHECKPOINT_NAMES = ("best.pt", "last.pt")

#: ``torch.compile`` wraps a model; its state-dict keys then start with this prefix.
COMPILED_PREFIX = "_orig_mod."

_REQUIRED_KEYS = ("model_config", "model", "tokenizer")


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, trusted or fitted to a model; the message says why."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: a ready-to-use model (in eval mode) and everything saved with it."""

    model: GPT
    tokenizer: Tokenizer
    config: GPTConfig
    optimizer_state: dict[str, Any] | None = None
    train_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind a ``torch.compile`` wrapper (or the model itself)."""
    return getattr(model, "_orig_mod", model)


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with ``torch.compile``'s ``_orig_mod.`` prefix removed from every key.

    A compiled model saves its weights under ``_orig_mod.transformer...``; stripping the prefix
    makes them load into a plain ``GPT`` as well as into a compiled one.
    """
    return {key.removeprefix(COMPILED_PREFIX): value for key, value in state_dict.items()}


def checkpoint_dict(
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dictionary :func:`save_checkpoint` writes (useful to inspect or to save elsewhere)."""
    plain_model = unwrap_model(model)
    config = getattr(plain_model, "config", None)
    if not isinstance(config, GPTConfig):
        raise TypeError(f"save_checkpoint needs a lal GPT model (with a GPTConfig), got {type(plain_model).__name__}.")
    if tokenizer is None or not hasattr(tokenizer, "to_dict"):
        raise TypeError(
            "save_checkpoint needs the tokenizer the model was trained with, so the checkpoint can "
            "turn text into ids and back on its own. Pass tokenizer=..."
        )
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "model": clean_state_dict(plain_model.state_dict()),
        "tokenizer": tokenizer.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_state": dict(train_state) if train_state is not None else None,
        "extra": dict(extra) if extra is not None else {},
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path.

    The weights of a tied output head are stored once: ``lm_head.weight`` and
    ``transformer.wte.weight`` are the same tensor, and ``torch.save`` keeps that sharing.
    """
    payload = checkpoint_dict(model, tokenizer, optimizer=optimizer, train_state=train_state, extra=extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(payload, path)
    return path


def _atomic_torch_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename it over ``path``.

    ``os.replace`` within one folder (one file system) is atomic: readers see the old file or
    the new one, never a mixture. The fsync makes sure the bytes are on disk before the rename.
    """
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    tmp_path = Path(handle.name)
    try:
        _chmod_like_new_file(tmp_path)  # tempfile makes it private (0600); a checkpoint is an ordinary file
        with handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if _is_disk_full(err):
            raise _disk_full_error(payload, path) from None
        raise
    _fsync_directory(path.parent)


def _is_disk_full(err: BaseException) -> bool:
    """torch.save reports a full disk as an OSError (ENOSPC, EDQUOT) or as a RuntimeError from its zip writer."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "No space left" in str(err))


def _payload_bytes(payload: Any) -> int:
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, Mapping):
        return sum(_payload_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_payload_bytes(value) for value in payload)
    return 0


def _disk_full_error(payload: Any, path: Path) -> OSError:
    needed_mb = _payload_bytes(payload) / 1e6
    free_mb = shutil.disk_usage(path.parent).free / 1e6
    kept = f"the previous {path.name} is intact" if path.exists() else f"nothing was written to {path}"
    return OSError(
        errno.ENOSPC,
        f"The disk is full: writing {path} needs about {needed_mb:,.1f} MB and {free_mb:,.1f} MB are free; "
        f"{kept}, and the other checkpoints in {path.parent} are untouched. Free some space, then continue "
        "with `lal train --resume`.",
    )


#: Temporary checkpoint files younger than this may belong to a run that is still writing.
STALE_TEMPORARY_AGE_S = 60.0


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the half-written ``.best.pt.*.tmp`` / ``.last.pt.*.tmp`` files a killed run left behind.

    A run killed mid-write (SIGKILL, power loss) cannot remove its temporary file; the real
    checkpoints are never affected (they are replaced only by a complete file), but the
    leftovers would pile up at checkpoint size each.
    """
    removed = []
    for name in CHECKPOINT_NAMES:
        for leftover in Path(folder).glob(f".{name}.*.tmp"):
            try:
                if time.time() - leftover.stat().st_mtime > STALE_TEMPORARY_AGE_S:
                    leftover.unlink()
                    removed.append(leftover)
            except OSError:
                continue  # gone already, or not ours to delete
    return removed


def _chmod_like_new_file(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_directory(folder: Path) -> None:
    """Persist the rename itself (POSIX); Windows cannot open folders, and does not need it."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a training folder's best/last file."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in CHECKPOINT_NAMES]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = ", ".join(str(c) for c in candidates)
        raise CheckpointError(
            f"No checkpoint in the folder {path} (tried {tried}). Train a model into it first, "
            "e.g. `lal train --out <folder>`, or pass the path of a .pt file."
        )
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: the file does not exist (tried {path}). Check the path, or "
            "pass the training folder (lal uses its best.pt, then last.pt)."
        )
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """Load and validate the raw checkpoint dictionary (tensors on the CPU) and its resolved path.

    Everything is loaded onto the CPU first: random-generator states must stay CPU tensors, and
    moving the model afterwards is as fast as mapping it on load.
    """
    path = resolve_checkpoint_path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it was never written completely. Re-save or retrain it.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Only a real pickle naming a class or function to import ("Unsupported global") would run
        # code; anything else the safe loader rejects (random bytes, another format) is just not a
        # checkpoint.
        if "unsupported global" in str(err).lower():
            raise CheckpointError(
                f"Refused to load {path} for safety: it contains Python objects that would run code "
                "while loading, which torch.load(weights_only=True) does not allow. lal checkpoints hold "
                "only tensors and plain values, so this file was not written by lal.save_checkpoint. "
                "Only if you trust where it came from, load it yourself with torch.load(..., "
                "weights_only=False) and re-save what you need with lal.checkpoint.save_checkpoint."
            ) from None
        raise _corrupt_error(path, err) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise _corrupt_error(path, err) from err
    _validate_payload(payload, path)
    return payload, path


def _corrupt_error(path: Path, err: BaseException) -> CheckpointError:
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if not is_zip:
        return CheckpointError(
            f"{path} is not a checkpoint: torch saves checkpoints as zip archives, and this file is "
            "not one (another kind of file, or cut short at the start). Pass a .pt file written by "
            "`lal train` or lal.checkpoint.save_checkpoint, or the training folder."
        )
    return CheckpointError(
        f"Could not read {path}: the file is truncated or corrupted ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:160] if str(err) else 'no details'}). It was probably cut short "
        "while being copied or written. Use another checkpoint (a training folder keeps best.pt and "
        "last.pt) or retrain."
    )


def _validate_payload(payload: Any, path: Path) -> None:
    """Check that ``payload`` is a lal checkpoint this version of lal can read."""
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} is not a lal checkpoint: it holds a {type(payload).__name__}, not a checkpoint "
            "dictionary. Save models with lal.checkpoint.save_checkpoint."
        )
    if payload.get("format") != FORMAT_NAME:
        if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
            what = "a bare state_dict (weights only: no model config, no tokenizer)"
        else:
            keys = ", ".join(sorted(map(str, payload))[:8]) or "nothing"
            what = f"a dictionary with the keys {keys}, not the lal checkpoint format"
        raise CheckpointError(
            f"{path} is not a lal checkpoint: it is {what}. lal needs the model's config and tokenizer "
            "next to the weights; save with lal.checkpoint.save_checkpoint(path, model, tokenizer)."
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a lal checkpoint of format version {version!r}, but this lal reads versions up "
            f"to {FORMAT_VERSION}. Upgrade lal (pip install -U lal) to read it."
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is an incomplete lal checkpoint: {', '.join(missing)} missing. Re-save it.")


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path = "the checkpoint") -> None:
    """Copy saved weights into ``model``, explaining a mismatch instead of dumping torch's error.

    Loading copies *into* the model's existing tensors, so a tied head stays tied: both keys
    of the shared tensor write into the same storage.
    """
    target = unwrap_model(model)
    try:
        target.load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:4] if line.strip())
        config = getattr(target, "config", None)
        shape = f" ({_describe_config(config)})" if isinstance(config, GPTConfig) else ""
        raise CheckpointError(
            f"The weights in {source} do not fit this model{shape}: {details or err}. The checkpoint was "
            "made for a model of another shape (preset, vocabulary or context length). Build the model "
            "from the checkpoint's own config (lal.checkpoint.load_checkpoint does), or train afresh."
        ) from None


def _describe_config(config: GPTConfig) -> str:
    return (
        f"{config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, context "
        f"{config.block_size}, vocabulary {config.vocab_size}"
    )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file, or a training folder's ``best.pt`` (else ``last.pt``).

    Returns a :class:`Checkpoint` whose model is built from the saved config, holds the saved
    weights, sits on ``device`` and is in eval mode (ready to sample from); the tokenizer is
    rebuilt from its saved description.
    """
    payload, path = read_checkpoint(path)
    try:
        config = GPTConfig.from_dict(payload["model_config"])
        tokenizer = tokenizer_from_dict(payload["tokenizer"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds an invalid model config or tokenizer: {err}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{path} is inconsistent: its tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}. The tokenizer was saved with another model; retrain or re-save them together."
        )
    model = GPT(config)
    load_model_state(model, payload["model"], source=path)
    model.to(device)
    model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        config=config,
        optimizer_state=payload.get("optimizer"),
        train_state=payload.get("train_state"),
        extra=payload.get("extra") or {},
        path=path,
    )
