"""What the pictures accept: numbers as lists, arrays or tensors, labels as strings or a tokenizer,
and tokens made readable (whitespace as symbols) for axis labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


_WHITESPACE_SYMBOLS = {"\n": "⏎", " ": "␣", "\t": "⇥"}


class TokenizerLike(Protocol):
    """What the plots need from a tokenizer (every ``lal`` tokenizer has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def _is_tokenizer(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None))


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """A float64 NumPy copy of a list, array or torch tensor (any device, any dtype, with grad)."""
    if hasattr(values, "detach"):  # a torch tensor; bf16 has no NumPy dtype, hence .float()
        values = values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers (a list, NumPy array or torch tensor): {error}") from error


def _vector(values: Any, name: str) -> np.ndarray:
    array = _to_numpy(values, name)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {array.shape}; "
                         f"from a batch, pass one row (e.g. logits[0, -1] for the last position).")
    return array


def visible_token(token: str) -> str:
    """A token as a label you can read: whitespace drawn as symbols, control characters escaped.

    ``"\\n"`` becomes ``⏎``, a space ``␣`` and a tab ``⇥``, so ``" the"`` (GPT-2's token with its
    leading space) reads ``␣the``. Other invisible characters are shown as their Python escape.
    """
    if token == "":
        return "∅"
    parts = []
    for char in token:
        if char in _WHITESPACE_SYMBOLS:
            parts.append(_WHITESPACE_SYMBOLS[char])
        elif not char.isprintable():
            parts.append(char.encode("unicode_escape").decode("ascii"))
        else:
            parts.append(char)
    return "".join(parts)


def _tick_label(token: str) -> str:
    """:func:`visible_token`, with ``$`` escaped so matplotlib does not read a token as math."""
    return visible_token(token).replace("$", r"\$")


def _labels_for(labels: Sequence[str] | TokenizerLike, ids: Sequence[int]) -> list[str]:
    """The label of each id: from a list of strings, or by decoding one id at a time."""
    if _is_tokenizer(labels):
        return [labels.decode([int(i)]) for i in ids]  # type: ignore[union-attr]
    return [str(labels[int(i)]) for i in ids]  # type: ignore[index]


def _check_label_count(labels: Sequence[str] | TokenizerLike, size: int, what: str) -> None:
    if not _is_tokenizer(labels) and len(labels) != size:  # type: ignore[arg-type]
        raise ValueError(f"Got {len(labels)} labels for {size} {what}; "  # type: ignore[arg-type]
                         f"pass one label per {what.rstrip('s')} (or a tokenizer).")


def _rotation_for(labels: Sequence[str]) -> int:
    """Single characters read best upright; longer tokens need to stand up to fit."""
    return 0 if max((len(label) for label in labels), default=0) <= 2 else 90


def _human_count(value: float, _position: Any = None) -> str:
    """1234 -> '1.2K', 3_400_000 -> '3.4M' (axis ticks and bar annotations)."""
    for divisor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return f"{value:.0f}"
