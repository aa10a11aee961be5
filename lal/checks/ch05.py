"""Checks for chapter 5's exercises: clipping, a warmup-stable-decay schedule, one AdamW step, early stopping.

Each check runs the learner's function on ordinary and edge cases and compares it with a reference:
PyTorch's own ``clip_grad_norm_`` and ``AdamW`` for the two optimiser pieces, and the contracts of
the exercises (written out below) for the schedule and the stopping rule. When an answer is wrong,
the check also computes what the classic mistakes give (clipping every time, one norm per tensor,
L2 instead of decoupled decay, no bias correction, patience counted from the last loss, …) and
names the one the learner's result matches. All randomness comes from local generators.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

import lal.train
from lal.checks.common import Forbidden, Mistakes, call, compare, expect_close, expect_tensor, first_mistake, passed

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


def _torch_clip(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], float]:
    """The reference: PyTorch's clip_grad_norm_ on parameters holding copies of ``grads``."""
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


def _scaled(grads: list[torch.Tensor], factor: float) -> list[torch.Tensor]:
    return [g * factor for g in grads]


def _global_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def _clip_mistakes(grads: list[torch.Tensor], max_norm: float) -> list[tuple[str, list[torch.Tensor]]]:
    total = _global_norm(grads)
    return [
        (
            "You scaled the gradients although their norm was below max_norm (you clipped every time). "
            "Scale only when max_norm / (total_norm + 1e-6) is below 1; otherwise return them unchanged: "
            "clipping is a safety rail for the rare huge step, not a rescaling of every step.",
            _scaled(grads, max_norm / (total + _CLIP_EPS)),
        ),
        (
            "You clipped each tensor by its own norm. The norm is global: the square root of the sum of "
            "the squares of ALL entries of ALL tensors, and one scale factor for all of them, so the "
            "update keeps its direction.",
            [g * min(1.0, max_norm / (float(g.double().norm()) + _CLIP_EPS)) for g in grads],
        ),
        (
            "You added the tensors' norms instead of their squares: the global norm is "
            "sqrt(sum of every squared entry) = sqrt(norm_1² + norm_2² + ...), not norm_1 + norm_2 + ....",
            _scaled(grads, min(1.0, max_norm / (sum(float(g.double().norm()) for g in grads) + _CLIP_EPS))),
        ),
        (
            "You scaled by total_norm / max_norm: the factor is max_norm / (total_norm + 1e-6), which "
            "shrinks the gradients to norm max_norm.",
            _scaled(grads, total / max_norm) if total > max_norm else [g.clone() for g in grads],
        ),
    ]


def _same_tensors(actual: list[torch.Tensor], expected: list[torch.Tensor], atol: float, rtol: float) -> bool:
    return all(
        a.shape == e.shape and torch.isfinite(a).all() and torch.allclose(a.double(), e.double(), atol=atol, rtol=rtol)
        for a, e in zip(actual, expected)
    )


def _clip_cases() -> list[tuple[str, list[torch.Tensor], float]]:
    generator = torch.Generator().manual_seed(51)
    return [
        ("three tensors of different shapes whose global norm is above max_norm",
         [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator),
          2 * torch.randn(2, 2, 2, generator=generator)], 1.0),
        ("gradients whose global norm (≈ 5) is below max_norm = 7.5: nothing to clip",
         [torch.randn(6, 2, generator=generator), torch.randn(3, generator=generator)], 7.5),
        ("one tensor has a small norm and the other a large one",
         [0.01 * torch.randn(10, generator=generator), 20 * torch.randn(3, 3, generator=generator)], 2.0),
        ("a single float64 tensor [3, 4] (norm exactly 5) with max_norm = 5: the factor 5 / (5 + 1e-6) is "
         "just below 1, so (as in PyTorch) it scales by it", [torch.tensor([3.0, 4.0], dtype=torch.float64)], 5.0),
        ("each tensor alone is below max_norm = 1.5, all of them together are not",
         [torch.full((2, 2), 0.5), torch.full((3,), 0.5), torch.full((1, 2), 0.5)], 1.5),
        ("all-zero gradients: the norm is 0 and nothing changes",
         [torch.zeros(3, 2), torch.zeros(4)], 1.0),
    ]


