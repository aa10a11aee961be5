"""Checks for chapter 1's exercises: cross-entropy, label-smoothed cross-entropy, sampling by hand.

Each check compares the learner's function with a reference written with PyTorch on ordinary and
edge cases. When the answer is wrong, it also computes what the classic mistakes give (a sum
instead of a mean, a softmax over the wrong dimension, an ``exp`` that overflows, the smoothing
spread over V − 1 classes, …) and names the one the learner's output matches, so the message
says what to fix, not only that something is off. Each exercise's rules (no ``F.cross_entropy``,
no ``torch.multinomial``) are enforced by :class:`lal.checks.common.Forbidden`. All randomness
comes from local generators: a check never moves the learner's global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import (
    Forbidden,
    Mistakes,
    call,
    compare,
    expect_close,
    expect_tensor,
    expect_unchanged,
    passed,
)

# --------------------------------------------------------------------------- Exercise 1.1: cross-entropy

#: What the two cross-entropy exercises rebuild: the library's loss and its hard part, in every spelling
#: (``F.log_softmax``, ``torch.log_softmax``, ``x.log_softmax()``, ``torch.special.log_softmax``, ...).
NO_LIBRARY_CROSS_ENTROPY = Forbidden(
    what="a library log-softmax, log-sum-exp or cross-entropy",
    why="the exercise is about writing it yourself with max, exp, log, sum and indexing "
    "(outside this exercise, do use F.cross_entropy)",
    torch_names=("cross_entropy", "nll_loss", "log_softmax", "logsumexp", "cross_entropy_loss", "kl_div"),
)


_SHAPE_HINT = (
    "A shape error here usually means a max or sum taken without keepdim=True: logits.max(dim=1) has "
    "shape (N,), which cannot broadcast against the (N, V) logits; keepdim=True gives (N, 1)."
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
    if n == v:  # only a square batch lets a max or sum without keepdim broadcast silently (over the wrong axis)
        m = x.max(dim=1).values  # (N,): broadcasts as a ROW, so column j gets row j's max
        no_keepdim = x - (m + torch.log(torch.exp(x - m).sum(dim=1)))
        mistakes.append((
            "A max or sum without keepdim=True: its shape (N,) broadcasts along the wrong axis (column j "
            "gets row j's value; a square batch hides the shape error). Use keepdim=True, shape (N, 1).",
            -no_keepdim[rows, targets].mean(),
        ))
    return mistakes


def _stability_hint(logits: torch.Tensor) -> str:
    return (
        f" Here the logits reach {logits.abs().max().item():g}: exp(1000) overflows to inf (float32 tops out "
        "near 3.4e38 ≈ exp(88)) and inf/inf is NaN, while exp(-1000) underflows to 0 and log(0) = -inf. "
        "Subtract each ROW's maximum before exp: log Σ exp(x) = m + log Σ exp(x − m) with m = x.max(dim=1, "
        "keepdim=True). Do not take log(softmax(x)) either: a tiny probability rounds to 0 first."
    )


def _loss_cases(g: torch.Generator) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(what, logits, targets): ordinary batches, a square one, one row, and logits of ±1000."""
    rows_apart = torch.randn(4, 6, generator=g)
    rows_apart[:2] += 1000.0  # two rows near +1000, two near -1000: one global max is not enough
    rows_apart[2:] -= 1000.0
    return [
        (
            "a (3, 4) batch: 3 positions, vocabulary of 4",
            torch.tensor([[2.0, 1.0, 0.1, -1.0], [0.5, 2.5, -0.3, 0.0], [-1.0, 0.0, 1.0, 3.0]]),
            torch.tensor([0, 2, 3]),
        ),
        ("a (5, 7) batch", 3 * torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)),
        ("a square (6, 6) batch", 2 * torch.randn(6, 6, generator=g), torch.tensor([5, 0, 3, 3, 1, 4])),
        ("a (40, 65) batch of character logits", torch.randn(40, 65, generator=g), torch.randint(65, (40,), generator=g)),
        ("a (3, 1000) batch: a vocabulary of 1,000", torch.randn(3, 1000, generator=g), torch.tensor([999, 0, 517])),
        ("one position, (1, 10)", torch.randn(1, 10, generator=g), torch.tensor([7])),
        ("large logits ≈ 1000 (every row)", 1000.0 + torch.randn(4, 5, generator=g), torch.tensor([1, 0, 4, 2])),
        (
            "logits [1000, 0, -1000] where the target has probability ≈ e^-1000",
            torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]]),
            torch.tensor([2, 2]),
        ),
        ("rows near +1000 and rows near -1000 in one batch", rows_apart, torch.tensor([0, 5, 2, 3])),
        ("a float64 (8, 3) batch", 5 * torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(3, (8,), generator=g)),
    ]


