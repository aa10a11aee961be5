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


# --------------------------------------------------------------------------- cached_greedy


def _greedy_with_bugs(model, prompt_ids, n_new, *, position=None, mask_square=False, only_self=False, scale=True,
                      final_norm=True, recompute=False):
    """A hand-kept cache with one bug switched on (the shared body of the broken answers below)."""
    h, config = model.transformer, model.config
    H, C = config.n_head, config.n_embd
    D = C // H
    keys, values = [torch.empty(1, H, 0, D) for _ in h.h], [torch.empty(1, H, 0, D) for _ in h.h]
    sequence, new_ids = list(prompt_ids), []
    with torch.no_grad():
        for t in range(len(prompt_ids) + n_new - 1):
            if recompute:  # no cache: the whole sequence so far, every step
                keys, values = [torch.empty(1, H, 0, D) for _ in h.h], [torch.empty(1, H, 0, D) for _ in h.h]
                feed = range(t + 1)
            else:
                feed = [t]
            for s in feed:
                pos = t if position is None or t < len(prompt_ids) else position(t)
                x = h.wte(torch.tensor([[sequence[s]]])) + h.wpe(torch.tensor([pos if not recompute else s]))
                for layer, block in enumerate(h.h):
                    q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)
                    q, k, v = (z.view(1, 1, H, D).transpose(1, 2) for z in (q, k, v))
                    keys[layer] = torch.cat([keys[layer], k], dim=2)
                    values[layer] = torch.cat([values[layer], v], dim=2)
                    K, V = (k, v) if only_self else (keys[layer], values[layer])
                    if mask_square:
                        y = F.scaled_dot_product_attention(q, K, V, is_causal=True)
                    else:
                        y = F.softmax(q @ K.transpose(-2, -1) / (D**0.5 if scale else 1.0), dim=-1) @ V
                    x = x + block.attn.c_proj(y.transpose(1, 2).reshape(1, 1, C))
                    x = x + block.mlp(block.ln_2(x))
            if t >= len(prompt_ids) - 1:
                new_ids.append(int(model.lm_head(h.ln_f(x) if final_norm else x)[0, -1].argmax()))
                sequence.append(new_ids[-1])
    return new_ids


def new_tokens_at_position_zero(model, prompt_ids, n_new):
    """wpe(torch.arange(1)) for each fed token: every new token sits at position 0."""
    return _greedy_with_bugs(model, prompt_ids, n_new, position=lambda t: 0)


def one_position_too_far(model, prompt_ids, n_new):
    """Gives the token after t cached ones position t + 1."""
    return _greedy_with_bugs(model, prompt_ids, n_new, position=lambda t: min(t + 1, model.config.block_size - 1))


def square_mask_on_one_query(model, prompt_ids, n_new):
    """is_causal=True with one query and t keys: the query sees key 0 only."""
    return _greedy_with_bugs(model, prompt_ids, n_new, mask_square=True)


def cache_never_read(model, prompt_ids, n_new):
    """Stores keys and values but attends with the new token's own key and value only."""
    return _greedy_with_bugs(model, prompt_ids, n_new, only_self=True)


def no_sqrt_scaling_in_the_step(model, prompt_ids, n_new):
    """Forgets the 1/√D of the scores."""
    return _greedy_with_bugs(model, prompt_ids, n_new, scale=False)


def skips_ln_f(model, prompt_ids, n_new):
    """Applies lm_head to the residual stream without the final LayerNorm."""
    return _greedy_with_bugs(model, prompt_ids, n_new, final_norm=False)


def recomputes_the_window(model, prompt_ids, n_new):
    """Right tokens, no saving: rebuilds every key and value at every step."""
    return _greedy_with_bugs(model, prompt_ids, n_new, recompute=True)


def returns_prompt_and_new_tokens(model, prompt_ids, n_new):
    """Returns the whole sequence, prompt included."""
    return list(prompt_ids) + _greedy_with_bugs(model, prompt_ids, n_new)


def calls_the_model(model, prompt_ids, n_new):
    """The plain path through model(ids): no cache of its own."""
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        for _ in range(n_new):
            ids = torch.cat([ids, model(ids)[0][:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt_ids):].tolist()


def uses_lal_kv_cache(model, prompt_ids, n_new):
    """Borrows the model's own KVCache."""
    cache = model.new_kv_cache()
    return lal.sample.generate(model, prompt_ids, n_new, temperature=0) if cache is not None else []


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
    "check_cached_greedy": [
        new_tokens_at_position_zero,
        one_position_too_far,
        square_mask_on_one_query,
        cache_never_read,
        no_sqrt_scaling_in_the_step,
        skips_ln_f,
        recomputes_the_window,
        returns_prompt_and_new_tokens,
        calls_the_model,
        uses_lal_kv_cache,
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
    new_tokens_at_position_zero: "went in at position 0",
    one_position_too_far: "one position too far",
    square_mask_on_one_query: "saw only the first cached key",
    cache_never_read: "attended only to itself",
    no_sqrt_scaling_in_the_step: "without the 1/√D scaling",
    skips_ln_f: "skipped the final LayerNorm",
    recomputes_the_window: "positions in the first layer",
    returns_prompt_and_new_tokens: "returned the prompt followed by the new tokens",
    calls_the_model: "calls the model's own forward pass",
    uses_lal_kv_cache: "calls lal's KV cache",
}

BROKEN = {
    check: [(function, re.escape(MESSAGES[function])) for function in functions]
    for check, functions in _FUNCTIONS.items()
}