def check_clip_grad_norm(candidate: Callable[[list[torch.Tensor], float], Any]) -> None:
    """Exercise 5.1: ``clip_grad_norm(grads, max_norm) -> (clipped, total_norm)``, as PyTorch clips."""
    cases = _clip_cases()
    for what, grads, max_norm in cases:
        before = [g.clone() for g in grads]
        result = call(candidate, "clip_grad_norm", list(grads), max_norm, forbidden=[_CLIP_RULE],
                      hint=f"The case: {what}.")
        if not (isinstance(result, tuple) and len(result) == 2):
            raise AssertionError(
                f"`clip_grad_norm` should return a tuple (clipped, total_norm), got {type(result).__name__}."
            )
        clipped, total_norm = result
        if any(not torch.equal(b, g) for b, g in zip(before, grads)):
            raise AssertionError(
                "`clip_grad_norm` changed the input gradients in place (`g.mul_(...)`, `g *= ...`). The "
                "contract asks for new tensors and inputs unchanged: build `g * scale`."
            )
        if not isinstance(clipped, (list, tuple)) or len(clipped) != len(grads):
            raise AssertionError(
                f"`clip_grad_norm` should return a list of {len(grads)} tensors (one per gradient) as `clipped`, "
                f"got {type(clipped).__name__}{'' if not hasattr(clipped, '__len__') else f' of length {len(clipped)}'}."
            )
        for index, (out, grad) in enumerate(zip(clipped, grads)):
            expect_tensor(out, f"clip_grad_norm (clipped[{index}])", tuple(grad.shape))
            if out.dtype != grad.dtype:
                raise AssertionError(f"`clip_grad_norm` returned {out.dtype} for a {grad.dtype} gradient: keep its dtype.")
        if isinstance(total_norm, torch.Tensor) and total_norm.numel() == 1:
            total_norm = total_norm.item()
        if not isinstance(total_norm, numbers.Real):
            raise AssertionError(f"`total_norm` should be a float, got {type(total_norm).__name__}.")
        expected_clipped, expected_norm = _torch_clip(grads, max_norm)
        rtol = 1e-9 if grads[0].dtype == torch.float64 else 1e-5
        if not math.isclose(float(total_norm), expected_norm, rel_tol=max(rtol, 1e-6), abs_tol=1e-6):
            if math.isclose(float(total_norm), _global_norm(clipped), rel_tol=1e-5, abs_tol=1e-6) and \
                    expected_norm > max_norm:
                reason = ("It is the norm AFTER clipping. Return the norm measured before scaling: it is what "
                          "tells you how often (and how hard) clipping fired.")
            elif math.isclose(float(total_norm), expected_norm**2, rel_tol=1e-5, abs_tol=1e-6):
                reason = "It is the squared norm: take the square root of the sum of squares."
            elif math.isclose(float(total_norm), sum(_global_norm([g]) for g in grads), rel_tol=1e-5, abs_tol=1e-6):
                reason = ("You added the tensors' norms instead of their squares: the global norm is "
                          "sqrt(norm_1² + norm_2² + ...), the norm of all entries as one long vector.")
            else:
                reason = "total_norm is the L2 norm of all entries of all tensors together, before clipping."
            raise AssertionError(
                f"`clip_grad_norm` returned total_norm = {float(total_norm):.6g}, expected {expected_norm:.6g} "
                f"(the case: {what}). {reason}"
            )
        if _same_tensors(list(clipped), expected_clipped, atol=1e-7, rtol=rtol):
            continue
        mistake = first_mistake(list(clipped), _clip_mistakes(grads, max_norm),
                                lambda answer, wrong: not _same_tensors(wrong, expected_clipped, atol=1e-7, rtol=rtol)
                                and _same_tensors(answer, wrong, atol=1e-7, rtol=rtol))
        if mistake is not None:
            raise AssertionError(f"`clip_grad_norm` is wrong on {what}. {mistake}")
        if "exactly 5" in what:
            raise AssertionError(
                f"`clip_grad_norm` is wrong on {what}. Compare the factor max_norm / (total_norm + 1e-6) with 1 "
                "(as PyTorch does), not total_norm with max_norm."
            )
        raise AssertionError(
            f"`clip_grad_norm` is wrong on {what}: the clipped tensors differ from torch.nn.utils.clip_grad_norm_'s. "
            "Scale every tensor by the same factor max_norm / (total_norm + 1e-6) when it is below 1."
        )
    passed("clip_grad_norm", len(cases))


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


# --------------------------------------------------------------------------- Exercise 5.3: adamw_step

_ADAMW_RULE = Forbidden(
    what="PyTorch's Adam/AdamW (torch.optim.AdamW, torch.optim.Adam or their functional forms)",
    why="the exercise asks you to write the update yourself",
    torch_names=("_fused_adamw_", "_fused_adam_"),
    python_functions=(
        torch.optim.AdamW,
        torch.optim.Adam,
        inspect.unwrap(torch.optim._functional.adamw),
        inspect.unwrap(torch.optim._functional.adam),
    ),
)

AdamWSettings = dict[str, float]


