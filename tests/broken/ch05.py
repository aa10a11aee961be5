"""Chapter 5's classic mistakes: every function here must fail its check, with the message in MATCH
(a regular expression per function; ``BROKEN`` pairs them, as tests/broken/README.md describes)."""

import math

import torch

# --------------------------------------------------------------------------- clip_grad_norm


def _norm(grads):
    return torch.sqrt(sum((g**2).sum() for g in grads)).item()


def clips_always(grads, max_norm):
    """Scales by max_norm / norm every time, so small gradients are blown up to max_norm."""
    total = _norm(grads)
    return [g * (max_norm / (total + 1e-6)) for g in grads], total


def norm_per_tensor(grads, max_norm):
    """Clips each tensor by its own norm instead of one global norm."""
    clipped = [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads]
    return clipped, _norm(grads)


def sum_of_norms(grads, max_norm):
    """Adds the tensors' norms instead of their squares."""
    total = sum(g.norm().item() for g in grads)
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads], total


def returns_norm_after_clipping(grads, max_norm):
    """Returns the norm of the clipped gradients, which hides how large they were."""
    total = _norm(grads)
    clipped = [g * min(1.0, max_norm / (total + 1e-6)) for g in grads]
    return clipped, _norm(clipped)


def returns_squared_norm(grads, max_norm):
    """Forgets the square root in the returned norm."""
    total = _norm(grads)
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads], total**2


def clips_in_place(grads, max_norm):
    """Scales the caller's tensors in place."""
    total = _norm(grads)
    for g in grads:
        g.mul_(min(1.0, max_norm / (total + 1e-6)))
    return grads, total


def inverted_factor(grads, max_norm):
    """Scales by total_norm / max_norm: large gradients get larger."""
    total = _norm(grads)
    return [g * (total / max_norm) if total > max_norm else g.clone() for g in grads], total


def calls_torch_clip(grads, max_norm):
    """Hands the work to torch.nn.utils.clip_grad_norm_, which the exercise forbids."""
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
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


# --------------------------------------------------------------------------- adamw_step


def l2_instead_of_decoupled(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """Adam with L2: the decay goes into the gradient and is rescaled by Adam."""
    grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def no_bias_correction(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """Uses the raw moments, which start near zero."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    param.sub_(lr * exp_avg / (exp_avg_sq.sqrt() + eps))


def bias_correction_step_minus_one(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """Bias correction with step - 1: division by zero on the first step."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = exp_avg / (1 - beta1 ** (step - 1))
    v_hat = exp_avg_sq / (1 - beta2 ** (step - 1))
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def eps_inside_sqrt(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """sqrt(v_hat + eps) instead of sqrt(v_hat) + eps."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat + eps).sqrt())


def decay_without_lr(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """param *= 1 - weight_decay: the decay forgets the learning rate."""
    param.mul_(1 - weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def rebinds_instead_of_in_place(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """param = param - ...: a new tensor, the caller's parameter never changes."""
    param = param * (1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param


def uses_torch_adamw(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay):
    """Hands the work to torch.optim.AdamW, which the exercise forbids."""
    p = param.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    p.grad = grad.clone()
    optimizer.step()
    param.copy_(p.detach())


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
        calls_torch_clip,
    ],
    "check_wsd_lr": [warmup_off_by_one, decays_to_zero, decay_stops_short, keeps_falling, uses_lal_schedule],
    "check_adamw_step": [
        l2_instead_of_decoupled,
        no_bias_correction,
        bias_correction_step_minus_one,
        eps_inside_sqrt,
        decay_without_lr,
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
}

#: What each failure message must say (a regular expression), so a check that fails for the wrong reason is caught.
MATCH = {
    "clips_always": "clipped every time",
    "norm_per_tensor": "by its own norm",
    "sum_of_norms": "norms instead of their squares",
    "returns_norm_after_clipping": "norm AFTER clipping",
    "returns_squared_norm": "squared norm",
    "clips_in_place": "in place",
    "inverted_factor": r"total_norm / max_norm",
    "calls_torch_clip": "does not allow",
    "warmup_off_by_one": "Warmup is off by one",
    "decays_to_zero": "goes to 0 instead of min_lr",
    "decay_stops_short": "does not reach min_lr",
    "keeps_falling": "keeps falling",
    "uses_lal_schedule": "does not allow",
    "l2_instead_of_decoupled": "L2 regularisation|changed `grad`",
    "no_bias_correction": "bias correction is missing",
    "bias_correction_step_minus_one": "step - 1",
    "eps_inside_sqrt": "eps is inside the square root",
    "decay_without_lr": "missing the learning rate",
    "rebinds_instead_of_in_place": "did not change `param`",
    "uses_torch_adamw": "does not allow",
    "patience_from_last_loss": "previous one",
    "min_delta_moves_reference": "moved the reference",
    "stops_one_late": "Off by one",
    "ties_count_as_improvement": "strictly below",
    "ignores_min_delta": "min_delta is ignored",
}

BROKEN = {
    check: [(function, MATCH[function.__name__]) for function in functions] for check, functions in _FUNCTIONS.items()
}
