"""Chapter 5's classic mistakes: every function here must fail its check, with the message in MATCH
(a regular expression per function; ``BROKEN`` pairs them, as tests/broken/README.md describes)."""

import math

import torch

# --------------------------------------------------------------------------- clip_grad_norm


def _norm(grads, norm_type=2.0):
    """The right global norm (None gradients left out), so each function below makes only its own mistake."""
    present = [g for g in grads if g is not None]
    if not present:
        return 0.0
    if math.isinf(norm_type):
        return max(g.abs().max().item() for g in present)
    return sum((g.double().abs() ** norm_type).sum() for g in present).item() ** (1 / norm_type)


def _times(grads, factor):
    return [None if g is None else g * factor for g in grads]


def clips_always(grads, max_norm, norm_type=2.0):
    """Scales by max_norm / norm every time, so small gradients are blown up to max_norm."""
    total = _norm(grads, norm_type)
    return _times(grads, max_norm / (total + 1e-6)), total


def norm_per_tensor(grads, max_norm, norm_type=2.0):
    """Clips each tensor by its own norm instead of one global norm."""
    clipped = [None if g is None else g * min(1.0, max_norm / (_norm([g], norm_type) + 1e-6)) for g in grads]
    return clipped, _norm(grads, norm_type)


def sum_of_norms(grads, max_norm, norm_type=2.0):
    """Adds the tensors' norms instead of their squares."""
    total = sum(_norm([g], norm_type) for g in grads if g is not None)
    return _times(grads, min(1.0, max_norm / (total + 1e-6))), total


def returns_norm_after_clipping(grads, max_norm, norm_type=2.0):
    """Returns the norm of the clipped gradients, which hides how large they were."""
    total = _norm(grads, norm_type)
    clipped = _times(grads, min(1.0, max_norm / (total + 1e-6)))
    return clipped, _norm(clipped, norm_type)


def returns_squared_norm(grads, max_norm, norm_type=2.0):
    """Forgets the square root in the returned norm."""
    total = _norm(grads, norm_type)
    return _times(grads, min(1.0, max_norm / (total + 1e-6))), total**2


def clips_in_place(grads, max_norm, norm_type=2.0):
    """Scales the caller's tensors in place."""
    total = _norm(grads, norm_type)
    for g in grads:
        if g is not None:
            g.mul_(min(1.0, max_norm / (total + 1e-6)))
    return grads, total


def inverted_factor(grads, max_norm, norm_type=2.0):
    """Scales by total_norm / max_norm: large gradients get larger."""
    total = _norm(grads, norm_type)
    return _times(grads, total / max_norm if total > max_norm else 1.0), total


def compares_norm_with_max_norm(grads, max_norm, norm_type=2.0):
    """The most common answer: `if total > max_norm: scale = max_norm / total`, which misses the threshold itself."""
    total = _norm(grads, norm_type)
    if total > max_norm:
        return _times(grads, max_norm / total), total
    return [None if g is None else g.clone() for g in grads], total


def returns_the_inputs(grads, max_norm, norm_type=2.0):
    """Below the threshold it hands back the caller's own tensors instead of new ones."""
    total = _norm(grads, norm_type)
    scale = max_norm / (total + 1e-6)
    return (_times(grads, scale) if scale < 1 else list(grads)), total


def l2_whatever_norm_type(grads, max_norm, norm_type=2.0):
    """Ignores norm_type: always the L2 norm."""
    total = _norm(grads, 2.0)
    return _times(grads, min(1.0, max_norm / (total + 1e-6))), total


def inf_norm_without_abs(grads, max_norm, norm_type=2.0):
    """The inf-norm as the largest entry, not the largest absolute entry."""
    if not math.isinf(norm_type):
        return l2_whatever_norm_type(grads, max_norm) if norm_type == 2.0 else _right(grads, max_norm, norm_type)
    total = max(g.max().item() for g in grads if g is not None)
    return _times(grads, min(1.0, max_norm / (total + 1e-6))), total


def _right(grads, max_norm, norm_type):
    total = _norm(grads, norm_type)
    return _times(grads, min(1.0, max_norm / (total + 1e-6))), total


