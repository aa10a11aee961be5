"""What every exercise check shares: calling the learner's function safely, naming the classic
mistake an answer reproduces, and reporting.

A check runs the learner's function on ordinary and edge cases and compares it with the
reference in ``lal``. It returns quietly after one success line, or raises ``AssertionError``
with a message that says what went wrong and hints at why. When the answer is wrong, a check
also computes what the classic mistakes would give (a softmax over the wrong axis, a missing
√d, …) and names the one the learner's output matches.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch.overrides import TorchFunctionMode

#: (what the learner did wrong, the output that mistake gives), tried in order.
Mistakes = list[tuple[str, torch.Tensor]]

Answer = TypeVar("Answer")
Output = TypeVar("Output")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- the exercise's rules


@dataclass(frozen=True)
class Forbidden:
    """A rule of an exercise: what the learner's function may not call, and why.

    ``torch_names`` are matched against the ``__name__`` of every torch function and tensor method
    the learner's code reaches (through ``__torch_function__``, which every public torch API goes
    through): an alias such as ``from torch.nn.functional import layer_norm as ln`` is still the
    function ``layer_norm``, and the method ``x.log_softmax()``, the functions
    ``torch.log_softmax``, ``F.log_softmax`` and ``torch.special.log_softmax`` (``special_log_softmax``)
    all carry the name. ``python_functions`` are plain Python functions or classes (a class
    stands for its ``__init__``), matched by their code object, so aliases cannot dodge them either
    (nor can a subclass, whose ``__init__`` runs the forbidden one). Private and operator spellings
    of a torch name (``torch.ops.aten._log_softmax``, ``native_layer_norm``) match the public name
    (:func:`canonical_name`).
    ``predicate`` narrows a torch name to some calls only: it gets the call's arguments and says
    whether this call breaks the rule (``weight[ids]`` is forbidden, ``weight[0]`` is not).
    """

    what: str  # how the learner would write it, for the message: "F.layer_norm"
    why: str  # the exercise's reason: "the exercise asks you to compute the mean and variance yourself"
    torch_names: tuple[str, ...] = ()
    python_functions: tuple[Callable[..., Any], ...] = ()
    predicate: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None


class ForbiddenCallError(AssertionError):
    """Raised inside the learner's function at the moment it calls something its exercise forbids."""


def _code_of(function: Callable[..., Any]) -> types.CodeType:
    target = function.__init__ if isinstance(function, type) else function  # type: ignore[misc]
    target = getattr(target, "__func__", target)
    code = getattr(target, "__code__", None)
    if code is None:
        raise TypeError(f"Forbidden.python_functions takes Python functions or classes, got {function!r}.")
    return code


def _violation(rule: Forbidden, name: str) -> ForbiddenCallError:
    return ForbiddenCallError(
        f"`{name}` calls {rule.what}, which this exercise does not allow: {rule.why}. "
        "Build it from the operations the chapter used instead."
    )


def canonical_name(name: str) -> str:
    """The public name behind a torch callable's ``__name__``: ``special_log_softmax``,
    ``_log_softmax`` (``torch.ops.aten._log_softmax``) and ``log_softmax.int`` all give ``log_softmax``,
    and ``native_layer_norm`` gives ``layer_norm``, so a rule that names the public function also
    catches its private and operator spellings."""
    name = name.split(".")[0].lstrip("_")
    return name.removeprefix("special_").removeprefix("native_")


class _RuleMode(TorchFunctionMode):
    """Sees every torch function and tensor method called while it is active."""

    def __init__(self, rules: Sequence[Forbidden], name: str) -> None:
        super().__init__()
        self.rules = [rule for rule in rules if rule.torch_names]
        self.name = name
        self.violation: ForbiddenCallError | None = None  # kept even if the learner's code swallows it

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        kwargs = kwargs or {}
        called = getattr(func, "__name__", "")
        names = {called, canonical_name(called)}
        for rule in self.rules:
            if names & set(rule.torch_names) and (rule.predicate is None or rule.predicate(args, kwargs)):
                self.violation = self.violation or _violation(rule, self.name)
                raise self.violation
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid(rules: Sequence[Forbidden], name: str) -> Iterator[None]:
    """While active, a call that breaks one of ``rules`` raises :class:`ForbiddenCallError`.

    Torch calls are watched by a :class:`~torch.overrides.TorchFunctionMode`, Python functions by
    a profile hook (``sys.setprofile``) that compares code objects; both are removed on exit,
    whatever happens, and the previous profile hook is restored.
    A violation is reported even when the learner's code catches the error it raised (a broad
    ``try``/``except``): it is raised again when the block ends.
    """
    codes = {_code_of(function): rule for rule in rules for function in rule.python_functions}
    previous_profile = sys.getprofile()
    seen: list[ForbiddenCallError] = []

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in codes:
            sys.setprofile(previous_profile)  # report once, and let the error unwind normally
            seen.append(_violation(codes[frame.f_code], name))
            raise seen[-1]

    mode = _RuleMode(rules, name)
    with mode:
        if codes:
            sys.setprofile(profile)
        try:
            yield
        finally:
            if codes:
                sys.setprofile(previous_profile)
    if mode.violation is not None or seen:
        raise mode.violation or seen[0]


