"""What every exercise check shares: calling the learner's function safely and reporting.

A check runs the learner's function on ordinary and edge cases and compares it with the
reference in ``lal``. It returns quietly after one success line, or raises ``AssertionError``
with a message that says what went wrong and hints at why.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def call(candidate: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; a stub that is not written yet becomes a clear failure."""
    try:
        return candidate(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(
            f"`{name}` is not written yet: replace the `raise NotImplementedError(...)` line with "
            "your code, run that cell, then run this check again."
        ) from None


def expect_tensor(value: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Fail with a readable message unless ``value`` is a tensor of ``shape``."""
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"`{name}` should return a torch.Tensor, but returned {type(value).__name__}.")
    if tuple(value.shape) != tuple(shape):
        raise AssertionError(f"`{name}` returned shape {tuple(value.shape)}, expected {tuple(shape)}.")
    return value


def expect_close(
    actual: torch.Tensor, expected: torch.Tensor, message: str, *, atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """Like ``torch.testing.assert_close``, but the message explains the likely mistake."""
    if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
        raise AssertionError(f"{message}\n(Your result contains inf or NaN where the reference has none.)")
    if not torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        worst = (actual.double() - expected.double()).abs().max().item()
        raise AssertionError(f"{message}\n(Largest difference from the reference: {worst:.3g}.)")


def passed(name: str, n_cases: int) -> None:
    print(f"✓ {name} is correct: it matches the reference on {n_cases} cases.")
