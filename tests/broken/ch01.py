"""Chapter 1's classic mistakes: every function here must fail its check, with the message its pattern names."""

import torch
import torch.nn.functional as F
from torch.nn.functional import log_softmax as renamed_log_softmax

# --------------------------------------------------------------------------- cross_entropy


def naive_exp(logits, targets):
    """Softmax with a plain exp: exp(1000) overflows to inf, and inf / inf is NaN."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()


def log_of_softmax(logits, targets):
    """log(softmax(x)): stable softmax, but a probability of e^-1000 rounds to 0 and log(0) = -inf."""
    probs = torch.softmax(logits, dim=1)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()


def sums_instead_of_mean(logits, targets):
    """Returns the sum of the per-position losses, which grows with the batch."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].sum()


def missing_minus(logits, targets):
    """Forgets the minus sign: a negative 'loss' that training would push up."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return log_probs[torch.arange(len(targets)), targets].mean()


def softmax_over_batch(logits, targets):
    """Normalises down the batch (dim=0) instead of over the vocabulary."""
    m = logits.max(dim=0, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=0, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].mean()


def picks_all_targets(logits, targets):
    """logits[:, targets]: an (N, N) block of every row at every target, averaged."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[:, targets].mean()


def per_row_losses(logits, targets):
    """Returns the (N,) per-position losses without averaging them."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets]


def argmax_targets(logits, targets):
    """Scores each row's most likely token instead of the target."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(logits)), logits.argmax(dim=1)].mean()


def max_not_added_back(logits, targets):
    """Subtracts the row max inside exp but never adds it back."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].mean()


def global_max(logits, targets):
    """Subtracts one max over the whole batch: rows far below it underflow to log(0)."""
    m = logits.max()
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].mean()


def returns_float(logits, targets):
    """Calls .item(): the value is right but there is nothing to backpropagate."""
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].mean().item()


def shifts_in_place(logits, targets):
    """Subtracts the max from the caller's logits in place."""
    logits -= logits.max(dim=1, keepdim=True).values
    log_probs = logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets)), targets].mean()


def uses_library(logits, targets):
    """Calls F.cross_entropy instead of writing it."""
    return F.cross_entropy(logits, targets)


def no_keepdim(logits, targets):
    """A max and a sum without keepdim: (N,) broadcasts along the wrong axis (a shape error when N ≠ V)."""
    m = logits.max(dim=1).values
    log_probs = logits - (m + torch.log(torch.exp(logits - m).sum(dim=1)))
    return -log_probs[torch.arange(len(targets)), targets].mean()


def special_log_softmax(logits, targets):
    """torch.special.log_softmax: the library function under another namespace."""
    return -torch.special.log_softmax(logits, dim=1)[torch.arange(len(targets)), targets].mean()


def method_log_softmax(logits, targets):
    """The tensor method x.log_softmax()."""
    return -logits.log_softmax(dim=1)[torch.arange(len(targets)), targets].mean()


def aliased_log_softmax(logits, targets):
    """from torch.nn.functional import log_softmax as renamed_log_softmax."""
    return -renamed_log_softmax(logits, dim=1)[torch.arange(len(targets)), targets].mean()


def special_logsumexp(logits, targets):
    """torch.special.logsumexp for the hard part."""
    log_probs = logits - torch.special.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def swallows_the_refusal(logits, targets):
    """Tries F.cross_entropy inside try/except and falls back to a naive formula when refused."""
    try:
        return F.cross_entropy(logits, targets)
    except Exception:
        probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        return -torch.log(probs[torch.arange(len(targets)), targets]).mean()


# --------------------------------------------------------------------------- label_smoothed_cross_entropy


def _log_probs(logits):
    m = logits.max(dim=1, keepdim=True).values
    return logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))


def spread_over_others(logits, targets, smoothing):
    """ε / (V − 1) on each non-target token: the other convention, not F.cross_entropy's."""
    log_probs = _log_probs(logits)
    nll = -log_probs[torch.arange(len(targets)), targets]
    others = -log_probs.sum(dim=1) - nll
    return ((1 - smoothing) * nll + smoothing / (logits.size(1) - 1) * others).mean()


