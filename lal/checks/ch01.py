"""Checks for chapter 1's exercises: bigram counts, bigram probabilities, cross-entropy, sampling.

Each check compares the learner's function with a reference written with PyTorch on ordinary and
edge cases. When the answer is wrong, it also computes what the classic mistakes give (a
transposed count table, rows normalised down the columns, a sum instead of a mean, a softmax over
the wrong dimension, an ``exp`` that overflows, …) and names the one the learner's output
matches, so the message says what to fix, not only that something is off. All randomness comes
from local generators: a check never moves the learner's global RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import (
    Mistakes,
    call,
    compare,
    expect_close,
    expect_tensor,
    expect_unchanged,
    matching_mistake,
    passed,
)











# --------------------------------------------------------------------------- Exercise 1.1: counting


def _reference_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts[a, b] = how often id b directly follows id a; (V, V) long."""
    pairs = ids[:-1] * vocab_size + ids[1:]  # one number per (current, next) pair
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def _count_mistakes(ids: torch.Tensor, vocab_size: int) -> Mistakes:
    expected = _reference_counts(ids, vocab_size)
    wrapped = expected.clone()
    if len(ids) > 0:
        wrapped[ids[-1], ids[0]] += 1
    self_pairs = torch.diag(torch.bincount(ids[:-1], minlength=vocab_size))
    return [
        (
            "Your table is transposed: counts[a, b] must count how often b FOLLOWS a, so the row is the "
            "current token and the column the next one (counts[ids[i], ids[i + 1]] += 1).",
            expected.T,
        ),
        (
            "You counted one pair too many: (last token, first token). The text does not wrap around: "
            "there are len(ids) - 1 pairs, ids[i] followed by ids[i + 1] for i < len(ids) - 1.",
            wrapped,
        ),
        (
            "Repeated pairs were counted once: `counts[ids[:-1], ids[1:]] += 1` writes each (a, b) cell once "
            "however often it appears. Loop over the pairs, or use counts.index_put_(..., accumulate=True) "
            "or torch.bincount.",
            (expected > 0).long(),
        ),
        (
            "The last pair (ids[-2], ids[-1]) is missing: loop over i in range(len(ids) - 1), or pair "
            "ids[:-1] with ids[1:].",
            _reference_counts(ids[:-1], vocab_size) if len(ids) > 1 else expected,
        ),
        (
            "The first pair (ids[0], ids[1]) is missing: pair ids[:-1] with ids[1:].",
            _reference_counts(ids[1:], vocab_size) if len(ids) > 1 else expected,
        ),
        (
            "You paired each token with itself (counts[ids[i], ids[i]]): the column is the NEXT token, ids[i + 1].",
            self_pairs,
        ),
        (
            "You paired each token with the one two places later: the next token of ids[i] is ids[i + 1].",
            _pairs_at_distance(ids, vocab_size, 2),
        ),
    ]


def _pairs_at_distance(ids: torch.Tensor, vocab_size: int, distance: int) -> torch.Tensor:
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    if len(ids) > distance:
        ones = torch.ones(len(ids) - distance, dtype=torch.long)
        counts.index_put_((ids[:-distance], ids[distance:]), ones, accumulate=True)
    return counts