def crashes_on_none(grads, max_norm, norm_type=2.0):
    """Assumes every parameter has a gradient."""
    total = sum((g.double().abs() ** norm_type).sum() for g in grads).item() ** (1 / norm_type)
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads], total


def calls_torch_clip(grads, max_norm, norm_type=2.0):
    """Hands the work to torch.nn.utils.clip_grad_norm_, which the exercise forbids."""
    params = [torch.zeros_like(g, requires_grad=True) for g in grads if g is not None]
    for p, g in zip(params, [g for g in grads if g is not None]):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    return [p.grad for p in params], total.item()


# --------------------------------------------------------------------------- wsd_lr


def warmup_off_by_one(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """step / warmup_steps: step 0 gets a rate of 0 and warmup never reaches max_lr."""
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - start) / decay_steps


def decays_to_zero(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """The decay ends at 0, not min_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    if step >= total_steps:
        return 0.0
    return max_lr * (1 - (step - start) / decay_steps)


def decay_stops_short(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """Divides by decay_steps + 1, so min_lr is never reached."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - start) / (decay_steps + 1)


def cosine_decay(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """The chapter's cosine shape in the decay phase instead of a straight line."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (1 + math.cos(math.pi * (step - start) / decay_steps)) * (max_lr - min_lr)


def keeps_falling(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """No clamp after total_steps: the rate keeps going down, even below zero."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    return max_lr + (min_lr - max_lr) * (step - start) / decay_steps


def uses_lal_schedule(step, *, max_lr, min_lr, warmup_steps, decay_steps, total_steps):
    """Calls chapter 5's warmup + cosine (lal.train.lr_at), which the exercise forbids."""
    from lal.train import TrainConfig, lr_at

    cfg = TrainConfig(max_steps=total_steps, lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps)
    return lr_at(step, cfg)


# --------------------------------------------------------------------------- adamw_update


def _adamw(param_groups, state, *, decay="before", step_of=None, missing="skip", l2=False, bias_correction=True,
           eps_inside=False, decay_lr=True, weight_decay_of=None):
    """AdamW over groups with one mistake switched on by its keyword (the defaults are right)."""
    state["optimizer_steps"] = state.get("optimizer_steps", 0) + 1
    with torch.no_grad():
        for group in param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            wd = group["weight_decay"] if weight_decay_of is None else weight_decay_of(param_groups)
            for p in group["params"]:
                if p.grad is None and missing == "skip":
                    continue
                g = torch.zeros_like(p) if p.grad is None else p.grad
                if l2:
                    g = g + wd * p
                s = state.setdefault(id(p), {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                s["step"] += 1
                t = s["step"] if step_of is None else step_of(state)
                shrink = 1 - (lr * wd if decay_lr else wd)
                if decay == "before":
                    p.mul_(shrink)
                s["m"].mul_(beta1).add_(g, alpha=1 - beta1)
                s["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = s["m"] / (1 - beta1**t) if bias_correction else s["m"]
                v_hat = s["v"] / (1 - beta2**t) if bias_correction else s["v"]
                p.sub_(lr * m_hat / ((v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps))
                if decay == "after":
                    p.mul_(shrink)


def decay_after_update(param_groups, state):
    """Shrinks the parameter after the Adam step instead of before."""
    _adamw(param_groups, state, decay="after")


def l2_instead_of_decoupled(param_groups, state):
    """Adam with L2: the decay goes into the gradient and is rescaled by Adam."""
    _adamw(param_groups, state, decay="none", l2=True)


def one_step_count_for_all(param_groups, state):
    """Counts optimizer steps, not each parameter's own steps, for the bias correction."""
    _adamw(param_groups, state, step_of=lambda s: s["optimizer_steps"])


def missing_grad_as_zero(param_groups, state):
    """Treats a parameter without a gradient as one with a zero gradient."""
    _adamw(param_groups, state, missing="zero")


def first_groups_weight_decay(param_groups, state):
    """Uses the first group's weight decay for every group."""
    _adamw(param_groups, state, weight_decay_of=lambda groups: groups[0]["weight_decay"])


def no_bias_correction(param_groups, state):
    """Uses the raw moments, which start near zero."""
    _adamw(param_groups, state, bias_correction=False)


def eps_inside_sqrt(param_groups, state):
    """sqrt(v_hat + eps) instead of sqrt(v_hat) + eps."""
    _adamw(param_groups, state, eps_inside=True)


def decay_without_lr(param_groups, state):
    """param *= 1 - weight_decay: the decay forgets the learning rate."""
    _adamw(param_groups, state, decay_lr=False)


def no_weight_decay(param_groups, state):
    """Forgets the decay altogether."""
    _adamw(param_groups, state, decay="none")


def in_place_without_no_grad(param_groups, state):
    """Updates leaf tensors that require grad outside torch.no_grad()."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.sub_(group["lr"] * p.grad.sign())


def rebinds_instead_of_in_place(param_groups, state):
    """p = p - ...: a new tensor, the caller's parameters never change."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p = p - group["lr"] * p.grad.sign()  # noqa: PLW2901 (the mistake)


def uses_torch_adamw(param_groups, state):
    """Hands the work to torch.optim.AdamW, which the exercise forbids."""
    if "optimizer" not in state:
        state["optimizer"] = torch.optim.AdamW(param_groups)
    state["optimizer"].step()


# --------------------------------------------------------------------------- smallest_diverging_lr


def _finite(losses):
    return all(math.isfinite(loss) for loss in losses)


def misses_nan(run, lrs):
    """`last > first` is False for a NaN, so a run that blew up counts as stable."""
    diverging = [lr for lr in lrs if run(lr)[-1] > run(lr)[0]]
    return min(diverging) if diverging else None


def first_in_given_order(run, lrs):
    """Returns the first diverging rate of the list as given, which need not be sorted."""
    for lr in lrs:
        losses = run(lr)
        if not _finite(losses) or losses[-1] > losses[0]:
            return lr
    return None


def compares_with_lowest_loss(run, lrs):
    """Any rise after the minimum counts as divergence."""
    diverging = [lr for lr in lrs if not _finite(run(lr)) or run(lr)[-1] > min(run(lr))]
    return min(diverging) if diverging else None


def largest_stable(run, lrs):
    """Answers the largest rate that does not diverge."""
    stable = [lr for lr in lrs if _finite(run(lr)) and run(lr)[-1] <= run(lr)[0]]
    return max(stable) if stable else None


def best_rate(run, lrs):
    """Answers the rate with the lowest final loss."""
    finite = [lr for lr in lrs if math.isfinite(run(lr)[-1])]
    return min(finite, key=lambda lr: run(lr)[-1]) if finite else None


def returns_the_losses(run, lrs):
    """Returns the curve instead of a rate."""
    return run(sorted(lrs)[-1])


# --------------------------------------------------------------------------- should_stop


def patience_from_last_loss(val_losses, patience, min_delta=0.0):
    """Compares each loss with the previous one instead of with the best."""
    previous, since = math.inf, 0
    for loss in val_losses:
        since = 0 if loss < previous - min_delta else since + 1
        previous = loss
    return since >= patience


def min_delta_moves_reference(val_losses, patience, min_delta=0.0):
    """A drop smaller than min_delta still lowers the reference."""
    best, since = math.inf, 0
    for loss in val_losses:
        if loss < best - min_delta:
            since = 0
        else:
            since += 1
        best = min(best, loss)
    return since >= patience


def stops_one_late(val_losses, patience, min_delta=0.0):
    """since > patience instead of since >= patience."""
    best, since = math.inf, 0
    for loss in val_losses:
        if loss < best - min_delta:
            best, since = loss, 0
        else:
            since += 1
    return since > patience


def ties_count_as_improvement(val_losses, patience, min_delta=0.0):
    """<= instead of <: a loss equal to the best resets the count."""
    best, since = math.inf, 0
    for loss in val_losses:
        if loss <= best - min_delta:
            best, since = loss, 0
        else:
            since += 1
    return since >= patience


def ignores_min_delta(val_losses, patience, min_delta=0.0):
    """Any drop counts, however small."""
    best, since = math.inf, 0
    for loss in val_losses:
        if loss < best:
            best, since = loss, 0
        else:
            since += 1
    return since >= patience


_FUNCTIONS = {
    "check_clip_grad_norm": [
        clips_always,
        norm_per_tensor,
        sum_of_norms,
        returns_norm_after_clipping,
        returns_squared_norm,
        clips_in_place,
        inverted_factor,
        compares_norm_with_max_norm,
        returns_the_inputs,
        l2_whatever_norm_type,
        inf_norm_without_abs,
        crashes_on_none,
        calls_torch_clip,
    ],
    "check_wsd_lr": [warmup_off_by_one, decays_to_zero, decay_stops_short, cosine_decay, keeps_falling,
                     uses_lal_schedule],
    "check_adamw_update": [
        decay_after_update,
        l2_instead_of_decoupled,
        one_step_count_for_all,
        missing_grad_as_zero,
        first_groups_weight_decay,
        no_bias_correction,
        eps_inside_sqrt,
        decay_without_lr,
        no_weight_decay,
        in_place_without_no_grad,
        rebinds_instead_of_in_place,
        uses_torch_adamw,
    ],
    "check_should_stop": [
        patience_from_last_loss,
        min_delta_moves_reference,
        stops_one_late,
        ties_count_as_improvement,
        ignores_min_delta,
    ],
    "check_smallest_diverging_lr": [
        misses_nan,
        first_in_given_order,
        compares_with_lowest_loss,
        largest_stable,
        best_rate,
        returns_the_losses,
    ],
}

#: What each failure message must say (a regular expression), so a check that fails for the wrong reason is caught.
MATCH = {
    "clips_always": "clipped every time",
    "norm_per_tensor": "by its own norm",
    "sum_of_norms": "norms instead of their squares",
    "returns_norm_after_clipping": "norm AFTER clipping",
    "returns_squared_norm": "squared norm",
    "clips_in_place": "in place",
    "inverted_factor": r"scaled by total_norm / max_norm",
    "compares_norm_with_max_norm": r"compared total_norm with max_norm",
    "returns_the_inputs": "input tensor itself",
    "l2_whatever_norm_type": "It is the L2 norm, but norm_type = 1",
    "inf_norm_without_abs": "not the largest ABSOLUTE entry",
    "crashes_on_none": r"(?s)raised AttributeError.*parameter without a gradient",
    "calls_torch_clip": "does not allow",
    "warmup_off_by_one": "Warmup is off by one",
    "decays_to_zero": "goes to 0 instead of min_lr",
    "decay_stops_short": "does not reach min_lr",
    "cosine_decay": "follows a cosine",
    "keeps_falling": "keeps falling",
    "uses_lal_schedule": "does not allow",
    "decay_after_update": "weight decay AFTER the Adam update",
    "l2_instead_of_decoupled": "L2 regularisation",
    "one_step_count_for_all": "one step for the whole optimizer",
    "missing_grad_as_zero": "as if its gradient were zero",
    "first_groups_weight_decay": "one weight_decay for every group",
    "no_bias_correction": "bias correction is missing",
    "eps_inside_sqrt": "eps is inside the square root",
    "decay_without_lr": "missing the learning rate",
    "no_weight_decay": "No weight decay was applied",
    "in_place_without_no_grad": r"torch.no_grad\(\)",
    "rebinds_instead_of_in_place": "did not change any parameter",
    "uses_torch_adamw": "does not allow",
    "patience_from_last_loss": "previous one",
    "min_delta_moves_reference": "moved the reference",
    "stops_one_late": "Off by one",
    "ties_count_as_improvement": "strictly below",
    "ignores_min_delta": "min_delta is ignored",
    "misses_nan": "NaN loss was not counted",
    "first_in_given_order": "need not be sorted",
    "compares_with_lowest_loss": "compared the last loss with the lowest",
    "largest_stable": "largest rate that does NOT diverge",
    "best_rate": "lowest final loss",
    "returns_the_losses": "should return a learning rate",
}

BROKEN = {
    check: [(function, MATCH[function.__name__]) for function in functions] for check, functions in _FUNCTIONS.items()
}
