"""Checks for chapter 6's exercises: the min-p filter, the repetition penalty, a text's log-probability.

Each check runs the learner's function on ordinary and edge cases (batched rows, negative logits,
ties at a threshold, repeated ids, a one-token text) and compares it with the reference in
``lal.sample``. When the answer is wrong it also computes what the classic mistakes give (a cut
against the absolute probability, one threshold for the whole batch, a penalty that divides
negative logits, a missing shift, …) and names the one the learner's output matches. All
randomness comes from local generators: a check never moves the learner's global RNG.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import Forbidden, Mistakes, call, compare, expect_tensor, expect_unchanged, first_mistake, passed
from lal.sample import min_p_filter, repetition_penalty, sequence_logprob


def _rule_no_reference(function: Callable[..., Any]) -> Forbidden:
    return Forbidden(
        what=f"lal.sample.{function.__name__}",
        why="the exercise is to write it yourself, and the check compares you with that very function",
        python_functions=(function,),
    )


# --------------------------------------------------------------------------- Exercise 6.1: min-p

_MIN_P_RULES = [_rule_no_reference(min_p_filter)]


def _min_p_cases() -> list[tuple[str, torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(61)
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # ratios to the top token: 0.3, 1, 0.1, 0.6
    flat = torch.tensor([0.0, 0.1, -0.2, 0.05, -1.5, 0.2])  # a row where the model is unsure
    peaked = torch.tensor([6.0, 0.1, -0.2, 0.05, 2.0, 0.2])  # a row where it is sure
    return [
        ("one row (V,) with probabilities 0.15, 0.5, 0.05, 0.3 and min_p = 0.5", probs.log(), 0.5),
        ("the same row with min_p = 0.2", probs.log(), 0.2),
        ("a row of negative logits [-1, -2, -3, -8] with min_p = 0.3", torch.tensor([-1.0, -2.0, -3.0, -8.0]), 0.3),
        ("the first row shifted by +40 (same probabilities) with min_p = 0.5", probs.log() + 40.0, 0.5),
        ("a batch (2, 6) of a peaked row and a flat row with min_p = 0.3", torch.stack([peaked, flat]), 0.3),
        ("a tie at the threshold: logits [1, 1, 0] with min_p = 1.0", torch.tensor([1.0, 1.0, 0.0]), 1.0),
        ("min_p = 0 (keep everything), with a very unlikely token", torch.tensor([3.0, 0.0, -30.0, 1.0]), 0.0),
        ("a (2, 3, 40) batch of random logits with min_p = 0.1", 3 * torch.randn(2, 3, 40, generator=generator), 0.1),
    ]


def _min_p_mistakes(logits: torch.Tensor, min_p: float) -> list[tuple[str, torch.Tensor]]:
    """(message, the mask of tokens a classic mistake removes)."""
    probs = F.softmax(logits.float(), dim=-1)
    top = probs.max(dim=-1, keepdim=True).values
    return [
        ("A token exactly at the threshold was removed: remove probabilities strictly below min_p × p_max "
         "(use <, not <=), so a tie stays and the top token always survives.", probs <= min_p * top),
        ("You used one threshold for the whole batch (the largest probability of all rows). Every row is its "
         "own distribution: take the max along the last axis, keepdim=True.", probs < min_p * probs.max()),
        ("You compared each probability with min_p itself. min-p is relative: the cut is min_p × the most "
         "likely token's probability, so it rises when the model is sure and falls when it is not.", probs < min_p),
        ("You compared the logits, not the probabilities: min_p × max(logit) means nothing for negative logits, "
         "and shifting every logit by a constant (which changes no probability) changes your answer. Take the "
         "softmax first.", logits < min_p * logits.max(dim=-1, keepdim=True).values),
        ("You removed the likely tokens and kept the unlikely ones: the condition is the other way round.",
         probs >= min_p * top),
    ]


def check_min_p_filter(candidate: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Exercise 6.1: ``min_p_filter(logits, min_p)`` sets tokens below min_p × p_max (per row) to -inf."""
    name = "min_p_filter"
    cases = _min_p_cases()
    for what, logits, min_p in cases:
        before = logits.clone()
        result = expect_tensor(call(candidate, name, logits, min_p, forbidden=_MIN_P_RULES), name, tuple(logits.shape))
        expect_unchanged(before, logits, name, "logits")
        expected = min_p_filter(logits, min_p)
        removed = torch.isneginf(result)
        expected_removed = torch.isneginf(expected)
        if torch.equal(removed, expected_removed) and torch.equal(result[~removed], logits[~removed]):
            continue
        if not bool(removed.any()) and bool(expected_removed.any()) and not torch.equal(result, logits):
            raise AssertionError(
                f"`{name}` removed nothing with -inf on {what}: a removed token's logit must be float('-inf') "
                "(probability exactly 0 after the softmax), not 0 or a small number, and the result must stay "
                "logits, not probabilities."
            )
        if torch.equal(removed, expected_removed):
            raise AssertionError(
                f"`{name}` removed the right tokens on {what} but changed the logits it kept: return the "
                "input logits unchanged where a token survives (no softmax, no renormalising)."
            )
        message = (first_mistake(removed, _min_p_mistakes(logits, min_p), torch.equal)
                   or f"`{name}` removed the wrong tokens.")
        raise AssertionError(
            f"{message}\n(On {what}: expected to keep {_kept(expected)}, you kept {_kept(result)}.)"
        )
    passed(name, len(cases))


