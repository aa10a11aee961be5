"""What every exercise check shares: calling the learner's function safely, naming the classic
mistake an answer reproduces, and reporting.

A check runs the learner's function on ordinary and edge cases and compares it with the
reference in ``lal``. It returns quietly after one success line, or raises ``AssertionError``
with a message that says what went wrong and hints at why. When the answer is wrong, a check
also computes what the classic mistakes would give (a softmax over the wrong axis, a missing
√d, …) and names the one the learner's output matches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: (what the learner did wrong, the output that mistake gives), tried in order.
Mistakes = list[tuple[str, torch.Tensor]]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def call(candidate: Callable[..., Any], name: str, *args: Any, hint: str = "", **kwargs: Any) -> Any:
    """Call the learner's function: a stub not written yet, or a crash, becomes a clear failure."""
    try:
        return candidate(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(
            f"`{name}` is not written yet: replace the `raise NotImplementedError(...)` line with "
            "your code, run that cell, then run this check again."
        ) from None
    except AssertionError:
        raise
    except Exception as error:  # the learner's code may raise anything; report it readably
        called_with = ", ".join(_describe(a) for a in args)
        raise AssertionError(
            f"`{name}` raised {type(error).__name__}: {error}\n(called with {called_with}.) {hint}".rstrip()
        ) from error


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


def matching_mistake(actual: torch.Tensor, mistakes: Mistakes, *, atol: float, rtol: float) -> str | None:
    """The message of the first classic mistake whose output ``actual`` reproduces, if any."""
    for message, value in mistakes:
        if value.shape != actual.shape:
            continue
        if torch.allclose(actual.double(), value.double(), atol=atol, rtol=rtol, equal_nan=True):
            return message
    return None


def compare(
    actual: torch.Tensor, expected: torch.Tensor, mistakes: Mistakes, otherwise: str, *, atol: float, rtol: float
) -> None:
    """Pass when ``actual`` matches ``expected``; otherwise name the mistake it matches."""
    if torch.isfinite(actual).all() and torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        return
    message = matching_mistake(actual, mistakes, atol=atol, rtol=rtol) or otherwise
    expect_close(actual, expected, message, atol=atol, rtol=rtol)


def expect_unchanged(before: torch.Tensor, after: torch.Tensor, name: str, argument: str = "x") -> None:
    """Fail when the learner's function changed an input tensor in place."""
    if not torch.equal(before, after):
        raise AssertionError(
            f"`{name}` changed its input `{argument}` in place (an operation such as `{argument} += ...` or "
            f"`masked_fill_`). The caller still needs `{argument}` as it was, and autograd may too: build a "
            f"new tensor instead (`{argument} + ...` or `masked_fill` return one)."
        )


def passed(name: str, n_cases: int) -> None:
    print(f"✓ {name} is correct: it matches the reference on {n_cases} cases.")