def check_bigram_counts(bigram_counts: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 1.1: ``bigram_counts(ids, vocab_size)`` must count every (current, next) pair."""
    g = torch.Generator().manual_seed(11)
    cases = [  # (what, ids, vocab_size)
        ("ids [0, 1, 1, 2, 0, 1] with vocab_size 4 (id 3 never occurs)", torch.tensor([0, 1, 1, 2, 0, 1]), 4),
        ("200 random ids below 7", torch.randint(7, (200,), generator=g), 7),
        ("a sequence that starts and ends with different ids", torch.tensor([2, 0, 0, 1, 2, 2, 1, 0]), 3),
        ("1,000 random ids below 30, vocab_size 33", torch.randint(30, (1000,), generator=g), 33),
        ("two ids, [3, 1]: exactly one pair", torch.tensor([3, 1]), 5),
        ("a single id: no pairs at all", torch.tensor([2]), 3),
    ]
    for what, ids, vocab_size in cases:
        before = ids.clone()
        out = call(bigram_counts, "bigram_counts", ids, vocab_size)
        if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape != (vocab_size, vocab_size):
            raise AssertionError(
                f"`bigram_counts` returned shape {tuple(out.shape)} for {what}; expected "
                f"({vocab_size}, {vocab_size}). Use the `vocab_size` argument for the table's size, not "
                "ids.max() + 1: a token that never occurs still needs its row and column."
            )
        actual = expect_tensor(out, "bigram_counts", (vocab_size, vocab_size))
        expect_unchanged(before, ids, "bigram_counts", "ids")
        if actual.dtype != torch.long:
            raise AssertionError(
                f"`bigram_counts` returned dtype {actual.dtype}; counts are whole numbers, so return "
                "torch.long (create the table with torch.zeros(V, V, dtype=torch.long), or call .long())."
            )
        expected = _reference_counts(ids, vocab_size)
        if torch.equal(actual, expected):
            continue
        total = int(actual.sum())
        message = matching_mistake(actual, _count_mistakes(ids, vocab_size), atol=0, rtol=0)
        if message is None:
            message = (
                f"`bigram_counts` is wrong for {what}: counts[a, b] must be the number of positions i with "
                f"ids[i] == a and ids[i + 1] == b. Your table holds {total} pairs in all; there are "
                f"len(ids) - 1 = {len(ids) - 1}."
            )
        raise AssertionError(message)
    passed("bigram_counts", len(cases))


# --------------------------------------------------------------------------- Exercise 1.2: probabilities


def _reference_probs(counts: torch.Tensor, smoothing: float) -> torch.Tensor:
    smoothed = counts.double() + smoothing
    return smoothed / smoothed.sum(dim=1, keepdim=True)


def _probs_mistakes(counts: torch.Tensor, smoothing: float) -> Mistakes:
    c = counts.double()
    smoothed = c + smoothing
    mistakes: Mistakes = [
        (
            "Your columns sum to 1, not your rows: you normalised over dim 0. Row a is the distribution "
            "of the token that follows a, so divide each row by its own sum: .sum(dim=1, keepdim=True).",
            smoothed / smoothed.sum(dim=0, keepdim=True),
        ),
        (
            "A row sum without keepdim=True has shape (V,) and broadcasts along the wrong axis (it divides "
            "column b by the sum of ROW b). Use smoothed.sum(dim=1, keepdim=True), shape (V, 1).",
            smoothed / smoothed.sum(dim=1),
        ),
        (
            "You divided by the sum of the whole table: that gives the probability of each PAIR, but "
            "row a must be a distribution over the next token, so divide each row by its own sum.",
            smoothed / smoothed.sum(),
        ),
        (
            "You added the smoothing after normalising (or to the numerator only): add it to every count "
            "first, then divide each row by its new sum.",
            c / c.sum(dim=1, keepdim=True).clamp_min(1e-300) + smoothing,
        ),
        (
            "You added the smoothing only to the counts that are 0. Add-`smoothing` smoothing adds it to "
            "EVERY count: (counts + smoothing), then normalise the rows.",
            _normalise_rows(torch.where(c == 0, torch.full_like(c, smoothing), c)),
        ),
    ]
    if smoothing != 0:
        mistakes.append((
            f"You ignored the smoothing ({smoothing:g} was passed): add it to every count before normalising.",
            _normalise_rows(c),
        ))
    if smoothing != 1:
        mistakes.append((
            f"You added 1 although smoothing={smoothing:g} was passed: use the `smoothing` argument.",
            _normalise_rows(c + 1),
        ))
    return mistakes


def _normalise_rows(matrix: torch.Tensor) -> torch.Tensor:
    sums = matrix.sum(dim=1, keepdim=True)
    return matrix / torch.where(sums == 0, torch.ones_like(sums), sums)


def check_bigram_probs(bigram_probs: Callable[..., torch.Tensor]) -> None:
    """Exercise 1.2: ``bigram_probs(counts, smoothing=1.0)`` must give smoothed, row-normalised probabilities."""
    g = torch.Generator().manual_seed(12)
    sparse = torch.randint(0, 50, (6, 6), generator=g) * (torch.rand(6, 6, generator=g) < 0.5)
    sparse[2] = 0  # a token that was never followed by anything (the last character of a text)
    dense = torch.randint(1, 20, (5, 5), generator=g)
    cases = [  # (what, counts, smoothing or None for the default)
        ("a (6, 6) table with many zeros, default smoothing", sparse, None),
        ("the same table, smoothing=0.5", sparse, 0.5),
        ("a (5, 5) table without zeros, smoothing=0", dense, 0.0),
        ("a (5, 5) table, smoothing=3", dense, 3.0),
        ("a (4, 4) float table, smoothing=1", torch.rand(4, 4, generator=g, dtype=torch.float64) * 10, 1.0),
    ]
    for what, counts, smoothing in cases:
        before = counts.clone()
        kwargs = {} if smoothing is None else {"smoothing": smoothing}
        out = call(bigram_probs, "bigram_probs", counts, **kwargs)
        actual = expect_tensor(out, "bigram_probs", tuple(counts.shape))
        expect_unchanged(before, counts, "bigram_probs", "counts")
        if not actual.dtype.is_floating_point:
            raise AssertionError(
                f"`bigram_probs` returned dtype {actual.dtype}: probabilities are fractions, so the result "
                "must be a float tensor (counts.float() before dividing, or use `/`, not `//`)."
            )
        value = 1.0 if smoothing is None else smoothing
        expected = _reference_probs(counts, value)
        row_sums = actual.double().sum(dim=1)
        otherwise = (
            f"`bigram_probs` is wrong for {what}: P[a, b] = (counts[a, b] + smoothing) / "
            "(sum over b' of counts[a, b'] + smoothing)."
        )
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5):
            otherwise += f" Each row must sum to 1; yours sum to {[round(s, 3) for s in row_sums.tolist()]}."
        if smoothing is None:
            otherwise += " The default smoothing is 1.0 (add-one smoothing)."
        compare(actual, expected, _probs_mistakes(counts, value), otherwise, atol=1e-6, rtol=1e-5)
    passed("bigram_probs", len(cases))


# --------------------------------------------------------------------------- Exercise 1.3: cross-entropy

#: Functions that would compute the answer (or its hard part) for the learner, per exercise.
_CROSS_ENTROPY_BUILTINS = (
    (F, "cross_entropy"),
    (F, "nll_loss"),
    (F, "log_softmax"),
    (torch, "log_softmax"),
    (torch, "logsumexp"),
    (torch.Tensor, "log_softmax"),
    (torch.Tensor, "logsumexp"),
)
_SAMPLING_BUILTINS = ((torch, "multinomial"), (torch.Tensor, "multinomial"))


@contextlib.contextmanager
def _refusing(builtins: tuple[tuple[Any, str], ...], exercise: str, instead: str) -> Iterator[None]:
    """Make ready-made library functions fail with a hint, for the duration of the learner's call."""
    saved = [(owner, name, vars(owner).get(name)) for owner, name in builtins]

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"`{exercise}` called {name}: this exercise is about writing it yourself, {instead}")

        return refused

    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse(name))
        yield
    finally:
        for owner, name, original in saved:
            if original is None:  # the method was inherited (torch.Tensor's from its C base class)
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def _without_library_cross_entropy() -> contextlib.AbstractContextManager[None]:
    return _refusing(
        _CROSS_ENTROPY_BUILTINS,
        "cross_entropy",
        "with max, exp, log, sum and indexing. (Outside this exercise, do use F.cross_entropy.)",
    )