def sums_over_classes(logits, targets, smoothing):
    """ε times the SUM of −log p over the vocabulary instead of its mean."""
    log_probs = _log_probs(logits)
    nll = -log_probs[torch.arange(len(targets)), targets]
    return ((1 - smoothing) * nll - smoothing * log_probs.sum(dim=1)).mean()


def ignores_smoothing(logits, targets, smoothing):
    """Plain cross-entropy: the smoothing argument is never used."""
    return -_log_probs(logits)[torch.arange(len(targets)), targets].mean()


def no_one_minus_epsilon(logits, targets, smoothing):
    """Keeps the full weight 1 on the target's −log p and adds ε · mean on top."""
    log_probs = _log_probs(logits)
    nll = -log_probs[torch.arange(len(targets)), targets]
    return (nll - smoothing * log_probs.mean(dim=1)).mean()


def swapped_weights(logits, targets, smoothing):
    """ε on the target term, 1 − ε on the uniform term."""
    log_probs = _log_probs(logits)
    nll = -log_probs[torch.arange(len(targets)), targets]
    return (smoothing * nll - (1 - smoothing) * log_probs.mean(dim=1)).mean()


def smoothed_naive_exp(logits, targets, smoothing):
    """log(exp(x) / Σ exp(x)): right formula, overflows at logits of 1000."""
    log_probs = torch.log(torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True))
    nll = -log_probs[torch.arange(len(targets)), targets]
    return ((1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)).mean()


def smoothing_with_library(logits, targets, smoothing):
    """F.cross_entropy(label_smoothing=...): the library does it all."""
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def smoothing_with_log_softmax(logits, targets, smoothing):
    """F.log_softmax for the hard part."""
    log_probs = F.log_softmax(logits, dim=1)
    nll = -log_probs[torch.arange(len(targets)), targets]
    return ((1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)).mean()


# --------------------------------------------------------------------------- sample_bigram


def _draw(row, generator):
    """A correct draw from one row: the number of cumulative probabilities <= u."""
    u = torch.rand(1, generator=generator, dtype=row.dtype)
    return min(int((torch.cumsum(row, 0) <= u).sum()), len(row) - 1)


def samples_columns(probs, start_id, n, generator):
    """Samples from the column probs[:, current] instead of the row."""
    ids, current = [], start_id
    for _ in range(n):
        column = probs[:, current]
        current = _draw(column / column.sum(), generator)
        ids.append(current)
    return ids


def never_moves(probs, start_id, n, generator):
    """Draws every token from the row of start_id."""
    return [_draw(probs[start_id], generator) for _ in range(n)]


def greedy(probs, start_id, n, generator):
    """Takes the argmax: the same continuation every time, not a sample."""
    ids, current = [], start_id
    for _ in range(n):
        current = int(torch.argmax(probs[current]))
        ids.append(current)
    return ids


def global_rng(probs, start_id, n, generator):
    """Draws u from the global RNG, so a seed does not reproduce the sample."""
    ids, current = [], start_id
    for _ in range(n):
        u = torch.rand(1, dtype=probs.dtype)
        current = min(int((torch.cumsum(probs[current], 0) <= u).sum()), len(probs) - 1)
        ids.append(current)
    return ids


def includes_start(probs, start_id, n, generator):
    """Returns start_id followed by n - 1 samples."""
    ids, current = [start_id], start_id
    for _ in range(n - 1):
        current = _draw(probs[current], generator)
        ids.append(current)
    return ids


def one_past_the_stretch(probs, start_id, n, generator):
    """Adds one to the count of cumulative sums <= u: every id shifted to its right neighbour."""
    ids, current = [], start_id
    for _ in range(n):
        u = torch.rand(1, generator=generator, dtype=probs.dtype)
        current = min(int((torch.cumsum(probs[current], 0) <= u).sum()) + 1, len(probs) - 1)
        ids.append(current)
    return ids


def cumsum_over_rows(probs, start_id, n, generator):
    """Takes the cumulative sum down the columns (dim=0) instead of along each row."""
    cumulative = torch.cumsum(probs, dim=0)
    ids, current = [], start_id
    for _ in range(n):
        u = torch.rand(1, generator=generator, dtype=probs.dtype)
        current = min(int((cumulative[current] <= u).sum()), len(probs) - 1)
        ids.append(current)
    return ids


