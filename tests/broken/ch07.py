"""Chapter 7's classic mistakes: every function here must fail its check with the message in MATCH."""

import torch

IGNORE = -100

# --------------------------------------------------------------------------- sft_targets


def mask_response_instead_of_prompt(token_ids, trainable):
    """Keeps the prompt's targets and ignores the answer's: the inverted mask."""
    return token_ids[:-1], [t if not trainable[i + 1] else IGNORE for i, t in enumerate(token_ids[1:])]


def mask_by_input_position(token_ids, trainable):
    """Looks up trainable[i] for target i, whose token sits at position i + 1."""
    return token_ids[:-1], [t if trainable[i] else IGNORE for i, t in enumerate(token_ids[1:])]


def targets_not_shifted(token_ids, trainable):
    """Uses the input token as its own target."""
    return token_ids[:-1], [t if trainable[i] else IGNORE for i, t in enumerate(token_ids[:-1])]


def mask_with_zero(token_ids, trainable):
    """Masks with 0, a real token id, instead of -100."""
    return token_ids[:-1], [t if trainable[i + 1] else 0 for i, t in enumerate(token_ids[1:])]


def keeps_the_last_input(token_ids, trainable):
    """Returns all the ids as x: the last one has nothing to predict."""
    return list(token_ids), [t if trainable[i + 1] else IGNORE for i, t in enumerate(token_ids[1:])]


def calls_lal(token_ids, trainable):
    """Delegates to lal.sft, which the exercise forbids."""
    from lal.sft import encode_conversation

    return encode_conversation(None, [{"role": "user", "content": "a"}])


# --------------------------------------------------------------------------- pad_and_collate


def _longest(examples):
    return max(len(x) for x, _ in examples)


def pad_targets_with_pad_id(examples, pad_id):
    """Pads y with the pad id, so the model learns to predict padding."""
    n = _longest(examples)
    x = [ids + [pad_id] * (n - len(ids)) for ids, _ in examples]
    y = [t + [pad_id] * (n - len(t)) for _, t in examples]
    return torch.tensor(x), torch.tensor(y)


def left_padding(examples, pad_id):
    """Puts the padding before the tokens."""
    n = _longest(examples)
    x = [[pad_id] * (n - len(ids)) + ids for ids, _ in examples]
    y = [[IGNORE] * (n - len(t)) + t for _, t in examples]
    return torch.tensor(x), torch.tensor(y)


def pad_inputs_with_ignore_index(examples, pad_id):
    """Pads x with -100, which is no token id."""
    n = _longest(examples)
    x = [ids + [IGNORE] * (n - len(ids)) for ids, _ in examples]
    y = [t + [IGNORE] * (n - len(t)) for _, t in examples]
    return torch.tensor(x), torch.tensor(y)


def float_tensors(examples, pad_id):
    """Builds float tensors: ids must be integers."""
    n = _longest(examples)
    x = [ids + [pad_id] * (n - len(ids)) for ids, _ in examples]
    y = [t + [IGNORE] * (n - len(t)) for _, t in examples]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def pads_to_a_fixed_length(examples, pad_id):
    """Pads every batch to 64 positions instead of its longest row."""
    x = [ids + [pad_id] * (64 - len(ids)) for ids, _ in examples]
    y = [t + [IGNORE] * (64 - len(t)) for _, t in examples]
    return torch.tensor(x), torch.tensor(y)


def pads_the_callers_lists(examples, pad_id):
    """Extends the given lists in place with +=."""
    n = _longest(examples)
    for ids, targets in examples:
        pad = n - len(ids)
        ids += [pad_id] * pad
        targets += [IGNORE] * pad
    return torch.tensor([x for x, _ in examples]), torch.tensor([y for _, y in examples])


def uses_lal_collate(examples, pad_id):
    """Calls lal.sft.SFTBatches.collate, which the exercise forbids."""
    from lal.sft import SFTBatches

    batches = SFTBatches.__new__(SFTBatches)
    batches.pad_id, batches.device = pad_id, torch.device("cpu")
    return SFTBatches.collate(batches, examples)