def _kept(logits: torch.Tensor) -> str:
    if logits.dim() == 1:
        return str(torch.isfinite(logits).nonzero().flatten().tolist())
    return f"{int(torch.isfinite(logits).sum())} of {logits.numel()} entries"


# --------------------------------------------------------------------------- Exercise 6.2: repetition penalty

_PENALTY_RULES = [_rule_no_reference(repetition_penalty)]


def _penalty_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(62)
    mixed = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.5, 4.0])
    return [
        ("positive logits seen once (ids [0, 4, 7], penalty 2)", mixed, torch.tensor([0, 4, 7]), 2.0),
        ("negative logits seen once (ids [1, 3, 6], penalty 2)", mixed, torch.tensor([1, 3, 6]), 2.0),
        ("an id seen four times (ids [2, 2, 3, 2, 2], penalty 1.5)", mixed, torch.tensor([2, 2, 3, 2, 2]), 1.5),
        ("a zero logit and mixed signs (ids [5, 1, 7, 1], penalty 1.3)", mixed, torch.tensor([5, 1, 7, 1]), 1.3),
        ("penalty 1.0 (must change nothing)", mixed, torch.tensor([0, 1, 2, 3]), 1.0),
        ("no previous ids (an empty tensor)", mixed, torch.tensor([], dtype=torch.long), 1.8),
        ("a penalty below 1 (0.5, which encourages repeats)", mixed, torch.tensor([0, 3, 3]), 0.5),
        ("65 random logits and 30 random ids, penalty 1.2", 2 * torch.randn(65, generator=generator),
         torch.randint(0, 65, (30,), generator=generator), 1.2),
    ]


def _penalty_mistakes(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> Mistakes:
    distinct = torch.unique(ids)
    counts = torch.bincount(ids, minlength=logits.numel()).to(logits.dtype)  # (V,)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[distinct] = True
    per_occurrence = torch.where(logits > 0, logits / penalty**counts, logits * penalty**counts)
    return [
        ("Negative logits moved up: dividing -2 by 1.5 gives -1.33, a *larger* logit, so a repeated token with a "
         "negative logit became more likely. Multiply negative logits by the penalty and divide positive ones.",
         torch.where(seen, logits / penalty, logits)),
        ("You applied the penalty once per occurrence (a loop over previous_ids): an id seen four times was "
         "divided four times. Penalise each distinct id once (torch.unique, or a set).",
         per_occurrence),
        ("The directions are swapped: positive logits must be divided by the penalty and negative ones multiplied.",
         torch.where(seen, torch.where(logits > 0, logits * penalty, logits / penalty), logits)),
        ("Every logit was multiplied by the penalty: that raises positive logits. Divide the positive ones.",
         torch.where(seen, logits * penalty, logits)),
        ("You penalised every token, not only the ids in previous_ids.",
         torch.where(logits > 0, logits / penalty, logits * penalty)),
        ("You penalised the tokens that were NOT in previous_ids.",
         torch.where(~seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)),
    ]


def check_repetition_penalty(candidate: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """Exercise 6.2: ``repetition_penalty(logits, previous_ids, penalty)``, CTRL's rule, once per distinct id."""
    name = "repetition_penalty"
    cases = _penalty_cases()
    for what, logits, ids, penalty in cases:
        logits_before, ids_before = logits.clone(), ids.clone()
        result = expect_tensor(call(candidate, name, logits, ids, penalty, forbidden=_PENALTY_RULES), name,
                               tuple(logits.shape))
        expect_unchanged(logits_before, logits, name, "logits")
        expect_unchanged(ids_before, ids, name, "previous_ids")
        expected = repetition_penalty(logits, ids, penalty)
        otherwise = (f"`{name}` is wrong on {what}. Each distinct id in previous_ids: logit / penalty when "
                     "positive, logit × penalty when negative; every other logit unchanged.")
        if penalty == 1.0 or ids.numel() == 0:
            otherwise = f"`{name}` changed the logits on {what}: with nothing to penalise it must return them as they are."
        compare(result, expected, _penalty_mistakes(logits, ids, penalty), otherwise, atol=1e-6, rtol=1e-5)
    passed(name, len(cases))


# --------------------------------------------------------------------------- Exercise 6.3: log-probability of a text

_LOGPROB_RULES = [
    Forbidden(
        what="F.cross_entropy / F.nll_loss (or nn.CrossEntropyLoss)",
        why="the exercise asks you to pick each token's log-probability yourself, with log_softmax and indexing",
        torch_names=("cross_entropy", "nll_loss"),
    ),
    _rule_no_reference(sequence_logprob),
]


def _logprob_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(63)
    logits = torch.randn(9, 13, generator=generator)
    ids = torch.randint(0, 13, (9,), generator=generator)
    return [
        ("T = 9 random logits over V = 13", logits, ids),
        ("T = 2 (one scored token)", torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]), torch.tensor([2, 1])),
        ("T = 1 (nothing to score: the answer is 0.0)", torch.randn(1, 5, generator=generator), torch.tensor([3])),
        ("confident logits of size ±200 (log of a softmax underflows here)", 200 * logits, ids),
        ("T = 40 over V = 65, float64", torch.randn(40, 65, generator=generator, dtype=torch.float64),
         torch.randint(0, 65, (40,), generator=generator)),
    ]


