"""Checks for chapter 5's exercises: clipping, a warmup-stable-decay schedule, the AdamW step over
parameter groups, early stopping, and the experiment that finds where training breaks.

Each check runs the learner's function on ordinary and edge cases and compares it with a reference:
PyTorch's own ``clip_grad_norm_`` and ``AdamW`` for the two optimiser pieces, and the contracts of
the exercises (written out below) for the schedule, the stopping rule and the divergence rule. When
an answer is wrong, the check also computes what the classic mistakes give (clipping every time, one
norm per tensor, L2 instead of decoupled decay, the decay after the update, one step count for the
whole optimizer, patience counted from the last loss, a NaN that compares False, …) over all its
cases, and names the one the learner's answers reproduce everywhere. All randomness comes from local
generators; the experiment's runs are seeded and cached (:func:`divergence_probe`).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

import lal.train
from lal.checks.common import Forbidden, call, expect_tensor, first_mistake, passed

# --------------------------------------------------------------------------- Exercise 5.1: clip_grad_norm

_CLIP_RULE = Forbidden(
    what="PyTorch's gradient clipping (torch.nn.utils.clip_grad_norm_ and its helpers)",
    why="the exercise asks you to compute the global norm and the scale yourself",
    torch_names=("clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_"),
    python_functions=tuple(
        inspect.unwrap(getattr(torch.nn.utils, name))
        for name in ("clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_")
        if hasattr(torch.nn.utils, name)
    ),
)

_CLIP_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_: max_norm / (total_norm + 1e-6)

Grads = list[torch.Tensor | None]


def _torch_clip(grads: Grads, max_norm: float, norm_type: float) -> tuple[Grads, float]:
    """The reference: PyTorch's clip_grad_norm_ on parameters holding copies of ``grads`` (None: no gradient)."""
    params = [torch.zeros_like(g, requires_grad=True) if g is not None else torch.zeros(1, requires_grad=True)
              for g in grads]
    for param, grad in zip(params, grads):
        param.grad = None if grad is None else grad.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    return [p.grad for p in params], float(total)


def _tensor_norm(grad: torch.Tensor, norm_type: float) -> float:
    return float(torch.linalg.vector_norm(grad.double(), norm_type))


def _global_norm(grads: Grads, norm_type: float = 2.0) -> float:
    norms = [_tensor_norm(g, norm_type) for g in grads if g is not None]
    if not norms:
        return 0.0
    if math.isinf(norm_type):
        return max(norms)
    return sum(n**norm_type for n in norms) ** (1 / norm_type)


def _scaled(grads: Grads, factor: float) -> Grads:
    return [None if g is None else g * factor for g in grads]


def _clip_mistakes(grads: Grads, max_norm: float, norm_type: float) -> list[tuple[str, Grads]]:
    """(message, the clipped gradients that mistake gives) for one case, in the order they are named."""
    total = _global_norm(grads, norm_type)
    present = [g for g in grads if g is not None]
    return [
        (
            "You compared total_norm with max_norm (`if total_norm > max_norm`), or left out the 1e-6: PyTorch "
            "scales whenever the factor max_norm / (total_norm + 1e-6) is below 1, and exactly at the threshold "
            "(total_norm == max_norm) that factor is 1 / (1 + 1e-6 / max_norm), just below 1. Compute the factor "
            "first and compare it with 1.",
            _scaled(grads, max_norm / total) if total > max_norm else _scaled(grads, 1.0),
        ),
        (
            "You scaled the gradients although their norm was below max_norm (you clipped every time). "
            "Scale only when max_norm / (total_norm + 1e-6) is below 1; otherwise return them unchanged: "
            "clipping is a safety rail for the rare huge step, not a rescaling of every step.",
            _scaled(grads, max_norm / (total + _CLIP_EPS)),
        ),
        (
            "You clipped each tensor by its own norm. The norm is global: the norm of ALL entries of ALL "
            "tensors together, and one scale factor for all of them, so the update keeps its direction.",
            [None if g is None else g * min(1.0, max_norm / (_tensor_norm(g, norm_type) + _CLIP_EPS)) for g in grads],
        ),
        (
            "You added the tensors' norms instead of their squares: the global norm is "
            "sqrt(sum of every squared entry) = sqrt(norm_1² + norm_2² + ...), not norm_1 + norm_2 + ....",
            _scaled(grads, min(1.0, max_norm / (sum(_tensor_norm(g, norm_type) for g in present) + _CLIP_EPS))),
        ),
        (
            "You scaled by total_norm / max_norm: the factor is max_norm / (total_norm + 1e-6), which "
            "shrinks the gradients to norm max_norm.",
            _scaled(grads, total / max_norm) if total > max_norm else _scaled(grads, 1.0),
        ),
    ]


def _same_tensors(actual: Sequence[Any], expected: Grads, atol: float, rtol: float) -> bool:
    return all(
        (a is None and e is None)
        or (isinstance(a, torch.Tensor) and e is not None and a.shape == e.shape and bool(torch.isfinite(a).all())
            and torch.allclose(a.double(), e.double(), atol=atol, rtol=rtol))
        for a, e in zip(actual, expected)
    )