def _check_loss(
    candidate: Callable[..., torch.Tensor],
    name: str,
    cases: list[tuple[str, torch.Tensor, torch.Tensor, tuple[Any, ...]]],
    reference: Callable[..., torch.Tensor],
    mistakes: Callable[..., Mistakes],
    formula: str,
) -> None:
    """Run a loss exercise on ``cases`` (what, logits, targets, extra arguments): value, shape, stability."""
    for what, logits, targets, extra in cases:
        logits_before, targets_before = logits.clone(), targets.clone()
        out = call(candidate, name, logits, targets, *extra, hint=_SHAPE_HINT, forbidden=[NO_LIBRARY_CROSS_ENTROPY])
        if isinstance(out, (float, int)):
            raise AssertionError(
                f"`{name}` returned a Python number; return the tensor itself (no .item()), so that "
                "loss.backward() can compute gradients."
            )
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            raise AssertionError(
                f"`{name}` returned a tensor of shape {tuple(out.shape)} for {what}; the loss is ONE "
                "number, a 0-dim tensor: take the .mean() over the per-position losses."
            )
        actual = expect_tensor(out, name, ())
        expect_unchanged(logits_before, logits, name, "logits")
        expect_unchanged(targets_before, targets, name, "targets")
        expected = reference(logits.double(), targets, *extra)
        otherwise = f"`{name}` is wrong for {what}: {formula}"
        large = logits.abs().max() >= 100
        if large:
            otherwise += _stability_hint(logits)
        if not torch.isfinite(actual).all():
            why = _stability_hint(logits) if large else " Look for a log(0) or a 0/0 in your steps."
            raise AssertionError(f"`{name}` returned {actual.item()} for {what}." + why)
        compare(actual, expected, mistakes(logits, targets, *extra), otherwise, atol=1e-4, rtol=1e-5)


def _check_loss_gradient(
    candidate: Callable[..., torch.Tensor], name: str, g: torch.Generator, extra: tuple[Any, ...], target_dist: Callable[..., torch.Tensor]
) -> None:
    """The loss must be differentiable: its gradient is (softmax(logits) − target distribution) / N."""
    logits = (2 * torch.randn(5, 4, generator=g)).requires_grad_()
    targets = torch.tensor([0, 3, 1, 1, 2])
    loss = call(candidate, name, logits, targets, *extra, hint=_SHAPE_HINT, forbidden=[NO_LIBRARY_CROSS_ENTROPY])
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise AssertionError(
            f"The loss of `{name}` has no gradient with respect to the logits: keep every step in "
            "torch (no .item(), .detach(), .numpy() or torch.tensor(...) around intermediate results)."
        )
    (grad,) = torch.autograd.grad(loss, logits)
    expected = (torch.softmax(logits.detach(), dim=1) - target_dist(targets, 4)) / 5
    expect_close(
        grad,
        expected,
        "The gradient of your loss is wrong, although its value is right: make sure no intermediate "
        "result is detached or rebuilt from numbers.",
        atol=1e-5,
    )


