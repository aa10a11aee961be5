"""Chapter 7's classic mistakes: every function here must fail its check with the message in MATCH."""

import math
import random

import torch

IGNORE = -100

# --------------------------------------------------------------------------- encode_chat

MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}


def _layout(tokenizer, messages, allowed_special=None):
    """ids, and for each id (role, part) with part "marker", "content" or "end"."""
    ids, where = [], []
    for message in messages:
        content = tokenizer.encode(message["content"], allowed_special=allowed_special)
        ids += [tokenizer.special_tokens[MARKERS[message["role"]]], *content, tokenizer.special_tokens["<|end|>"]]
        where += [(message["role"], "marker")] + [(message["role"], "content")] * len(content)
        where += [(message["role"], "end")]
    return ids, where


def _targets(ids, trained):
    return [ids[j + 1] if trained(j + 1) else IGNORE for j in range(len(ids) - 1)] + [IGNORE]


def _answer(where, j):
    return where[j][0] == "assistant" and where[j][1] != "marker"


def trains_the_system_message(tokenizer, messages):
    """Treats the system message as something the model should learn to write."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: _answer(where, j) or (where[j][0] == "system" and where[j][1] != "marker"))


def trains_the_user_turns(tokenizer, messages):
    """Masks only the system message, so the model learns to imitate the user."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: where[j][0] != "system" and where[j][1] != "marker")


def trains_only_the_last_turn(tokenizer, messages):
    """Keeps the targets of the final assistant message and masks the earlier answers."""
    ids, where = _layout(tokenizer, messages)
    last = max(j for j, (role, part) in enumerate(where) if role == "assistant" and part == "marker")
    return ids, _targets(ids, lambda j: j > last and _answer(where, j))


def forgets_the_closing_end(tokenizer, messages):
    """Trains the answer's characters but not the <|end|> that teaches the model to stop."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: where[j] == ("assistant", "content"))


def trains_the_assistant_marker(tokenizer, messages):
    """Counts <|assistant|> as part of the answer."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: where[j][0] == "assistant")


def masks_by_input_position(tokenizer, messages):
    """Decides targets[j] by token j's message instead of token j + 1's."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: _answer(where, j - 1))


def parses_special_tokens_in_messages(tokenizer, messages):
    """Encodes message text with special tokens allowed, so a user can forge a turn."""
    ids, where = _layout(tokenizer, messages, allowed_special="all")
    return ids, _targets(ids, lambda j: _answer(where, j))


def drops_the_last_target(tokenizer, messages):
    """Returns one target fewer than there are input ids."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: _answer(where, j))[:-1]


def forgets_the_end_markers(tokenizer, messages):
    """Writes each message as its marker and content, without <|end|>."""
    ids = []
    for message in messages:
        ids += [tokenizer.special_tokens[MARKERS[message["role"]]], *tokenizer.encode(message["content"], allowed_special=None)]
    return ids, [IGNORE] * len(ids)


def key_error_on_unknown_role(tokenizer, messages):
    """Right for the known roles, but an unknown role escapes as a bare KeyError."""
    ids, where = _layout(tokenizer, messages)
    return ids, _targets(ids, lambda j: _answer(where, j))


def uses_lal_encoding(tokenizer, messages):
    """Calls lal.sft.encode_conversation, which the exercise forbids."""
    from lal.sft import encode_conversation

    return encode_conversation(tokenizer, [m for m in messages if m["role"] != "system"])


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


# --------------------------------------------------------------------------- mix_batches


def _checked(ratio):
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")


def passes_the_global_step(sft_batches, pretrain_batches, ratio):
    """Picks the right source but asks it for the global step, skipping the other source's steps."""
    _checked(ratio)
    return lambda step: (pretrain_batches if math.floor((step + 1) * ratio) > math.floor(step * ratio)
                         else sft_batches)(step)


def replays_from_step_zero(sft_batches, pretrain_batches, ratio):
    """Uses ceil instead of floor: the first pretraining step is step 0."""
    _checked(ratio)

    def batch(step):
        before = math.ceil(step * ratio)
        if math.ceil((step + 1) * ratio) > before:
            return pretrain_batches(before)
        return sft_batches(step - before)

    return batch