def _clip_cases() -> list[tuple[str, Grads, float, float]]:
    """(what, gradients, max_norm, norm_type): the chapter's L2 cases, then what it did not show."""
    generator = torch.Generator().manual_seed(51)
    inf = math.inf
    return [
        ("three tensors of different shapes whose global norm is above max_norm",
         [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator),
          2 * torch.randn(2, 2, 2, generator=generator)], 1.0, 2.0),
        ("gradients whose global norm (≈ 5) is below max_norm = 7.5: nothing to clip",
         [torch.randn(6, 2, generator=generator), torch.randn(3, generator=generator)], 7.5, 2.0),
        ("one tensor has a small norm and the other a large one",
         [0.01 * torch.randn(10, generator=generator), 20 * torch.randn(3, 3, generator=generator)], 2.0, 2.0),
        ("a single float64 tensor [3, 4] (norm exactly 5) with max_norm = 5: the factor 5 / (5 + 1e-6) is "
         "just below 1, so (as in PyTorch) it scales by it", [torch.tensor([3.0, 4.0], dtype=torch.float64)], 5.0, 2.0),
        ("each tensor alone is below max_norm = 1.5, all of them together are not",
         [torch.full((2, 2), 0.5), torch.full((3,), 0.5), torch.full((1, 2), 0.5)], 1.5, 2.0),
        ("all-zero gradients: the norm is 0 and nothing changes",
         [torch.zeros(3, 2), torch.zeros(4)], 1.0, 2.0),
        ("a parameter without a gradient (None, as PyTorch leaves an unused weight) between two that have one",
         [torch.randn(3, 3, generator=generator), None, 3 * torch.randn(4, generator=generator)], 1.0, 2.0),
        ("norm_type = 1: the sum of the absolute values of every entry",
         [torch.randn(5, generator=generator), -torch.rand(2, 3, generator=generator)], 2.0, 1.0),
        ("norm_type = inf: the largest absolute entry, here a negative one (-6)",
         [torch.tensor([1.0, -6.0, 2.0]), torch.tensor([[0.5, 3.0]])], 3.0, inf),
        ("norm_type = 3 with negative entries: (sum of |g|³)^(1/3)",
         [torch.tensor([-2.0, 1.0, -1.0]), torch.tensor([1.5, -0.5])], 1.0, 3.0),
        ("norm_type = inf below max_norm: nothing to clip",
         [torch.tensor([0.2, -0.4]), torch.tensor([0.1])], 1.0, inf),
        ("no parameter has a gradient: the norm is 0 and the result is [None, None]", [None, None], 1.0, 2.0),
    ]


def _norm_reason(total_norm: float, expected: float, grads: Grads, clipped: Sequence[Any], max_norm: float,
                 norm_type: float) -> str:
    """Why a returned total_norm is wrong: the classic slips, recognised by their values."""
    close = lambda a, b: math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)  # noqa: E731
    present = [g for g in grads if g is not None]
    clipped_present = [c for c in clipped if isinstance(c, torch.Tensor)]
    if expected > max_norm and clipped_present and close(total_norm, _global_norm(clipped_present, norm_type)):
        return ("It is the norm AFTER clipping. Return the norm measured before scaling: it is what "
                "tells you how often (and how hard) clipping fired.")
    if norm_type == 2.0 and close(total_norm, expected**2):
        return "It is the squared norm: take the square root of the sum of squares."
    if present and close(total_norm, sum(_tensor_norm(g, norm_type) for g in present)) and not math.isinf(norm_type):
        return ("You added the tensors' norms instead of their squares: the global norm is "
                "sqrt(norm_1² + norm_2² + ...), the norm of all entries as one long vector.")
    if present and not math.isinf(norm_type) and close(total_norm, _global_norm(present, 2.0)):
        return (f"It is the L2 norm, but norm_type = {norm_type:g}: the p-norm is (sum of |g|^p)^(1/p) over all "
                "entries of all tensors.")
    if present and math.isinf(norm_type) and close(total_norm, max(float(g.max()) for g in present)):
        return ("It is the largest entry, not the largest ABSOLUTE entry: a gradient of -6 is as large a step as "
                "one of +6. Take max(|g|).")
    if present and not math.isinf(norm_type) and close(
            total_norm, sum(float((g.double().abs() ** norm_type).sum()) for g in present)):
        return f"It is the sum of |g|^p without the root: take its power 1/p (here 1/{norm_type:g})."
    if present and norm_type == 3.0 and close(total_norm, abs(sum(float((g.double() ** 3).sum()) for g in present))
                                              ** (1 / 3)):
        return "You cubed the entries without taking their absolute values: for odd p the p-norm needs |g|^p."
    return ("total_norm is the p-norm of all entries of all tensors together, before clipping (parameters "
            "without a gradient left out).")


