"""Chapter 6's classic mistakes: every function here must fail its check.

``MESSAGES`` gives, for each function, words its failure message must contain: the check has to
name the mistake, not only notice that something is off (``BROKEN`` pairs them, as
tests/broken/README.md describes).
"""

import re

import torch
import torch.nn.functional as F

import lal.sample

# --------------------------------------------------------------------------- min_p_filter


def absolute_threshold(logits, min_p):
    """Compares each probability with min_p itself, not with min_p × the top probability."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p, float("-inf"))


def one_threshold_for_the_batch(logits, min_p):
    """Takes the max over the whole batch, so a flat row is cut by a peaked row's threshold."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


def removes_ties_at_the_threshold(logits, min_p):
    """`<=` instead of `<`: a token exactly at the threshold (even the top one) is removed."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill(probs <= min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def compares_logits(logits, min_p):
    """Applies min_p to the logits instead of the probabilities."""
    return logits.masked_fill(logits < min_p * logits.max(dim=-1, keepdim=True).values, float("-inf"))


def filters_in_place(logits, min_p):
    """Right tokens, but writes -inf into the caller's tensor."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill_(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def zero_instead_of_minus_inf(logits, min_p):
    """Sets removed logits to 0, which keeps them possible (exp(0) = 1)."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)


def returns_probabilities(logits, min_p):
    """Returns the filtered probabilities, not logits."""
    probs = F.softmax(logits, dim=-1)
    return probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def calls_the_reference_min_p(logits, min_p):
    """Calls lal's own min_p_filter."""
    return lal.sample.min_p_filter(logits, min_p)


# --------------------------------------------------------------------------- repetition_penalty


def divides_negative_logits(logits, previous_ids, penalty):
    """Divides every seen logit by the penalty, so negative ones move up."""
    result = logits.clone()
    ids = torch.unique(previous_ids)
    result[ids] = result[ids] / penalty
    return result


def penalty_per_occurrence(logits, previous_ids, penalty):
    """Loops over previous_ids, penalising an id once for every time it occurred."""
    result = logits.clone()
    for token in previous_ids.tolist():
        result[token] = result[token] / penalty if result[token] > 0 else result[token] * penalty
    return result


def swapped_directions(logits, previous_ids, penalty):
    """Multiplies positive logits and divides negative ones."""
    result = logits.clone()
    ids = torch.unique(previous_ids)
    seen = result[ids]
    result[ids] = torch.where(seen > 0, seen * penalty, seen / penalty)
    return result


def penalises_every_token(logits, previous_ids, penalty):
    """Ignores previous_ids and pushes every logit down."""
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def mutates_the_logits(logits, previous_ids, penalty):
    """Right numbers, written into the caller's tensor."""
    ids = torch.unique(previous_ids)
    seen = logits[ids]
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def calls_the_reference_penalty(logits, previous_ids, penalty):
    """Calls lal's own repetition_penalty."""
    return lal.sample.repetition_penalty(logits, previous_ids, penalty)


# --------------------------------------------------------------------------- sequence_logprob


def includes_the_first_token(logits, ids):
    """Scores row t against token t for every t: no shift, and the first token counted."""
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs[torch.arange(len(ids)), ids].sum().item()


def drops_first_but_no_shift(logits, ids):
    """Skips t = 0 but still scores row t against token t."""
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs[torch.arange(1, len(ids)), ids[1:]].sum().item()


def shift_the_wrong_way(logits, ids):
    """Pairs logits[1:] with ids[:-1]."""
    log_probs = F.log_softmax(logits[1:], dim=-1)
    return log_probs.gather(-1, ids[:-1, None]).sum().item()


def softmax_not_log_softmax(logits, ids):
    """Adds probabilities instead of log-probabilities."""
    probs = F.softmax(logits[:-1], dim=-1)
    return probs.gather(-1, ids[1:, None]).sum().item()


def mean_not_sum(logits, ids):
    """Averages the log-probabilities (and gives nan for a single token)."""
    log_probs = F.log_softmax(logits[:-1], dim=-1)
    return log_probs.gather(-1, ids[1:, None]).mean().item()


def log_of_softmax(logits, ids):
    """torch.log(F.softmax(...)): -inf once a probability underflows."""
    log_probs = torch.log(F.softmax(logits[:-1], dim=-1))
    return log_probs.gather(-1, ids[1:, None]).sum().item()


def negative_log_likelihood(logits, ids):
    """Returns the loss (−log p) instead of the log-probability."""
    log_probs = F.log_softmax(logits[:-1], dim=-1)
    return -log_probs.gather(-1, ids[1:, None]).sum().item()


def uses_cross_entropy(logits, ids):
    """Calls F.cross_entropy, which the exercise forbids."""
    if len(ids) == 1:
        return 0.0
    return -F.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()


def no_sum(logits, ids):
    """Returns the per-token log-probabilities, not their sum."""
    return F.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None]).squeeze(-1)


_FUNCTIONS = {
    "check_min_p_filter": [
        absolute_threshold,
        one_threshold_for_the_batch,
        removes_ties_at_the_threshold,
        compares_logits,
        filters_in_place,
        zero_instead_of_minus_inf,
        returns_probabilities,
        calls_the_reference_min_p,
    ],
    "check_repetition_penalty": [
        divides_negative_logits,
        penalty_per_occurrence,
        swapped_directions,
        penalises_every_token,
        mutates_the_logits,
        calls_the_reference_penalty,
    ],
    "check_sequence_logprob": [
        includes_the_first_token,
        drops_first_but_no_shift,
        shift_the_wrong_way,
        softmax_not_log_softmax,
        mean_not_sum,
        log_of_softmax,
        negative_log_likelihood,
        uses_cross_entropy,
        no_sum,
    ],
}

MESSAGES = {
    absolute_threshold: "compared each probability with min_p itself",
    one_threshold_for_the_batch: "one threshold for the whole batch",
    removes_ties_at_the_threshold: "exactly at the threshold",
    compares_logits: "compared the logits",
    filters_in_place: "changed its input `logits` in place",
    zero_instead_of_minus_inf: "removed nothing with -inf",
    returns_probabilities: "changed the logits it kept",
    calls_the_reference_min_p: "calls lal.sample.min_p_filter",
    divides_negative_logits: "Negative logits moved up",
    penalty_per_occurrence: "once per occurrence",
    swapped_directions: "directions are swapped",
    penalises_every_token: "penalised every token",
    mutates_the_logits: "changed its input `logits` in place",
    calls_the_reference_penalty: "calls lal.sample.repetition_penalty",
    includes_the_first_token: "first token included",
    drops_first_but_no_shift: "did not shift",
    shift_the_wrong_way: "shift goes the wrong way",
    softmax_not_log_softmax: "added probabilities",
    mean_not_sum: "averaged the log-probabilities",
    log_of_softmax: "underflows",
    negative_log_likelihood: "wrong sign",
    uses_cross_entropy: "calls F.cross_entropy",
    no_sum: "returned a tensor of shape",
}

BROKEN = {
    check: [(function, re.escape(MESSAGES[function])) for function in functions]
    for check, functions in _FUNCTIONS.items()
}