def _logprob_mistakes(logits: torch.Tensor, ids: torch.Tensor) -> list[tuple[str, float]]:
    log_probs = F.log_softmax(logits.double(), dim=-1)  # (T, V)
    rows = torch.arange(logits.size(0))
    aligned = log_probs[rows, ids]  # (T,): row t scoring token t (no shift)
    scored = log_probs[:-1].gather(-1, ids[1:, None]).squeeze(-1)  # (T - 1,): the right terms
    mistakes = [
        ("You scored row t against token t for every t, the first token included (no shift). The first token "
         "has no prediction before it, and row t − 1 predicts token t: pair logits[:-1] with ids[1:].",
         float(aligned.sum())),
        ("You dropped the first token but did not shift: row t − 1, not row t, predicts token t.",
         float(aligned[1:].sum())),
        ("The shift goes the wrong way (logits[1:] with ids[:-1]): row t − 1 predicts token t, so pair "
         "logits[:-1] with ids[1:].", float(log_probs[1:].gather(-1, ids[:-1, None]).sum())),
        ("You added probabilities (softmax) instead of log-probabilities (log_softmax).",
         float(F.softmax(logits[:-1].double(), dim=-1).gather(-1, ids[1:, None]).sum())),
        ("You averaged the log-probabilities: the exercise asks for their sum (the log of the product of "
         "the probabilities).", float(scored.mean()) if scored.numel() else math.nan),
        ("Your answer has the wrong sign: that is the negative log-likelihood (a loss). Return the "
         "log-probability itself, which is ≤ 0.", float(-scored.sum())),
        ("You summed the raw logits: a logit is not a log-probability until the log-sum-exp of its row is "
         "subtracted (log_softmax).", float(logits[:-1].double().gather(-1, ids[1:, None]).sum())),
        ("You took the softmax over the wrong axis (dim=0, across positions): each row is one distribution "
         "over the vocabulary, dim=-1.", float(F.log_softmax(logits[:-1].double(), dim=0).gather(-1, ids[1:, None]).sum())),
        ("Your answer is in bits (log base 2): use the natural log, as log_softmax does.",
         float(scored.sum()) / math.log(2)),
    ]
    return mistakes


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise AssertionError(
                f"`{name}` returned a tensor of shape {tuple(value.shape)}: add up the per-token log-probabilities "
                "and return one number (a float: .sum().item())."
            )
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise AssertionError(f"`{name}` should return a float, but returned {type(value).__name__}.")


def check_sequence_logprob(candidate: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    """Exercise 6.3: ``sequence_logprob(logits, ids)`` = Σ_{t≥1} log softmax(logits[t−1])[ids[t]]."""
    name = "sequence_logprob"
    cases = _logprob_cases()
    for what, logits, ids in cases:
        before = logits.clone()
        value = _as_float(call(candidate, name, logits, ids, forbidden=_LOGPROB_RULES), name)
        expect_unchanged(before, logits, name, "logits")
        expected = sequence_logprob(logits, ids)
        if math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-4):
            continue
        if math.isinf(value) or math.isnan(value):
            raise AssertionError(
                f"`{name}` returned {value} on {what}. torch.log(F.softmax(x)) underflows: a probability below "
                "1e-38 becomes 0 and its log -inf. F.log_softmax computes x − logsumexp(x) directly and stays finite."
            )
        if ids.numel() == 1:
            raise AssertionError(
                f"`{name}` returned {value:.4g} on {what}. With one token nothing is predicted: the sum over t ≥ 1 "
                "is empty, so the answer is 0.0."
            )
        message = first_mistake(value, _logprob_mistakes(logits, ids),
                                lambda answer, wrong: math.isclose(answer, wrong, rel_tol=1e-5, abs_tol=1e-4))
        message = message or f"`{name}` is wrong on {what}."
        raise AssertionError(f"{message}\n(On {what}: expected {expected:.4f}, got {value:.4f}.)")
    passed(name, len(cases))