def _structure(result: Any, grads: Grads, before: Grads, what: str) -> tuple[list[Any], float]:
    """The learner's (clipped, total_norm), after the checks on its form: a tuple, new tensors, None kept."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(
            f"`clip_grad_norm` should return a tuple (clipped, total_norm), got {type(result).__name__}."
        )
    clipped, total_norm = result
    if any(b is not None and not torch.equal(b, g) for b, g in zip(before, grads)):
        raise AssertionError(
            "`clip_grad_norm` changed the input gradients in place (`g.mul_(...)`, `g *= ...`). The "
            "contract asks for new tensors and inputs unchanged: build `g * scale`."
        )
    if not isinstance(clipped, (list, tuple)) or len(clipped) != len(grads):
        raise AssertionError(
            f"`clip_grad_norm` should return a list of {len(grads)} entries (one per gradient) as `clipped`, "
            f"got {type(clipped).__name__}{'' if not hasattr(clipped, '__len__') else f' of length {len(clipped)}'}."
        )
    for index, (out, grad) in enumerate(zip(clipped, grads)):
        if grad is None:
            if out is not None:
                raise AssertionError(f"`clip_grad_norm` returned a tensor for clipped[{index}], whose gradient was "
                                     f"None ({what}): a parameter without a gradient stays None.")
            continue
        expect_tensor(out, f"clip_grad_norm (clipped[{index}])", tuple(grad.shape))
        if out.dtype != grad.dtype:
            raise AssertionError(f"`clip_grad_norm` returned {out.dtype} for a {grad.dtype} gradient: keep its dtype.")
        if out is grad or (out.numel() and out.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr()):
            raise AssertionError(
                f"`clip_grad_norm` returned the input tensor itself as clipped[{index}] ({what}). The contract asks "
                "for new tensors: when nothing is clipped return `g.clone()`, so that whoever changes the result "
                "(an optimizer, a second clip) never changes the gradients it came from."
            )
    if isinstance(total_norm, torch.Tensor) and total_norm.numel() == 1:
        total_norm = total_norm.item()
    if not isinstance(total_norm, numbers.Real) or isinstance(total_norm, bool):
        raise AssertionError(f"`total_norm` should be a float, got {type(total_norm).__name__}.")
    return list(clipped), float(total_norm)


def check_clip_grad_norm(candidate: Callable[..., Any]) -> None:
    """Exercise 5.1: ``clip_grad_norm(grads, max_norm, norm_type=2.0) -> (clipped, total_norm)``, as PyTorch clips.

    The norm of every case is checked as it comes; the clipped tensors are judged over all cases at
    once, so that a mistake is named only when the answer reproduces it everywhere (comparing
    ``total_norm > max_norm`` and inverting the factor both give a copy at the threshold).
    """
    cases = _clip_cases()
    answers: list[list[Any]] = []
    for what, grads, max_norm, norm_type in cases:
        before = [None if g is None else g.clone() for g in grads]
        result = call(candidate, "clip_grad_norm", list(grads), max_norm, norm_type, forbidden=[_CLIP_RULE],
                      hint=f"The case: {what}.")
        clipped, total_norm = _structure(result, grads, before, what)
        _, expected_norm = _torch_clip(grads, max_norm, norm_type)
        if not math.isclose(total_norm, expected_norm, rel_tol=1e-5, abs_tol=1e-6):
            reason = _norm_reason(total_norm, expected_norm, grads, clipped, max_norm, norm_type)
            raise AssertionError(
                f"`clip_grad_norm` returned total_norm = {total_norm:.6g}, expected {expected_norm:.6g} "
                f"(the case: {what}). {reason}"
            )
        answers.append(clipped)
    tolerance = lambda grads: dict(atol=1e-7, rtol=1e-9 if grads[0] is not None and grads[0].dtype == torch.float64  # noqa: E731
                                   else 1e-5)
    expected = [_torch_clip(grads, max_norm, norm_type)[0] for _, grads, max_norm, norm_type in cases]
    wrong = [i for i, (answer, reference) in enumerate(zip(answers, expected))
             if not _same_tensors(answer, reference, **tolerance(cases[i][1]))]
    if not wrong:
        passed("clip_grad_norm", len(cases))
        return
    what, grads, max_norm, norm_type = cases[wrong[0]]
    all_mistakes = [_clip_mistakes(g, m, p) for _, g, m, p in cases]
    outcomes = ((message, [mistakes[index][1] for mistakes in all_mistakes])
                for index, (message, _) in enumerate(all_mistakes[0]))  # one mistake's answers on every case

    def same(answer: list[list[Any]], mistaken: list[Grads]) -> bool:
        differs = any(not _same_tensors(m, e, **tolerance(c[1])) for m, e, c in zip(mistaken, expected, cases))
        return differs and all(_same_tensors(a, m, **tolerance(c[1])) for a, m, c in zip(answer, mistaken, cases))

    mistake = first_mistake(answers, outcomes, same)
    if mistake is not None:
        raise AssertionError(f"`clip_grad_norm` is wrong on {what}. {mistake}")
    raise AssertionError(
        f"`clip_grad_norm` is wrong on {what}: the clipped tensors differ from torch.nn.utils.clip_grad_norm_'s. "
        "Scale every tensor by the same factor max_norm / (total_norm + 1e-6) when it is below 1, and leave "
        "a None gradient None."
    )


# --------------------------------------------------------------------------- Exercise 5.2: wsd_lr

_LR_AT_RULE = Forbidden(
    what="lal.train.lr_at",
    why="that is chapter 5's warmup + cosine schedule; this exercise builds a different one by hand",
    python_functions=(lal.train.lr_at,),
)


def _wsd_reference(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
                   total_steps: int) -> float:
    """Warmup-stable-decay, exactly as the exercise's contract says."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - decay_start) / decay_steps


def _wsd_mistakes(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
                  total_steps: int) -> list[tuple[str, float]]:
    decay_start = total_steps - decay_steps
    reference = _wsd_reference(step, max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps,
                               decay_steps=decay_steps, total_steps=total_steps)
    in_decay = decay_start <= step < total_steps
    progress = (step - decay_start) / decay_steps if decay_steps else 1.0
    return [
        ("Warmup is off by one: step 0 is the first update and should already get max_lr / warmup_steps, and "
         "step warmup_steps - 1 the full max_lr, so use (step + 1) / warmup_steps, not step / warmup_steps.",
         max_lr * step / warmup_steps if step < warmup_steps else reference),
        ("The decay goes to 0 instead of min_lr: interpolate from max_lr down to min_lr, "
         "max_lr + (min_lr - max_lr) * progress.",
         max_lr * (1 - progress) if in_decay else (0.0 if step >= total_steps else reference)),
        ("The decay does not reach min_lr at total_steps: over decay_steps steps the progress must go "
         "from 0 (at total_steps - decay_steps) to 1 (at total_steps); dividing by decay_steps + 1 or "
         "counting from the wrong step stops short.",
         max_lr + (min_lr - max_lr) * (step - decay_start) / (decay_steps + 1) if in_decay else reference),
        ("The decay follows a cosine (the chapter's shape): WSD's decay is a straight line from max_lr at "
         "total_steps - decay_steps to min_lr at total_steps, max_lr + (min_lr - max_lr) * progress, so halfway "
         "through the decay the rate is exactly halfway between the two.",
         min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr) if in_decay else reference),
        ("After total_steps the rate keeps falling (below min_lr, even negative): clamp it, return min_lr "
         "from total_steps on.",
         max_lr + (min_lr - max_lr) * (step - decay_start) / decay_steps if step >= total_steps else reference),
    ]