def every_nth_step(sft_batches, pretrain_batches, ratio):
    """Replays every round(1 / ratio)-th step: right for 0.2 and 0.25, a third for 0.3."""
    _checked(ratio)
    period = round(1 / ratio) if ratio else 0

    def batch(step):
        if period and step % period == period - 1:
            return pretrain_batches(step // period)
        return sft_batches(step - (step // period if period else 0))

    return batch


def random_draw(sft_batches, pretrain_batches, ratio):
    """Draws each step's source at random, keeping counters: not exact, not resumable."""
    _checked(ratio)
    rng, counts = random.Random(0), {"sft": 0, "pre": 0}

    def batch(step):
        name = "pre" if rng.random() < ratio else "sft"
        counts[name] += 1
        return (pretrain_batches if name == "pre" else sft_batches)(counts[name] - 1)

    return batch


def keeps_a_counter(sft_batches, pretrain_batches, ratio):
    """Right when the steps come in order, wrong for a resumed run: the counts live in the closure."""
    _checked(ratio)
    counts = {"sft": 0, "pre": 0}

    def batch(step):
        name = "pre" if math.floor((step + 1) * ratio) > math.floor(step * ratio) else "sft"
        counts[name] += 1
        return (pretrain_batches if name == "pre" else sft_batches)(counts[name] - 1)

    return batch


def swaps_the_sources(sft_batches, pretrain_batches, ratio):
    """Reads ratio as the share of fine-tuning steps."""
    _checked(ratio)

    def batch(step):
        before = math.floor(step * ratio)
        if math.floor((step + 1) * ratio) > before:
            return sft_batches(before)
        return pretrain_batches(step - before)

    return batch


def accepts_any_ratio(sft_batches, pretrain_batches, ratio):
    """Right for valid ratios, but a ratio of 1 or more is not refused."""
    def batch(step):
        before = math.floor(step * ratio)
        if math.floor((step + 1) * ratio) > before:
            return pretrain_batches(before)
        return sft_batches(step - before)

    return batch


def uses_lal_mixing(sft_batches, pretrain_batches, ratio):
    """Calls lal.sft.mix_pretraining, which the exercise forbids."""
    from lal.sft import mix_pretraining

    return mix_pretraining(sft_batches, pretrain_batches, ratio)


_FUNCTIONS = {
    "check_encode_chat": [trains_the_system_message, trains_the_user_turns, trains_only_the_last_turn,
                          forgets_the_closing_end, trains_the_assistant_marker, masks_by_input_position,
                          parses_special_tokens_in_messages, drops_the_last_target, forgets_the_end_markers,
                          key_error_on_unknown_role, uses_lal_encoding],
    "check_pad_and_collate": [pad_targets_with_pad_id, left_padding, pad_inputs_with_ignore_index, float_tensors,
                              pads_to_a_fixed_length, pads_the_callers_lists, uses_lal_collate],
    "check_mix_batches": [passes_the_global_step, replays_from_step_zero, every_nth_step, random_draw,
                          keeps_a_counter, swaps_the_sources, accepts_any_ratio, uses_lal_mixing],
}

#: What each check must say about each mistake (a regular expression searched in its message).
MATCH = {
    "trains_the_system_message": "trained the system message",
    "trains_the_user_turns": "trained the user's turns",
    "trains_only_the_last_turn": "only the last assistant turn",
    "forgets_the_closing_end": "did not train the <\\|end\\|> that closes",
    "trains_the_assistant_marker": "trained the <\\|assistant\\|> marker",
    "masks_by_input_position": "by the input's position instead of the target's",
    "parses_special_tokens_in_messages": "forged an assistant turn",
    "drops_the_last_target": "one target per input id",
    "forgets_the_end_markers": "differ from the expected layout",
    "key_error_on_unknown_role": "KeyError from a dictionary lookup",
    "uses_lal_encoding": "does not allow",
    "pad_targets_with_pad_id": "padded the targets y with pad_id",
    "left_padding": "padded on the left",
    "pad_inputs_with_ignore_index": "padded the inputs x with -100",
    "float_tensors": "must be torch.long",
    "pads_to_a_fixed_length": "not a fixed length",
    "pads_the_callers_lists": "changed the examples it was given",
    "uses_lal_collate": "does not allow",
    "passes_the_global_step": "global step number",
    "replays_from_step_zero": "one step early",
    "every_nth_step": r"share of 1/3, not 0.3",
    "random_draw": "keeps state",
    "keeps_a_counter": "keeps state",
    "swaps_the_sources": "swapped the sources",
    "accepts_any_ratio": "accepted ratio",
    "uses_lal_mixing": "does not allow",
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
