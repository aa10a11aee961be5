"""Chapter 1's classic mistakes: every function here must fail its check."""

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- bigram_counts


def transposed_counts(ids, vocab_size):
    """Counts the pair with the next token as the row: counts[next, current]."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[b, a] += 1
    return counts


def wraps_around(ids, vocab_size):
    """Pairs the last token with the first, as if the text were a circle."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids.tolist(), torch.roll(ids, -1).tolist()):
        counts[a, b] += 1
    return counts


def misses_last_pair(ids, vocab_size):
    """Stops one pair early: range(len(ids) - 2)."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for i in range(len(ids) - 2):
        counts[ids[i], ids[i + 1]] += 1
    return counts


def size_from_data(ids, vocab_size):
    """Sizes the table from the largest id seen instead of vocab_size."""
    size = int(ids.max()) + 1
    pairs = ids[:-1] * size + ids[1:]
    return torch.bincount(pairs, minlength=size * size).view(size, size)


def float_counts(ids, vocab_size):
    """Counts correctly but in a float32 table (torch.zeros' default dtype)."""
    counts = torch.zeros(vocab_size, vocab_size)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return counts


def overwrites_instead_of_accumulating(ids, vocab_size):
    """Assigns with fancy indexing, so repeated pairs count once (index_put_ without accumulate)."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    counts[ids[:-1], ids[1:]] += 1
    return counts


# --------------------------------------------------------------------------- bigram_probs


def normalises_columns(counts, smoothing=1.0):
    """Divides by the column sums (dim=0), so columns sum to 1 instead of rows."""
    smoothed = counts.float() + smoothing
    return smoothed / smoothed.sum(dim=0, keepdim=True)


def forgets_keepdim(counts, smoothing=1.0):
    """Row sums without keepdim broadcast along the wrong axis."""
    smoothed = counts.float() + smoothing
    return smoothed / smoothed.sum(dim=1)


def ignores_smoothing(counts, smoothing=1.0):
    """Normalises the raw counts: an unseen pair gets probability 0 (and a row of zeros gets NaN)."""
    counts = counts.float()
    return counts / counts.sum(dim=1, keepdim=True)


def smooths_in_place(counts, smoothing=1.0):
    """Adds the smoothing to the caller's count table in place."""
    counts += int(smoothing) if not counts.dtype.is_floating_point else smoothing
    return counts / counts.sum(dim=1, keepdim=True)


def divides_by_total(counts, smoothing=1.0):
    """Normalises by the sum of the whole table: joint pair probabilities, not next-token ones."""
    smoothed = counts.float() + smoothing
    return smoothed / smoothed.sum()


def always_adds_one(counts, smoothing=1.0):
    """Hard-codes add-one smoothing and ignores the argument."""
    smoothed = counts.float() + 1
    return smoothed / smoothed.sum(dim=1, keepdim=True)


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


BROKEN = {
    "check_bigram_counts": [
        transposed_counts,
        wraps_around,
        misses_last_pair,
        size_from_data,
        float_counts,
        overwrites_instead_of_accumulating,
    ],
    "check_bigram_probs": [
        normalises_columns,
        forgets_keepdim,
        ignores_smoothing,
        smooths_in_place,
        divides_by_total,
        always_adds_one,
    ],
    "check_cross_entropy": [
        naive_exp,
        log_of_softmax,
        sums_instead_of_mean,
        missing_minus,
        softmax_over_batch,
        picks_all_targets,
        per_row_losses,
        argmax_targets,
        max_not_added_back,
        global_max,
        returns_float,
        shifts_in_place,
        uses_library,
    ],
    "check_sample_bigram": [
        samples_columns,
        never_moves,
        greedy,
        global_rng,
        includes_start,
        one_past_the_stretch,
        cumsum_over_rows,
        uniform,
        uses_multinomial,
    ],
}