_WSD_CONFIGS = [
    dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=20, total_steps=100),
    dict(max_lr=3e-4, min_lr=0.0, warmup_steps=7, decay_steps=13, total_steps=50),
    dict(max_lr=6e-3, min_lr=6e-4, warmup_steps=1, decay_steps=37, total_steps=40),  # almost no stable phase
    dict(max_lr=2e-2, min_lr=1e-3, warmup_steps=25, decay_steps=1, total_steps=60),  # a one-step decay
    dict(max_lr=5e-3, min_lr=5e-4, warmup_steps=0, decay_steps=15, total_steps=45),  # no warmup
]


def _phase(step: int, cfg: dict[str, Any]) -> str:
    if step < cfg["warmup_steps"]:
        return "warmup"
    if step < cfg["total_steps"] - cfg["decay_steps"]:
        return "the stable phase"
    if step < cfg["total_steps"]:
        return "the decay"
    return "after total_steps"


def check_wsd_lr(candidate: Callable[..., float]) -> None:
    """Exercise 5.2: ``wsd_lr(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps)``."""
    for cfg in _WSD_CONFIGS:
        steps = range(cfg["total_steps"] + 6)
        got: list[float] = []
        for step in steps:
            value = call(candidate, "wsd_lr", step, forbidden=[_LR_AT_RULE], hint=f"The settings: {cfg}.", **cfg)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise AssertionError(f"`wsd_lr` should return a float, got {type(value).__name__} at step {step}.")
            got.append(float(value))
        expected = [_wsd_reference(step, **cfg) for step in steps]
        wrong = [s for s in steps if not math.isclose(got[s], expected[s], rel_tol=1e-9, abs_tol=1e-12)]
        if not wrong:
            continue
        schedules = ((message, [_wsd_mistakes(step, **cfg)[index][1] for step in steps])
                     for index, (message, _) in enumerate(_wsd_mistakes(0, **cfg)))
        mistake = first_mistake(got, schedules, lambda answer, mistaken: mistaken != expected and all(
            math.isclose(g, m, rel_tol=1e-9, abs_tol=1e-12) for g, m in zip(answer, mistaken)))
        if mistake is not None:
            raise AssertionError(f"`wsd_lr` is wrong with {cfg}. {mistake}")
        step = wrong[0]
        raise AssertionError(
            f"`wsd_lr` is wrong with {cfg}: at step {step} ({_phase(step, cfg)}) it returned {got[step]:.6g}, "
            f"expected {expected[step]:.6g}. Steps count from 0; warmup covers steps 0 .. warmup_steps - 1, the "
            "decay starts at total_steps - decay_steps and reaches min_lr at total_steps."
        )
    passed("wsd_lr", len(_WSD_CONFIGS))


# --------------------------------------------------------------------------- Exercise 5.3: adamw_update

_ADAMW_RULE = Forbidden(
    what="PyTorch's Adam/AdamW (torch.optim.AdamW, torch.optim.Adam or their functional forms)",
    why="the exercise asks you to write the optimizer's step yourself",
    torch_names=("_fused_adamw_", "_fused_adam_"),
    python_functions=(
        torch.optim.AdamW,
        torch.optim.Adam,
        inspect.unwrap(torch.optim._functional.adamw),
        inspect.unwrap(torch.optim._functional.adam),
    ),
)

#: The run every answer is checked on: three groups (decayed, not decayed, decayed with other betas),
#: a schedule that changes lr before every step, and gradients that are sometimes missing.
_ADAMW_STEPS = 6
_MISSING_GRADS = {("embedding", 1), ("embedding", 2), ("bias", 5)}  # (parameter, step): no gradient then