def _cross_entropy_mistakes(logits: torch.Tensor, targets: torch.Tensor) -> Mistakes:
    x = logits.detach().double()
    n, v = x.shape
    rows = torch.arange(n)
    log_probs = x.log_softmax(dim=1)
    reference = -log_probs[rows, targets].mean()
    stable_without_max = x - torch.log(torch.exp(x - x.max(dim=1, keepdim=True).values).sum(dim=1, keepdim=True))
    mistakes: Mistakes = [
        (
            "Your loss is N times too large: you summed the per-row losses. Return their mean, so the "
            "loss does not grow with the batch size.",
            reference * n,
        ),
        (
            "Your loss has the wrong sign: cross-entropy is the NEGATIVE mean log-probability of the "
            "targets, a positive number (log-probabilities are ≤ 0).",
            -reference,
        ),
        (
            "You took the softmax (or log-sum-exp) over dim 0, down the batch. Each ROW of logits is one "
            "distribution over the vocabulary: reduce over dim=1 (or -1), with keepdim=True.",
            -x.log_softmax(dim=0)[rows, targets].mean(),
        ),
        (
            "You picked the wrong entries: logits[:, targets] is an (N, N) matrix, every row's logits at "
            "every target. You need one entry per row, row i at column targets[i]: "
            "log_probs[torch.arange(N), targets].",
            -log_probs[:, targets].mean(),
        ),
        (
            "Your loss ignores the targets: it scores the most likely token of each row (argmax), not the "
            "token that actually came next. Index with `targets`.",
            -log_probs.max(dim=1).values.mean(),
        ),
        (
            "You averaged over all N·V entries (e.g. (one_hot * log_probs).mean()): divide the sum by N, "
            "the number of rows, not by N·V.",
            reference / v,
        ),
        (
            "You subtracted the row maximum m inside exp but did not add it back: "
            "log Σ exp(x) = m + log Σ exp(x − m).",
            -stable_without_max[rows, targets].mean(),
        ),
        (
            "You returned the mean log-probability of the targets over all rows without the log-sum-exp "
            "term: log p = logit − log Σ exp(logits), not the logit itself.",
            -x[rows, targets].mean(),
        ),
    ]
    return mistakes