def uniform(probs, start_id, n, generator):
    """Ignores probs and draws every id with equal probability."""
    return torch.randint(len(probs), (n,), generator=generator).tolist()


def uses_multinomial(probs, start_id, n, generator):
    """Calls torch.multinomial, which the exercise asks to rebuild."""
    ids, current = [], start_id
    for _ in range(n):
        current = int(torch.multinomial(probs[current], 1, generator=generator))
        ids.append(current)
    return ids


def no_final_clamp(probs, start_id, n, generator):
    """Counts the cumulative sums ≤ u without clamping: u above a last sum of 0.999 gives id V."""
    cumulative = torch.cumsum(probs, dim=1)
    ids, current = [], start_id
    for _ in range(n):
        u = torch.rand(1, generator=generator, dtype=probs.dtype)
        current = int((cumulative[current] <= u).sum())
        ids.append(current)
    return ids


def one_draw_before_loop(probs, start_id, n, generator):
    """Draws u once, before the loop, and reuses it for every token."""
    cumulative = torch.cumsum(probs, dim=1)
    u = torch.rand(1, generator=generator, dtype=probs.dtype)
    ids, current = [], start_id
    for _ in range(n):
        current = min(int((cumulative[current] <= u).sum()), len(probs) - 1)
        ids.append(current)
    return ids


def categorical_distribution(probs, start_id, n, generator):
    """torch.distributions.Categorical(...).sample(), which calls torch.multinomial underneath."""
    ids, current = [], start_id
    for _ in range(n):
        current = int(torch.distributions.Categorical(probs=probs[current]).sample())
        ids.append(current)
    return ids


BROKEN = {
    "check_cross_entropy": [
        (naive_exp, r"(?s)returned (nan|inf).*exp\(1000\) overflows"),
        (log_of_softmax, r"(?s)returned inf.*log\(softmax\(x\)\)"),
        (sums_instead_of_mean, r"N times too large"),
        (missing_minus, r"wrong sign"),
        (softmax_over_batch, r"over dim 0, down the batch"),
        (picks_all_targets, r"logits\[:, targets\] is an \(N, N\) matrix"),
        (per_row_losses, r"shape \(3,\).*ONE number"),
        (argmax_targets, r"ignores the targets"),
        (max_not_added_back, r"did not add it back"),
        (global_max, r"Subtract each ROW's maximum"),
        (returns_float, r"returned a Python number"),
        (shifts_in_place, r"changed its input `logits` in place"),
        (uses_library, r"does not allow"),
        (no_keepdim, r"(?s)raised RuntimeError.*keepdim=True"),
        (special_log_softmax, r"does not allow"),
        (method_log_softmax, r"does not allow"),
        (aliased_log_softmax, r"does not allow"),
        (special_logsumexp, r"does not allow"),
        (swallows_the_refusal, r"does not allow"),
    ],
    "check_label_smoothed_cross_entropy": [
        (spread_over_others, r"V − 1 OTHER tokens"),
        (sums_over_classes, r"summed −log p over the V tokens"),
        (ignores_smoothing, r"smoothing \(ε = 0\.1\) was ignored"),
        (no_one_minus_epsilon, r"missing its factor \(1 − ε\)"),
        (swapped_weights, r"swapped the weights"),
        (smoothed_naive_exp, r"(?s)returned (nan|inf).*exp\(1000\) overflows"),
        (smoothing_with_library, r"does not allow"),
        (smoothing_with_log_softmax, r"does not allow"),
    ],
    "check_sample_bigram": [
        (samples_columns, r"COLUMN of probs"),
        (never_moves, r"drawn from the row of start_id"),
        (greedy, r"argmax, which is greedy decoding"),
        (global_rng, r"seeded alike gave different ids"),
        (includes_start, r"starts with start_id"),
        (one_past_the_stretch, r"one too high"),
        (cumsum_over_rows, r"down the COLUMNS \(dim=0\)"),
        (uniform, r"did not follow the chain"),
        (uses_multinomial, r"does not allow"),
        (no_final_clamp, r"clamp"),
        (one_draw_before_loop, r"ONE random number"),
        (categorical_distribution, r"does not allow"),
    ],
}