def _adamw_problem() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """Initial parameters, the gradient of each step (None: missing), and the groups' settings."""
    generator = torch.Generator().manual_seed(53)
    shapes = {"matrix": (4, 3), "embedding": (6, 2), "bias": (3,), "gain": (3,), "head": (2, 5)}
    initial = {name: torch.randn(*shape, generator=generator) for name, shape in shapes.items()}
    grads = [{name: None if (name, step) in _MISSING_GRADS else torch.randn(*shape, generator=generator) * step
              for name, shape in shapes.items()} for step in range(1, _ADAMW_STEPS + 1)]
    settings = [
        dict(names=["matrix", "embedding"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1),
        dict(names=["bias", "gain"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0),
        dict(names=["head"], betas=(0.8, 0.99), eps=1e-3, weight_decay=0.3),
    ]
    return initial, grads, settings


def _lr_of(step: int, group: int) -> float:
    """The schedule the check writes into every group before each step (warmup, then a different lr per group)."""
    return (0.05 if group == 0 else 0.02) * min(1.0, step / 3)


def _adamw_reference_run() -> list[dict[str, torch.Tensor]]:
    """The parameters after each step of torch.optim.AdamW on the problem."""
    initial, grads, settings = _adamw_problem()
    params = {name: value.clone().requires_grad_(True) for name, value in initial.items()}
    optimizer = torch.optim.AdamW(
        [{"params": [params[n] for n in s["names"]], "betas": s["betas"], "eps": s["eps"],
          "weight_decay": s["weight_decay"]} for s in settings], lr=0.0, foreach=False)
    path = []
    for step, step_grads in enumerate(grads, start=1):
        for index, group in enumerate(optimizer.param_groups):
            group["lr"] = _lr_of(step, index)
        for name, param in params.items():
            param.grad = None if step_grads[name] is None else step_grads[name].clone()
        optimizer.step()
        path.append({name: param.detach().clone() for name, param in params.items()})
    return path


def _adamw_mistaken_run(mistake: str) -> list[dict[str, torch.Tensor]]:
    """The parameters after each step when the update makes one classic mistake (float64 arithmetic)."""
    initial, grads, settings = _adamw_problem()
    params = {name: value.double() for name, value in initial.items()}
    state: dict[str, dict[str, Any]] = {}
    global_step = 0
    path = []
    for step, step_grads in enumerate(grads, start=1):
        global_step += 1
        for index, group in enumerate(settings):
            lr = _lr_of(step, index)
            (beta1, beta2), eps = group["betas"], group["eps"]
            weight_decay = settings[0]["weight_decay"] if mistake == "one weight_decay" else group["weight_decay"]
            for name in group["names"]:
                grad = step_grads[name]
                if grad is None:
                    if mistake != "missing as zero":
                        continue
                    grad = torch.zeros_like(params[name])
                p, g = params[name], grad.double()
                if mistake == "l2":
                    g = g + weight_decay * p
                s = state.setdefault(name, {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                s["step"] += 1
                t = global_step if mistake == "global step" else s["step"]
                s["m"] = beta1 * s["m"] + (1 - beta1) * g
                s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
                m_hat, v_hat = ((s["m"], s["v"]) if mistake == "no bias correction"
                                else (s["m"] / (1 - beta1**t), s["v"] / (1 - beta2**t)))
                shrink = 1 - (weight_decay if mistake == "decay without lr" else lr * weight_decay)
                if mistake not in ("l2", "decay after", "no decay"):
                    p = p * shrink
                denominator = torch.sqrt(v_hat + eps) if mistake == "eps inside" else torch.sqrt(v_hat) + eps
                p = p - lr * m_hat / denominator
                if mistake == "decay after":
                    p = p * shrink
                params[name] = p
        path.append({name: value.clone() for name, value in params.items()})
    return path


_ADAMW_MISTAKES: list[tuple[str, str]] = [
    ("decay after",
     "You applied the weight decay AFTER the Adam update. AdamW shrinks the parameter first, "
     "param *= 1 - lr·weight_decay, and then subtracts lr·m̂/(√v̂ + eps) (PyTorch's order): decaying afterwards "
     "also shrinks the step just taken, a difference of lr²·weight_decay·update per step, small but not AdamW."),
    ("l2",
     "You added weight_decay · param to the gradient (L2 regularisation, Adam's weight_decay) instead of "
     "decoupling it: AdamW shrinks the parameter directly, param *= 1 - lr · weight_decay, and keeps the "
     "decay out of the moments, so Adam's normalisation does not rescale it (chapter 5, section 4)."),
    ("global step",
     "You counted one step for the whole optimizer. The step count of the bias correction belongs to each "
     "parameter: a parameter that gets its first gradient at the optimizer's third step (the embedding here) "
     "is at ITS step 1, with moments that start at zero; keep `step` in that parameter's state."),
    ("missing as zero",
     "A parameter whose .grad is None was updated as if its gradient were zero (decayed, its moments and step "
     "count moved). PyTorch skips such a parameter entirely: no decay, no state change; check `p.grad is None`."),
    ("one weight_decay",
     "You used one weight_decay for every group. Each group carries its own (0.1 for the matrices, 0.0 for "
     "biases and gains, 0.3 for the last group): read group['weight_decay'] inside the loop over groups."),
    ("no bias correction",
     "The bias correction is missing: the moments start at 0, so divide them by 1 - beta1**step and "
     "1 - beta2**step (at step 1 they are only (1 - beta) times the gradient)."),
    ("eps inside", "eps is inside the square root: the denominator is sqrt(v_hat) + eps."),
    ("decay without lr", "The weight decay is missing the learning rate: the shrink is param *= 1 - lr · weight_decay."),
    ("no decay",
     "No weight decay was applied: with weight_decay > 0 AdamW shrinks the parameter by 1 - lr · weight_decay "
     "every step, even where the gradient is zero."),
]


def _same_params(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(actual[n]).all() and torch.allclose(actual[n].double(), expected[n].double(),
                                                                   atol=1e-6, rtol=1e-5) for n in expected)


def check_adamw_update(candidate: Callable[..., Any]) -> None:
    """Exercise 5.3: ``adamw_update(param_groups, state)``, one ``optimizer.step()`` of AdamW over parameter groups."""
    initial, grads, settings = _adamw_problem()
    params = {name: value.clone().requires_grad_(True) for name, value in initial.items()}
    param_groups = [{"params": [params[n] for n in s["names"]], "lr": 0.0, "betas": s["betas"], "eps": s["eps"],
                     "weight_decay": s["weight_decay"]} for s in settings]
    state: dict[Any, Any] = {}
    reference = _adamw_reference_run()
    path = []
    for step, step_grads in enumerate(grads, start=1):
        for index, group in enumerate(param_groups):
            group["lr"] = _lr_of(step, index)  # as the chapter's loop does before every step
        for name, param in params.items():
            param.grad = None if step_grads[name] is None else step_grads[name].clone()
        given = {name: None if param.grad is None else param.grad.clone() for name, param in params.items()}
        call(candidate, "adamw_update", param_groups, state, forbidden=[_ADAMW_RULE],
             hint="Update the parameters in place inside `with torch.no_grad():` (they require grad), and skip "
                  "a parameter whose .grad is None.")
        if any(param.grad is None and given[name] is not None or param.grad is not None and
               not torch.equal(param.grad, given[name]) for name, param in params.items()):
            raise AssertionError(
                "`adamw_update` changed a gradient (p.grad). Only the parameters and your state change; adding "
                "weight_decay · param to the gradient would be L2 regularisation, not AdamW's decoupled decay."
            )
        if step == 1 and all(torch.equal(params[n].detach(), initial[n]) for n in params):
            raise AssertionError(
                "`adamw_update` did not change any parameter. Update them in place (p.mul_(...), p.add_(...), "
                "p.addcdiv_(...)) under torch.no_grad(): `p = p - ...` only rebinds a local name."
            )
        path.append({name: param.detach().clone() for name, param in params.items()})
    if all(_same_params(a, e) for a, e in zip(path, reference)):
        passed("adamw_update", _ADAMW_STEPS)
        return
    runs = ((message, _adamw_mistaken_run(mistake)) for mistake, message in _ADAMW_MISTAKES)
    message = first_mistake(path, runs, lambda answer, mistaken: all(_same_params(a, m)
                                                                     for a, m in zip(answer, mistaken)))
    if message is not None:
        raise AssertionError(f"`adamw_update` differs from torch.optim.AdamW. {message}")
    step = next(i for i, (a, e) in enumerate(zip(path, reference), start=1) if not _same_params(a, e))
    name = next(n for n in reference[step - 1] if not _same_params({n: path[step - 1][n]}, {n: reference[step - 1][n]}))
    raise AssertionError(
        f"`adamw_update` differs from torch.optim.AdamW from step {step} on (first in the parameter `{name}`, "
        f"{'a group with weight decay' if name in settings[0]['names'] + settings[2]['names'] else 'a group without'}). "
        "Per group: lr, betas, eps and weight_decay from the group; per parameter with a gradient: its own step "
        "count and moments, p *= 1 - lr·wd, then p -= lr · m̂ / (√v̂ + eps)."
    )


# --------------------------------------------------------------------------- Exercise 5.4: should_stop


def _stop_reference(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """The contract: count the losses since the last improvement (a drop of more than min_delta below it)."""
    reference, since = math.inf, 0
    for loss in val_losses:
        if loss < reference - min_delta:
            reference, since = loss, 0
        else:
            since += 1
    return since >= patience


def _stop_from_last_loss(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    previous, since = math.inf, 0
    for loss in val_losses:
        since = 0 if loss < previous - min_delta else since + 1
        previous = loss
    return since >= patience


def _stop_moving_reference(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    reference, since = math.inf, 0
    for loss in val_losses:
        if loss < reference - min_delta:
            reference, since = loss, 0
        else:
            since += 1
            reference = min(reference, loss)
    return since >= patience


def _stop_off_by_one(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    reference, since = math.inf, 0
    for loss in val_losses:
        if loss < reference - min_delta:
            reference, since = loss, 0
        else:
            since += 1
    return since > patience


def _stop_ties_improve(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    reference, since = math.inf, 0
    for loss in val_losses:
        if loss <= reference - min_delta:
            reference, since = loss, 0
        else:
            since += 1
    return since >= patience


def _stop_ignores_min_delta(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    return _stop_reference(val_losses, patience, 0.0)


_STOP_MISTAKES: list[tuple[str, Callable[..., bool]]] = [
    ("You compared each loss with the previous one. Patience counts from the BEST loss (the last improvement): "
     "a loss that is lower than the one before it but still above the best is not progress.", _stop_from_last_loss),
    ("min_delta moved the reference: a drop smaller than min_delta is not an improvement, so it must not become "
     "the new reference either (otherwise a slow creep of tiny drops keeps lowering the bar and never counts).",
     _stop_moving_reference),
    ("Off by one: stop as soon as the last `patience` losses were all not improvements (count >= patience), "
     "not one evaluation later.", _stop_off_by_one),
    ("A loss equal to the reference counted as an improvement: an improvement must be strictly below it "
     "(loss < reference - min_delta).", _stop_ties_improve),
    ("min_delta is ignored: an improvement must be lower than the reference by more than min_delta.",
     _stop_ignores_min_delta),
]

_STOP_CASES: list[tuple[str, list[float], int, float]] = [
    ("no losses yet", [], 2, 0.0),
    ("one loss: the first loss is always an improvement", [2.5], 1, 0.0),
    ("a steady improvement", [3.0, 2.5, 2.2, 2.0, 1.9], 2, 0.0),
    ("the best loss followed by exactly `patience` worse ones", [3.0, 2.0, 2.1, 2.2], 2, 0.0),
    ("the best loss followed by one worse loss less than `patience`", [3.0, 2.0, 2.1, 2.2], 3, 0.0),
    ("losses that fall from one evaluation to the next but stay above the best",
     [3.0, 2.0, 2.5, 2.4, 2.3], 3, 0.0),
    ("a loss equal to the best is not an improvement", [2.0, 2.0, 2.0], 2, 0.0),
    ("a late improvement resets the count", [2.0, 2.1, 2.2, 1.9, 2.0], 2, 0.0),
    ("drops smaller than min_delta = 0.01 do not count", [2.0, 1.995, 1.992], 2, 0.01),
    ("a creep of small drops: the reference stays at 2.0, so only a loss below 1.99 improves",
     [2.0, 1.995, 1.991, 1.989], 3, 0.01),
    ("a creep of small drops that never gets 0.01 below 2.0", [2.0, 1.995, 1.993, 1.992, 1.991], 4, 0.01),
    ("patience longer than the history", [3.0, 3.1, 3.2], 5, 0.0),
]


def _random_stop_cases(n: int) -> list[tuple[str, list[float], int, float]]:
    generator = torch.Generator().manual_seed(54)
    cases = []
    for index in range(n):
        length = int(torch.randint(1, 25, (1,), generator=generator))
        steps = 0.02 * torch.randn(length, generator=generator) - 0.005
        losses = [round(v, 4) for v in (2.0 + steps.cumsum(0)).tolist()]
        patience = int(torch.randint(1, 6, (1,), generator=generator))
        min_delta = [0.0, 0.005, 0.02][index % 3]
        cases.append((f"random losses #{index}", losses, patience, min_delta))
    return cases


def check_should_stop(candidate: Callable[..., bool]) -> None:
    """Exercise 5.4: ``should_stop(val_losses, patience, min_delta=0.0)``, early stopping with patience."""
    cases = _STOP_CASES + _random_stop_cases(60)
    answers = []
    for what, losses, patience, min_delta in cases:
        given = list(losses)
        result = call(candidate, "should_stop", given, patience, min_delta, hint=f"The case: {what}.")
        if given != losses:
            raise AssertionError("`should_stop` changed the list of losses it was given: only read it.")
        if not isinstance(result, bool):
            raise AssertionError(
                f"`should_stop` should return True or False, got {type(result).__name__} ({result!r}) "
                f"for the case: {what}."
            )
        answers.append(result)
    expected = [_stop_reference(losses, patience, min_delta) for _, losses, patience, min_delta in cases]
    if answers == expected:
        passed("should_stop", len(cases))
        return
    first = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
    what, losses, patience, min_delta = cases[first]
    outcomes = ((message, [mistake(l, p, d) for _, l, p, d in cases]) for message, mistake in _STOP_MISTAKES)
    message = first_mistake(answers, outcomes, operator.eq)
    if message is not None:
        raise AssertionError(
            f"should_stop({losses}, patience={patience}, min_delta={min_delta}) returned {answers[first]}, "
            f"expected {expected[first]} ({what}). {message}"
        )
    raise AssertionError(
        f"should_stop({losses}, patience={patience}, min_delta={min_delta}) returned {answers[first]}, expected "
        f"{expected[first]} ({what}). A loss improves when it is below the reference (the loss of the last "
        "improvement) minus min_delta; stop once the last `patience` losses were all not improvements."
    )


# --------------------------------------------------------------------------- Exercise 5.5: an experiment

#: The learning rates exercise 5.5 sweeps on the probe below (a log grid, about ×3 apart).
DIVERGENCE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
_PROBE_STEPS = 60


@functools.lru_cache(maxsize=None)
def _probe_text() -> torch.Tensor:
    """The first 100,000 characters of TinyShakespeare's training split, as token ids."""
    import lal.data  # only the experiment needs the data

    return lal.data.prepare_text_data(dataset="tinyshakespeare", tokenizer_kind="char").train[:100_000]


@functools.lru_cache(maxsize=None)
def divergence_probe(lr: float, warmup_steps: int = 0, grad_clip: float | None = None) -> tuple[float, ...]:
    """The training losses of one short run at a constant peak ``lr``: exercise 5.5's tiny set-up.

    A 1-layer, 32-wide GPT (context 16) on 100,000 characters, 60 AdamW steps of 16 windows, no
    weight decay, and by default no warmup and no clipping, so nothing protects it from a rate that is
    too large. ``warmup_steps`` ramps the rate up linearly; ``grad_clip`` clips the global gradient
    norm. Seeded and cached: the same arguments give the same losses, computed once per process.
    """
    import lal.data
    from lal.device import seed_everything
    from lal.model import GPT, GPTConfig

    data = _probe_text()
    seed_everything(5)
    model = GPT(GPTConfig(vocab_size=int(data.max()) + 1, block_size=16, n_layer=1, n_head=2, n_embd=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(5)
    losses = []
    for step in range(_PROBE_STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
        x, y = lal.data.get_batch(data, 16, 16, generator=generator)  # (16, 16) each
        _, loss = model(x, y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break  # nothing to learn from a NaN: the run is over
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return tuple(losses)


def _diverged(losses: Sequence[float]) -> bool:
    """The exercise's rule: a loss that is not finite, or a last loss above the first."""
    return any(not math.isfinite(loss) for loss in losses) or losses[-1] > losses[0]


def _smallest_diverging(run: Callable[[float], Sequence[float]], lrs: Sequence[float]) -> float | None:
    diverging = [lr for lr in lrs if _diverged(run(lr))]
    return min(diverging) if diverging else None


def _fake_run(curves: dict[float, list[float]]) -> Callable[[float], list[float]]:
    def run(lr: float) -> list[float]:
        return list(curves[lr])

    return run


_FALLING, _RISING = [4.2, 3.1, 2.6, 2.4], [4.2, 3.9, 5.0, 6.5]
_DIVERGENCE_CASES: list[tuple[str, dict[float, list[float]], list[float]]] = [
    ("a sorted grid, diverging from 0.1 on",
     {1e-3: _FALLING, 1e-2: _FALLING, 0.1: _RISING, 1.0: _RISING}, [1e-3, 1e-2, 0.1, 1.0]),
    ("the same grid in another order", {1e-3: _FALLING, 1e-2: _FALLING, 0.1: _RISING, 1.0: _RISING},
     [1.0, 1e-2, 0.1, 1e-3]),
    ("a run whose loss turns NaN (0.03) below one whose last loss is above its first (0.3)",
     {3e-3: _FALLING, 3e-2: [4.2, 3.0, math.nan], 0.3: _RISING}, [3e-3, 3e-2, 0.3]),
    ("a run that reaches inf", {1e-2: _FALLING, 0.1: [4.2, 2.0, math.inf]}, [1e-2, 0.1]),
    ("a run that goes up and down again but ends below its first loss: not diverged",
     {1e-2: [4.2, 2.0, 3.0, 2.5], 0.1: [4.2, 4.4, 4.3, 4.5]}, [1e-2, 0.1]),
    ("a run that falls, then rises back above its first loss: diverged",
     {1e-3: _FALLING, 1e-2: [4.2, 2.0, 3.0, 4.3], 0.1: _RISING}, [1e-3, 1e-2, 0.1]),
    ("no run diverges: None", {1e-4: _FALLING, 1e-3: [4.2, 4.1, 4.0]}, [1e-4, 1e-3]),
    ("a stable run above a diverging one: the smallest diverging rate is still the answer",
     {1e-3: _FALLING, 3e-3: _RISING, 1e-2: _FALLING, 3e-2: _RISING}, [1e-3, 3e-3, 1e-2, 3e-2]),
]


def _answer_if(rule: Callable[[Sequence[float]], bool], order: str = "sorted", pick: str = "smallest diverging",
               ) -> Callable[[dict[float, list[float]], list[float]], float | None]:
    """The answer a classic mistake gives: another divergence rule, the given order, or the wrong rate picked."""

    def answer(curves: dict[float, list[float]], lrs: list[float]) -> float | None:
        ordered = sorted(lrs) if order == "sorted" else list(lrs)
        diverged = [rule(curves[lr]) for lr in ordered]
        stable = [lr for lr, d in zip(ordered, diverged) if not d]
        if pick == "first diverging":
            return next((lr for lr, d in zip(ordered, diverged) if d), None)
        if pick == "largest stable":
            return max(stable) if stable else None
        if pick == "after largest stable":
            above = [lr for lr in ordered if stable and lr > max(stable)]
            return min(above) if above else None
        if pick == "lowest final loss":
            finite = [lr for lr in lrs if math.isfinite(curves[lr][-1])]  # min() keeps the first of equals
            return min(finite, key=lambda lr: curves[lr][-1]) if finite else None
        diverging = [lr for lr, d in zip(ordered, diverged) if d]
        return min(diverging) if diverging else None

    return answer


_DIVERGENCE_MISTAKES = [
    ("A NaN loss was not counted as divergence: every comparison with NaN is False, so `last > first` misses it. "
     "Test `math.isfinite(loss)` for every loss first (an inf or a NaN means the run blew up).",
     _answer_if(lambda losses: losses[-1] > losses[0])),
    ("You took the first diverging rate in the order the list gave: `lrs` need not be sorted, so compare the "
     "rates (min of the diverging ones, or sort first).", _answer_if(_diverged, order="given", pick="first diverging")),
    ("You compared the last loss with the lowest one (or flagged any rise): a run that wobbles up a little "
     "after its minimum has not diverged. The rule is: last loss above the FIRST loss, or a loss not finite.",
     _answer_if(lambda losses: not all(map(math.isfinite, losses)) or losses[-1] > min(losses))),
    ("You returned the largest rate that does NOT diverge: the question is the smallest rate that does.",
     _answer_if(_diverged, pick="largest stable")),
    ("You returned the rate just above the largest stable one: a stable run at a higher rate does not make a "
     "lower diverging run stable. Return the smallest rate whose run diverges.",
     _answer_if(_diverged, pick="after largest stable")),
    ("You returned the rate with the lowest final loss, the best rate: the question is where training breaks.",
     _answer_if(_diverged, pick="lowest final loss")),
]


def check_smallest_diverging_lr(candidate: Callable[..., Any]) -> None:
    """Exercise 5.5: ``smallest_diverging_lr(run, lrs)``, judged on made-up runs, then on the real experiment.

    The made-up runs pin down the rule (NaN, inf, unsorted rates, wobbles); then the learner's function
    is run on :func:`divergence_probe` over :data:`DIVERGENCE_GRID`, and its answer is verified by the
    check's own loop over the same runs: the rate it names diverges and every smaller one of the grid
    does not.
    """
    answers = []
    for what, curves, lrs in _DIVERGENCE_CASES:
        answer = call(candidate, "smallest_diverging_lr", _fake_run(curves), list(lrs), hint=f"The case: {what}.")
        if answer is not None and (not isinstance(answer, numbers.Real) or isinstance(answer, bool)):
            raise AssertionError(f"`smallest_diverging_lr` should return a learning rate (a float from `lrs`) or "
                                 f"None, got {type(answer).__name__} ({answer!r}) for the case: {what}.")
        answers.append(answer)
    expected = [_smallest_diverging(_fake_run(curves), lrs) for _, curves, lrs in _DIVERGENCE_CASES]
    if answers != expected:
        first = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
        what = _DIVERGENCE_CASES[first][0]
        outcomes = ((message, [mistake(curves, lrs) for _, curves, lrs in _DIVERGENCE_CASES])
                    for message, mistake in _DIVERGENCE_MISTAKES)
        message = first_mistake(answers, outcomes, operator.eq)
        if message is not None:
            raise AssertionError(f"`smallest_diverging_lr` returned {answers[first]!r}, expected "
                                 f"{expected[first]!r} ({what}). {message}")
        raise AssertionError(
            f"`smallest_diverging_lr` returned {answers[first]!r}, expected {expected[first]!r} ({what}). A run "
            "diverges when one of its losses is not finite or its last loss is above its first; return the "
            "smallest such rate of `lrs`, or None."
        )
    claim = call(candidate, "smallest_diverging_lr", divergence_probe, list(DIVERGENCE_GRID),
                 hint="The case: the real runs of lal.checks.ch05.divergence_probe.")
    truth = _smallest_diverging(divergence_probe, DIVERGENCE_GRID)
    if claim != truth:
        raise AssertionError(f"On the real runs `smallest_diverging_lr` returned {claim!r}, but the check's own "
                             f"loop over the same runs finds {truth!r}.")
    below = [lr for lr in DIVERGENCE_GRID if truth is not None and lr < truth]
    assert truth is not None and _diverged(divergence_probe(truth)) and not any(_diverged(divergence_probe(lr))
                                                                                for lr in below)
    last = divergence_probe(truth)[-1]
    print(f"✓ smallest_diverging_lr is correct: it matches the rule on {len(_DIVERGENCE_CASES)} made-up sweeps, "
          f"and on the real one it names lr = {truth:g} (verified: that run ends at loss {last:.3g} from "
          f"{divergence_probe(truth)[0]:.3g}; the {len(below)} smaller rates of the grid do not diverge).")