def _stability_hint(logits: torch.Tensor) -> str:
    return (
        f" Here the logits reach {logits.abs().max().item():g}: exp(1000) overflows to inf (float32 tops out "
        "near 3.4e38 ≈ exp(88)) and inf/inf is NaN, while exp(-1000) underflows to 0 and log(0) = -inf. "
        "Subtract each ROW's maximum before exp: log Σ exp(x) = m + log Σ exp(x − m) with m = x.max(dim=1, "
        "keepdim=True). Do not take log(softmax(x)) either: a tiny probability rounds to 0 first."
    )


def check_cross_entropy(cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 1.3: ``cross_entropy(logits, targets)`` must equal ``F.cross_entropy``, stably."""
    g = torch.Generator().manual_seed(13)
    rows_apart = torch.randn(4, 6, generator=g)
    rows_apart[:2] += 1000.0  # two rows near +1000, two near -1000: one global max is not enough
    rows_apart[2:] -= 1000.0
    cases = [  # (what, logits, targets)
        (
            "a (3, 4) batch: 3 positions, vocabulary of 4",
            torch.tensor([[2.0, 1.0, 0.1, -1.0], [0.5, 2.5, -0.3, 0.0], [-1.0, 0.0, 1.0, 3.0]]),
            torch.tensor([0, 2, 3]),
        ),
        ("a (5, 7) batch", 3 * torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)),
        ("a square (6, 6) batch", 2 * torch.randn(6, 6, generator=g), torch.tensor([5, 0, 3, 3, 1, 4])),
        (
            "a (40, 65) batch of character logits",
            torch.randn(40, 65, generator=g),
            torch.randint(65, (40,), generator=g),
        ),
        ("one position, (1, 10)", torch.randn(1, 10, generator=g), torch.tensor([7])),
        (
            "large logits ≈ 1000 (every row)",
            1000.0 + torch.randn(4, 5, generator=g),
            torch.tensor([1, 0, 4, 2]),
        ),
        (
            "logits [1000, 0, -1000] where the target has probability ≈ e^-1000",
            torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]]),
            torch.tensor([2, 2]),
        ),
        ("rows near +1000 and rows near -1000 in one batch", rows_apart, torch.tensor([0, 5, 2, 3])),
        (
            "a float64 (8, 3) batch",
            5 * torch.randn(8, 3, generator=g, dtype=torch.float64),
            torch.randint(3, (8,), generator=g),
        ),
    ]
    for what, logits, targets in cases:
        logits_before, targets_before = logits.clone(), targets.clone()
        with _without_library_cross_entropy():
            out = call(cross_entropy, "cross_entropy", logits, targets)
        if isinstance(out, (float, int)):
            raise AssertionError(
                "`cross_entropy` returned a Python number; return the tensor itself (no .item()), so that "
                "loss.backward() can compute gradients."
            )
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            raise AssertionError(
                f"`cross_entropy` returned a tensor of shape {tuple(out.shape)} for {what}; the loss is ONE "
                "number, a 0-dim tensor: take the .mean() over the per-position losses."
            )
        actual = expect_tensor(out, "cross_entropy", ())
        expect_unchanged(logits_before, logits, "cross_entropy", "logits")
        expect_unchanged(targets_before, targets, "cross_entropy", "targets")
        expected = F.cross_entropy(logits.double(), targets)
        otherwise = (
            f"`cross_entropy` is wrong for {what}: the mean over rows i of −log softmax(logits[i])[targets[i]]."
        )
        large = logits.abs().max() >= 100
        if large:
            otherwise += _stability_hint(logits)
        if not torch.isfinite(actual).all():
            why = _stability_hint(logits) if large else " Look for a log(0) or a 0/0 in your steps."
            raise AssertionError(f"`cross_entropy` returned {actual.item()} for {what}." + why)
        compare(actual, expected, _cross_entropy_mistakes(logits, targets), otherwise, atol=1e-4, rtol=1e-5)
    _check_cross_entropy_gradient(cross_entropy, g)
    passed("cross_entropy", len(cases) + 1)


def _check_cross_entropy_gradient(cross_entropy: Callable[..., torch.Tensor], g: torch.Generator) -> None:
    """The loss must be differentiable: its gradient is (softmax(logits) − one_hot(targets)) / N."""
    logits = (2 * torch.randn(5, 4, generator=g)).requires_grad_()
    targets = torch.tensor([0, 3, 1, 1, 2])
    with _without_library_cross_entropy():
        loss = call(cross_entropy, "cross_entropy", logits, targets)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise AssertionError(
            "The loss of `cross_entropy` has no gradient with respect to the logits: keep every step in "
            "torch (no .item(), .detach(), .numpy() or torch.tensor(...) around intermediate results)."
        )
    (grad,) = torch.autograd.grad(loss, logits)
    expected = (torch.softmax(logits.detach(), dim=1) - F.one_hot(targets, 4)) / 5
    expect_close(
        grad,
        expected,
        "The gradient of your loss is wrong, although its value is right: make sure no intermediate "
        "result is detached or rebuilt from numbers.",
        atol=1e-5,
    )


# --------------------------------------------------------------------------- Exercise 1.4: sampling


def _as_id_list(out: Any, n: int) -> list[int]:
    """Accept a list/tuple of ints or a 1-D tensor; return a plain list of ints."""
    if isinstance(out, torch.Tensor):
        if out.dim() != 1:
            raise AssertionError(
                f"`sample_bigram` returned a tensor of shape {tuple(out.shape)}; return a list of {n} ids."
            )
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise AssertionError(f"`sample_bigram` should return a list of ids, but returned {type(out).__name__}.")
    ids = []
    for item in out:
        if isinstance(item, torch.Tensor) and item.numel() == 1:
            item = item.item()
        if isinstance(item, bool) or not isinstance(item, int):
            raise AssertionError(
                f"`sample_bigram` returned a list holding {item!r} ({type(item).__name__}); each element must be "
                "an int id (call .item() on a one-element tensor)."
            )
        ids.append(item)
    if len(ids) != n:
        hint = ""
        if len(ids) == n + 1:
            hint = " Did you include start_id? Return only the n NEW ids."
        raise AssertionError(f"`sample_bigram` returned {len(ids)} ids for n={n}; expected {n}.{hint}")
    return ids


def _rounded(matrix: torch.Tensor) -> list[list[float]]:
    return [[round(p, 2) for p in row] for row in matrix.tolist()]


def _sample(sample_bigram: Callable[..., Any], probs: torch.Tensor, start_id: int, n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    instead = (
        "from uniform random numbers: u = torch.rand(1, generator=generator), then the number of "
        "cumulative probabilities ≤ u. (Outside this exercise, do use torch.multinomial.)"
    )
    with _refusing(_SAMPLING_BUILTINS, "sample_bigram", instead):
        out = call(sample_bigram, "sample_bigram", probs, start_id, n, generator)
    return _as_id_list(out, n)


def check_sample_bigram(sample_bigram: Callable[..., Any]) -> None:
    """Exercise 1.4: ``sample_bigram(probs, start_id, n, generator)`` must walk the bigram chain."""
    with torch.random.fork_rng(devices=[]):  # the learner's global RNG is left where it was
        # 1. A chain with no randomness: id a is always followed by cycle[a].
        cycle = torch.tensor([3, 4, 0, 1, 2])  # one cycle through all five: 2 → 0 → 3 → 1 → 4 → 2
        certain = F.one_hot(cycle, 5).double()
        expected, current = [], 2
        for _ in range(12):
            current = int(cycle[current])
            expected.append(current)
        before = certain.clone()
        actual = _sample(sample_bigram, certain, 2, 12, seed=0)
        expect_unchanged(before, certain, "sample_bigram", "probs")
        if actual != expected:
            transposed, current = [], 2
            for _ in range(12):
                current = int(torch.argmax(certain[:, current]))
                transposed.append(current)
            if actual == transposed:
                message = (
                    "You sampled from a COLUMN of probs: the distribution of the token after id a is the ROW "
                    "probs[a] (rows sum to 1)."
                )
            elif actual == [int(cycle[2])] * 12:
                message = (
                    "Every id was drawn from the row of start_id: after each draw, the id you just sampled "
                    "becomes the current token whose row you sample from next."
                )
            elif actual[1:] == expected[:-1]:
                message = "Your list starts with start_id: return only the n new ids, not the start."
            else:
                message = (
                    "`sample_bigram` did not follow the chain: the id after a must come from the row probs[a]. "
                    "With c = torch.cumsum(probs[a], 0) and u uniform in [0, 1), it is the number of entries "
                    "of c that are ≤ u, so an id whose probability is 1 is always the one drawn."
                )
            raise AssertionError(
                f"{message}\n(With probs where id a is always followed by {cycle.tolist()}[a], start_id=2 and "
                f"n=12, the ids are {expected}; yours were {actual}.)"
            )
        if _sample(sample_bigram, certain, 2, 0, seed=0) != []:
            raise AssertionError("`sample_bigram(probs, start_id, 0, generator)` should return an empty list.")

        # 2. A random chain: the frequencies of the transitions must match probs.
        probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
        n = 6000
        first = _sample(sample_bigram, probs, 0, n, seed=1234)
        path = torch.tensor([0, *first])
        transitions = torch.zeros(3, 3)
        transitions.index_put_((path[:-1], path[1:]), torch.ones(n), accumulate=True)
        observed = transitions / transitions.sum(dim=1, keepdim=True).clamp_min(1)
        if (observed - probs).abs().max() > 0.05:
            if bool((transitions.count_nonzero(dim=1) <= 1).all()):
                message = (
                    "Each token is always followed by the same id: you took the most likely next token "
                    "(argmax), which is greedy decoding, not sampling. Draw u = torch.rand(1, generator=generator) "
                    "and pick the id whose stretch of the cumulative probabilities contains u."
                )
            else:
                message = (
                    "The transitions you sampled do not follow probs: the id after a must be drawn from the "
                    "row probs[a], with those probabilities. With c = torch.cumsum(probs[a], 0), the id is "
                    "the number of entries of c that are ≤ u (id j when c[j-1] ≤ u < c[j])."
                )
            raise AssertionError(
                f"{message}\n(Over {n} draws from probs = {_rounded(probs)}, you went from each id to the next "
                f"with frequencies {_rounded(observed)}.)"
            )

        # 3. The generator must be the only source of randomness.
        torch.manual_seed(1)
        again = _sample(sample_bigram, probs, 0, 200, seed=1234)
        torch.manual_seed(2)
        once_more = _sample(sample_bigram, probs, 0, 200, seed=1234)
        if again != first[:200] or once_more != first[:200]:
            raise AssertionError(
                "Two calls with generators seeded alike gave different ids: draw every random number from "
                "the `generator` argument (torch.rand(1, generator=generator)), not from the global "
                "RNG, so that a seed reproduces a sample."
            )
        other = _sample(sample_bigram, probs, 0, 200, seed=99)
        if other == first[:200]:
            raise AssertionError(
                "Generators with different seeds gave the same ids: are you creating your own generator "
                "instead of using the one passed in?"
            )
    passed("sample_bigram", 5)