def _torch_adamw(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 step: int, settings: AdamWSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference: one step of torch.optim.AdamW (single-tensor path) from the given state."""
    p = param.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([p], lr=settings["lr"], betas=(settings["beta1"], settings["beta2"]),
                                  eps=settings["eps"], weight_decay=settings["weight_decay"], foreach=False)
    if step > 1:
        optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                              "exp_avg_sq": exp_avg_sq.clone()}
    p.grad = grad.clone()
    optimizer.step()
    state = optimizer.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def _adam_by_formula(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                     step: int, s: AdamWSettings, *, decoupled: bool = True, l2: bool = False,
                     bias_correction: str = "step", eps_inside: bool = False, decay_without_lr: bool = False,
                     ) -> torch.Tensor:
    """The parameter after one Adam step, with one classic mistake switched on (for the messages)."""
    p, g = param.double(), grad.double()
    if l2:
        g = g + s["weight_decay"] * p
    m = s["beta1"] * exp_avg.double() + (1 - s["beta1"]) * g
    v = s["beta2"] * exp_avg_sq.double() + (1 - s["beta2"]) * g * g
    if bias_correction == "none":
        m_hat, v_hat = m, v
    else:  # "step" (right) or "step - 1" (a classic slip: at step 1 it divides by zero)
        t = step if bias_correction == "step" else step - 1
        m_hat, v_hat = m / (1 - s["beta1"] ** t), v / (1 - s["beta2"] ** t)
    if decoupled:
        p = p * (1 - (1.0 if decay_without_lr else s["lr"]) * s["weight_decay"])
    denominator = torch.sqrt(v_hat + s["eps"]) if eps_inside else torch.sqrt(v_hat) + s["eps"]
    return (p - s["lr"] * m_hat / denominator).to(param.dtype)


def _adamw_mistakes(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                    step: int, s: AdamWSettings) -> Mistakes:
    args = (param, grad, exp_avg, exp_avg_sq, step, s)
    return [
        ("You added weight_decay · param to the gradient (L2 regularisation, Adam's weight_decay) instead of "
         "decoupling it: AdamW shrinks the parameter directly, param *= 1 - lr · weight_decay, and keeps the "
         "decay out of the moments, so Adam's normalisation does not rescale it.",
         _adam_by_formula(*args, decoupled=False, l2=True)),
        ("You applied both: weight_decay · param added to the gradient AND the decoupled shrink. AdamW only shrinks "
         "the parameter (param *= 1 - lr · weight_decay); the gradient goes into the moments unchanged.",
         _adam_by_formula(*args, l2=True)),
        ("The bias correction is missing: the moments start at 0, so divide them by 1 - beta1**step and "
         "1 - beta2**step (at step 1 they are only (1 - beta) times the gradient).",
         _adam_by_formula(*args, bias_correction="none")),
        ("The bias correction uses step - 1: `step` already counts from 1 (the first update is step 1), "
         "so divide by 1 - beta**step.",
         _adam_by_formula(*args, bias_correction="step - 1") if step > 1 else torch.full_like(param, float("nan"))),
        ("eps is inside the square root: the denominator is sqrt(v_hat) + eps.",
         _adam_by_formula(*args, eps_inside=True)),
        ("The weight decay is missing the learning rate: the shrink is param *= 1 - lr · weight_decay.",
         _adam_by_formula(*args, decay_without_lr=True)),
        ("No weight decay was applied: with weight_decay > 0 AdamW shrinks the parameter by 1 - lr · weight_decay "
         "every step, even where the gradient is zero.",
         _adam_by_formula(*args, decoupled=False)),
    ]


def _adamw_settings(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> AdamWSettings:
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


def _run_adamw_case(candidate: Callable[..., Any], what: str, param: torch.Tensor, grad: torch.Tensor,
                    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, settings: AdamWSettings) -> None:
    expected = _torch_adamw(param, grad, exp_avg, exp_avg_sq, step, settings)
    mistakes = _adamw_mistakes(param, grad, exp_avg, exp_avg_sq, step, settings)
    originals = (param.clone(), grad.clone(), exp_avg.clone(), exp_avg_sq.clone())
    call(candidate, "adamw_step", param, grad, exp_avg, exp_avg_sq, step, forbidden=[_ADAMW_RULE],
         hint=f"The case: {what}.", **settings)
    if not torch.equal(grad, originals[1]):
        raise AssertionError(
            f"`adamw_step` changed `grad` ({what}). Only param, exp_avg and exp_avg_sq are updated; if you "
            "added weight_decay · param to the gradient, that is L2 regularisation, not AdamW's decoupled decay."
        )
    if torch.equal(param, originals[0]) and not torch.equal(expected[0], originals[0]):
        raise AssertionError(
            f"`adamw_step` did not change `param` ({what}). Update the tensors in place (param.mul_(...), "
            "param.add_(...), or param -= ...): `param = param - ...` only rebinds a local name, and the "
            "caller's tensor stays as it was."
        )
    atol, rtol = (1e-12, 1e-10) if param.dtype == torch.float64 else (1e-6, 1e-5)
    compare(param, expected[0], mistakes,
            f"`adamw_step` gives a different parameter than torch.optim.AdamW ({what}). The step: "
            "param *= 1 - lr·weight_decay; then param -= lr · m_hat / (sqrt(v_hat) + eps) with "
            "m_hat = exp_avg / (1 - beta1**step), v_hat = exp_avg_sq / (1 - beta2**step).",
            atol=atol, rtol=rtol)
    for name, actual, reference in (("exp_avg", exp_avg, expected[1]), ("exp_avg_sq", exp_avg_sq, expected[2])):
        if torch.equal(actual, originals[2 if name == "exp_avg" else 3]) and not torch.equal(actual, reference):
            raise AssertionError(
                f"`adamw_step` did not update `{name}` in place ({what}): the moments are the optimizer's "
                f"state and must carry over to the next step (`{name}.mul_(beta).add_(...)`)."
            )
        expect_close(actual, reference, f"`{name}` is wrong after the step ({what}): exp_avg = beta1·exp_avg + "
                     "(1 - beta1)·grad and exp_avg_sq = beta2·exp_avg_sq + (1 - beta2)·grad², both of the raw "
                     "gradient (no weight decay in them, no bias correction stored).", atol=atol, rtol=rtol)


def check_adamw_step(candidate: Callable[..., Any]) -> None:
    """Exercise 5.3: one in-place AdamW update, equal to ``torch.optim.AdamW``'s."""
    generator = torch.Generator().manual_seed(53)
    n_cases = 0
    default = _adamw_settings(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)

    def fresh(*shape: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        param = torch.randn(*shape, generator=generator, dtype=dtype)
        return param, torch.zeros_like(param), torch.zeros_like(param)

    # 1. The first step (step = 1, zero moments): bias correction makes the update ≈ lr · sign(grad).
    param, exp_avg, exp_avg_sq = fresh(4, 3)
    grad = torch.randn(4, 3, generator=generator)
    _run_adamw_case(candidate, "the first step, step = 1, from zero moments", param, grad, exp_avg, exp_avg_sq,
                    1, default)
    n_cases += 1

    # 2. A zero gradient: only the decoupled weight decay moves the parameter.
    param, exp_avg, exp_avg_sq = fresh(5)
    _run_adamw_case(candidate, "a zero gradient at step 1: only the weight decay acts, param *= 1 - lr·weight_decay",
                    param, torch.zeros(5), exp_avg, exp_avg_sq, 1, default)
    n_cases += 1

    # 3. Five chained steps with other settings: the state must carry from one call to the next.
    settings = _adamw_settings(lr=3e-3, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.05)
    param, exp_avg, exp_avg_sq = fresh(3, 2, 2)
    for step in range(1, 6):
        grad = torch.randn(3, 2, 2, generator=generator) * step
        _run_adamw_case(candidate, f"step {step} of five calls in a row (lr=3e-3, betas=(0.8, 0.95), eps=1e-6, "
                        "weight_decay=0.05)", param, grad, exp_avg, exp_avg_sq, step, settings)
        n_cases += 1

    # 4. Late in training: step 1000 with moments already filled in, a large eps, float64.
    settings = _adamw_settings(lr=5e-4, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.2)
    param = torch.randn(6, generator=generator, dtype=torch.float64)
    exp_avg = 0.1 * torch.randn(6, generator=generator, dtype=torch.float64)
    exp_avg_sq = 0.01 * torch.rand(6, generator=generator, dtype=torch.float64)
    grad = torch.randn(6, generator=generator, dtype=torch.float64)
    _run_adamw_case(candidate, "step 1000 with filled moments, eps = 1e-3 and float64 tensors", param, grad,
                    exp_avg, exp_avg_sq, 1000, settings)
    n_cases += 1

    # 5. Step 2 with a gradient that mostly cancels the first (bias correction at a small step).
    settings = _adamw_settings(lr=1e-1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    param, exp_avg, exp_avg_sq = fresh(2, 5)
    first = torch.randn(2, 5, generator=generator)
    _run_adamw_case(candidate, "step 1 without weight decay (lr=0.1)", param, first, exp_avg, exp_avg_sq, 1, settings)
    _run_adamw_case(candidate, "step 2 without weight decay, the gradient reversed", param, -0.5 * first, exp_avg,
                    exp_avg_sq, 2, settings)
    n_cases += 2
    passed("adamw_step", n_cases)


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