def expect_value_error(action: Callable[[], Any], rules: Sequence[Forbidden], name: str, *, who: str,
                       raise_what: str, accepted: str) -> ValueError:
    """Run ``action`` (the learner's code on a bad input) and return the ValueError it must raise.

    Any other exception, or none, is an :class:`AssertionError` for the learner: ``who`` starts
    the message ("`mix_batches` with ratio 1.5"), ``raise_what`` says what to raise instead, and
    ``accepted`` is the whole message when the bad input went through.
    """
    try:
        with forbid(rules, name):
            action()
    except ValueError as error:
        return error
    except AssertionError:
        raise
    except Exception as error:  # the learner's code may raise anything
        raise AssertionError(f"{who} raised {type(error).__name__}: {error}. {raise_what}") from None
    raise AssertionError(accepted)


def _holds_integers(index: Any) -> bool:
    """True for an index that picks rows by number: an int, an integer tensor, or a list of ints."""
    if isinstance(index, bool):
        return False
    if isinstance(index, int):
        return True
    if isinstance(index, torch.Tensor):
        return not index.dtype.is_floating_point and index.dtype != torch.bool
    if isinstance(index, (list, tuple)):
        return any(_holds_integers(item) for item in index)
    return False


def row_lookup_of(table: torch.Tensor) -> Callable[[tuple[Any, ...], dict[str, Any]], bool]:
    """A :class:`Forbidden` predicate for ``__getitem__``: indexing ``table`` (or a copy of its shape)
    by row numbers — ``table[ids]``, ``table[3]``, ``table[[1, 2]]`` — is a lookup; slices are not."""

    def is_lookup(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if len(args) < 2 or not isinstance(args[0], torch.Tensor):
            return False
        indexed, index = args[0], args[1]
        same = indexed.shape == table.shape or (
            indexed.device.type != "meta" and indexed.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()
        )
        return same and _holds_integers(index)

    return is_lookup


# --------------------------------------------------------------------------- calling the learner's code


def call(
    candidate: Callable[..., Any],
    name: str,
    *args: Any,
    hint: str = "",
    forbidden: Sequence[Forbidden] = (),
    **kwargs: Any,
) -> Any:
    """Call the learner's function: a stub not written yet, or a crash, becomes a clear failure.

    ``forbidden`` holds the exercise's rules (:class:`Forbidden`): a call that breaks one fails
    with a message that names what was called and why the exercise asks for it by hand.
    """
    try:
        with forbid(forbidden, name):
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


def first_mistake(
    actual: Answer, mistakes: Iterable[tuple[str, Output]], same: Callable[[Answer, Output], bool]
) -> str | None:
    """The message of the first classic mistake whose output ``actual`` reproduces, if any.

    What "reproduces" means depends on what the exercise returns (tensors close within a
    tolerance, equal lists of ids, floats within a relative tolerance, a pair of tensors), so the
    check passes the comparison as ``same(actual, output)``. ``mistakes`` may be a generator: the
    outputs after the first match are never computed.
    """
    return next((message for message, output in mistakes if same(actual, output)), None)


def matching_mistake(actual: torch.Tensor, mistakes: Mistakes, *, atol: float, rtol: float) -> str | None:
    """:func:`first_mistake` for tensors: the same shape and close within ``atol`` / ``rtol``."""
    return first_mistake(actual, mistakes, lambda answer, output: output.shape == answer.shape and torch.allclose(
        answer.double(), output.double(), atol=atol, rtol=rtol, equal_nan=True))


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