_FUNCTIONS = {
    "check_sft_targets": [mask_response_instead_of_prompt, mask_by_input_position, targets_not_shifted,
                          mask_with_zero, keeps_the_last_input, calls_lal],
    "check_pad_and_collate": [pad_targets_with_pad_id, left_padding, pad_inputs_with_ignore_index, float_tensors,
                              pads_to_a_fixed_length, pads_the_callers_lists, uses_lal_collate],
}

#: What each check must say about each mistake (a regular expression searched in its message).
MATCH = {
    "mask_response_instead_of_prompt": "masked the response and kept the prompt",
    "mask_by_input_position": "by the input's position",
    "targets_not_shifted": "not shifted",
    "mask_with_zero": "masked with 0 instead of -100",
    "keeps_the_last_input": "x keeps the last token",
    "calls_lal": "does not allow",
    "pad_targets_with_pad_id": "padded the targets y with pad_id",
    "left_padding": "padded on the left",
    "pad_inputs_with_ignore_index": "padded the inputs x with -100",
    "float_tensors": "must be torch.long",
    "pads_to_a_fixed_length": "not a fixed length",
    "pads_the_callers_lists": "changed the examples it was given",
    "uses_lal_collate": "does not allow",
}

BROKEN = {
    check: [(function, MATCH[function.__name__]) for function in functions] for check, functions in _FUNCTIONS.items()
}


# --- preference tuning (DPO) checks below ---


def _logps(answers, *, mask=True, mean=False):
    logits, targets = answers
    keep = targets != IGNORE
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if not mask:
        return picked.sum(dim=1)
    total = (picked * keep).sum(dim=1)
    return total / keep.sum(dim=1) if mean else total


def _margin(pc, pr, rc, rr, **options):
    with torch.no_grad():
        ref_c, ref_r = _logps(rc, **options), _logps(rr, **options)
    return (_logps(pc, **options) - ref_c) - (_logps(pr, **options) - ref_r)


def dpo_sign_flipped(pc, pr, rc, rr, beta):
    """−log σ(−β · margin): rewards the rejected answer."""
    return -torch.nn.functional.logsigmoid(-beta * _margin(pc, pr, rc, rr)).mean()


def dpo_beta_outside_the_sigmoid(pc, pr, rc, rr, beta):
    """β · −log σ(margin): β scales the loss instead of the rewards."""
    return beta * -torch.nn.functional.logsigmoid(_margin(pc, pr, rc, rr)).mean()


def dpo_whole_sequence(pc, pr, rc, rr, beta):
    """Sums the log-probabilities of every position, prompt and padding included."""
    return -torch.nn.functional.logsigmoid(beta * _margin(pc, pr, rc, rr, mask=False)).mean()


def dpo_mean_per_token(pc, pr, rc, rr, beta):
    """Averages the response's log-probabilities instead of summing them."""
    return -torch.nn.functional.logsigmoid(beta * _margin(pc, pr, rc, rr, mean=True)).mean()


def dpo_reference_not_detached(pc, pr, rc, rr, beta):
    """The reference's log-probabilities keep their gradient."""
    margin = (_logps(pc) - _logps(rc)) - (_logps(pr) - _logps(rr))
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def dpo_returns_a_float(pc, pr, rc, rr, beta):
    """Returns .item(): a number training cannot differentiate."""
    return -torch.nn.functional.logsigmoid(beta * _margin(pc, pr, rc, rr)).mean().item()


def dpo_calls_lal(pc, pr, rc, rr, beta):
    """Delegates to lal.dpo, which the exercise forbids."""
    from lal.dpo import dpo_loss

    return dpo_loss(_logps(pc), _logps(pr), _logps(rc), _logps(rr), beta)


BROKEN["check_dpo_loss"] = [
    (dpo_sign_flipped, "sign is flipped"),
    (dpo_beta_outside_the_sigmoid, "outside the sigmoid"),
    (dpo_whole_sequence, "whole sequence"),
    (dpo_mean_per_token, "averaged the log-probabilities"),
    (dpo_reference_not_detached, "reference is not detached"),
    (dpo_returns_a_float, "should return a torch.Tensor"),
    (dpo_calls_lal, "does not allow"),
]