def check_cross_entropy(cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 1.1: ``cross_entropy(logits, targets)`` must equal ``F.cross_entropy``, stably."""
    g = torch.Generator().manual_seed(13)
    cases = [(what, logits, targets, ()) for what, logits, targets in _loss_cases(g)]
    _check_loss(
        cross_entropy,
        "cross_entropy",
        cases,
        F.cross_entropy,
        _cross_entropy_mistakes,
        "the mean over rows i of −log softmax(logits[i])[targets[i]].",
    )
    _check_loss_gradient(cross_entropy, "cross_entropy", g, (), lambda t, v: F.one_hot(t, v).float())
    passed("cross_entropy", len(cases) + 1)


# --------------------------------------------------------------------------- Exercise 1.2: label smoothing


def _smoothed_reference(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def _smoothing_mistakes(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> Mistakes:
    x = logits.detach().double()
    n, v = x.shape
    rows = torch.arange(n)
    log_probs = x.log_softmax(dim=1)
    nll = -log_probs[rows, targets]  # (N,)
    all_classes = -log_probs.sum(dim=1)  # (N,): Σ_j −log p_j
    others = all_classes - nll
    mistakes: Mistakes = []
    if v > 1:
        mistakes.append((
            f"You spread the smoothing over the V − 1 OTHER tokens (ε/(V−1) each, the target keeps 1 − ε). "
            "This exercise (and F.cross_entropy's label_smoothing) spreads ε over ALL V tokens, the target "
            "included: the target gets 1 − ε + ε/V, every other token ε/V.",
            ((1 - smoothing) * nll + smoothing / (v - 1) * others).mean(),
        ))
    mistakes += [
        (
            "You summed −log p over the V tokens for the smoothing term instead of averaging: the uniform "
            "part of the target puts ε/V on each token, so the term is ε · mean_j(−log p_j).",
            ((1 - smoothing) * nll + smoothing * all_classes).mean(),
        ),
        (
            "The plain cross-entropy is missing its factor (1 − ε): the smoothed target gives the true "
            "token 1 − ε (+ its ε/V share), so loss = (1 − ε)·(−log p_target) + ε·mean_j(−log p_j).",
            (nll + smoothing * all_classes / v).mean(),
        ),
        (
            f"Your loss equals the plain cross-entropy: the smoothing (ε = {smoothing:g}) was ignored.",
            nll.mean(),
        ),
        (
            "You swapped the weights: ε goes with the uniform term, 1 − ε with the target's −log p.",
            (smoothing * nll + (1 - smoothing) * all_classes / v).mean(),
        ),
        (
            "Your loss is N times too large: you summed over the rows instead of taking their mean.",
            ((1 - smoothing) * nll + smoothing * all_classes / v).sum(),
        ),
    ]
    return [(m, value) for m, value in mistakes if smoothing != 0 or "ignored" not in m]


def check_label_smoothed_cross_entropy(
    label_smoothed_cross_entropy: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> None:
    """Exercise 1.2: ``label_smoothed_cross_entropy(logits, targets, smoothing)`` must equal
    ``F.cross_entropy(logits, targets, label_smoothing=smoothing)``, stably."""
    g = torch.Generator().manual_seed(14)
    smoothings = [0.1, 0.25, 0.0, 0.05, 1.0, 0.3, 0.1, 0.2, 0.1, 0.4]
    cases = [
        (f"{what}, smoothing={eps:g}", logits, targets, (eps,))
        for (what, logits, targets), eps in zip(_loss_cases(g), smoothings)
    ]
    cases.append(("a (4, 2) batch: two tokens, smoothing=0.5", torch.randn(4, 2, generator=g), torch.tensor([0, 1, 1, 0]), (0.5,)))
    _check_loss(
        label_smoothed_cross_entropy,
        "label_smoothed_cross_entropy",
        cases,
        _smoothed_reference,
        _smoothing_mistakes,
        "the mean over rows of (1 − ε)·(−log p[target]) + ε·mean over all V tokens of (−log p).",
    )
    _check_loss_gradient(
        label_smoothed_cross_entropy,
        "label_smoothed_cross_entropy",
        g,
        (0.2,),
        lambda t, v: 0.8 * F.one_hot(t, v).float() + 0.2 / v,
    )
    passed("label_smoothed_cross_entropy", len(cases) + 1)


# --------------------------------------------------------------------------- Exercise 1.3: sampling


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


NO_MULTINOMIAL = Forbidden(
    what="torch.multinomial",
    why="the exercise is about drawing from uniform random numbers: u = torch.rand(1, generator=generator), "
    "then the number of cumulative probabilities ≤ u (outside this exercise, do use torch.multinomial)",
    torch_names=("multinomial",),
)
_CLAMP_HINT = (
    "An index out of range here usually means u was above the last cumulative sum (a row that sums to "
    "0.999 after rounding, or 0.99999994 in float32), which gives id V: clamp the id to at most V − 1."
)


def _sample(sample_bigram: Callable[..., Any], probs: torch.Tensor, start_id: int, n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    out = call(sample_bigram, "sample_bigram", probs, start_id, n, generator, hint=_CLAMP_HINT, forbidden=[NO_MULTINOMIAL])
    ids = _as_id_list(out, n)
    outside = [i for i in ids if not 0 <= i < len(probs)]
    if outside:
        raise AssertionError(
            f"`sample_bigram` returned id {outside[0]}, but the ids of a ({len(probs)}, {len(probs)}) table go "
            f"from 0 to {len(probs) - 1}. {_CLAMP_HINT}"
        )
    return ids


def _column_cumsum_walk(probs: torch.Tensor, start_id: int, n: int) -> list[int]:
    """The ids when the cumulative sums run down the columns and u is 0.5 (what such code draws on a 0/1 table)."""
    cumulative = torch.cumsum(probs, dim=0)
    last = len(probs) - 1
    return _walk(cumulative, start_id, n, lambda row: min(int((row <= 0.5).sum()), last))


def _walk(probs: torch.Tensor, start_id: int, n: int, choose: Callable[[torch.Tensor], int]) -> list[int]:
    ids, current = [], start_id
    for _ in range(n):
        current = choose(probs[current])
        ids.append(current)
    return ids


def check_sample_bigram(sample_bigram: Callable[..., Any]) -> None:
    """Exercise 1.3: ``sample_bigram(probs, start_id, n, generator)`` must walk the bigram chain."""
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
            elif actual == _walk(certain, 2, 12, lambda row: min(int(torch.argmax(row)) + 1, 4)):
                message = (
                    "Your ids are one too high: the sampled id is the NUMBER of cumulative sums that are ≤ u "
                    "(id j when c[j − 1] ≤ u < c[j]), with no + 1 — id 0 is drawn when u < c[0]."
                )
            elif actual == _column_cumsum_walk(certain, 2, 12):
                message = (
                    "You took the cumulative sum down the COLUMNS (dim=0): each ROW is a distribution, so "
                    "cumsum along it, torch.cumsum(probs, dim=1) (or torch.cumsum(probs[a], 0))."
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
            deterministic = bool((transitions.count_nonzero(dim=1) <= 1).all())
            seeds_agree = deterministic and all(
                _sample(sample_bigram, probs, 0, 200, seed=seed) == first[:200] for seed in (1, 2, 3, 4)
            )
            if seeds_agree and first == _walk(probs, 0, n, lambda row: int(torch.argmax(row))):
                message = (
                    "Each token is always followed by its most likely successor, whatever the seed: you took "
                    "the argmax, which is greedy decoding, not sampling. Draw u = torch.rand(1, generator=generator) "
                    "and pick the id whose stretch of the cumulative probabilities contains u."
                )
            elif deterministic:
                message = (
                    "Each token is always followed by the same id within one call (though other seeds change "
                    "it): you drew ONE random number u, before the loop, and reused it for every step. Draw a "
                    "new u = torch.rand(1, generator=generator) inside the loop, once per token."
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
        # 4. Rows that sum to a little less than 1 (probabilities rounded to 3 decimals): now and then u
        #    lands above the last cumulative sum, and the id must still be a valid one (the last).
        rounded = torch.tensor([[0.25, 0.25, 0.499]] * 3)
        rare = _sample(sample_bigram, rounded, 0, 10000, seed=7)
        if rare.count(2) < 0.45 * len(rare):
            raise AssertionError(
                "On rows that sum to 0.999 (probabilities rounded to three decimals), your ids drift away "
                "from the probabilities: keep the rule 'the number of cumulative sums ≤ u', and clamp it "
                "to V − 1 for the rare u above the last sum."
            )
    passed("sample_bigram", 6)
