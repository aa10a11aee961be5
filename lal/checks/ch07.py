"""Checks for chapter 7's exercises: loss-masked targets and padded SFT batches.

The reference answers are written here from the contracts, independently of ``lal.sft`` (whose
functions the exercises may not call). When an answer is wrong, the check computes what the
classic mistakes give (masking the response instead of the prompt, masking by the input's
position instead of the target's, padding the targets with the pad id, …) and names the one the
learner's output reproduces. All randomness comes from local generators.
"""

from __future__ import annotations

import copy
import operator
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lal.checks.common import Forbidden, call, first_mistake, passed
from lal.model import IGNORE_INDEX
from lal.sft import SFTBatches, encode_conversation, encode_example

Pair = tuple[list[int], list[int]]

NO_SFT_ENCODING = Forbidden(
    what="lal.sft's encoding functions",
    why="the exercise asks you to build the shifted, masked targets yourself",
    python_functions=(encode_conversation, encode_example),
)
NO_SFT_COLLATE = Forbidden(
    what="lal.sft.SFTBatches.collate",
    why="the exercise asks you to pad and stack the rows yourself",
    python_functions=(SFTBatches.collate,),
)


# --------------------------------------------------------------------------- Exercise 7.1: sft_targets


def _targets(token_ids: Sequence[int], keep: Callable[[int], bool]) -> list[int]:
    """``token_ids[1:]`` with position i set to IGNORE_INDEX where ``keep(i)`` is False."""
    return [token if keep(i) else IGNORE_INDEX for i, token in enumerate(token_ids[1:])]


def _sft_targets_cases() -> list[tuple[str, list[int], list[bool]]]:
    """(description, token_ids, trainable) cases: the chapter's example, edge cases, random ones."""
    #            <|user|> a  b  <|end|> <|assistant|> x  y  <|end|>
    chapter = ([65, 0, 1, 67, 66, 2, 3, 67], [False] * 5 + [True] * 3)
    two_turns = ([65, 0, 67, 66, 2, 67, 65, 1, 67, 66, 3, 3, 67],
                 [False, False, False, False, True, True, False, False, False, False, True, True, True])
    rng = random.Random(71)
    cases = [
        ("the chapter's <|user|>ab<|end|><|assistant|>xy<|end|>", *chapter),
        ("a two-turn conversation", *two_turns),
        ("two tokens, the second trainable", [7, 9], [False, True]),
        ("every token trainable", [4, 8, 15, 16, 23, 42], [True] * 6),
        ("only the last token trainable", [3, 1, 4, 1, 5, 9, 2, 6], [False] * 7 + [True]),
    ]
    for n in (13, 40):
        ids = [rng.randrange(1000) for _ in range(n)]
        start = rng.randrange(1, n)
        cases.append((f"{n} random ids, trainable from position {start}", ids, [i >= start for i in range(n)]))
    return cases


def _sft_targets_mistakes(token_ids: list[int], trainable: list[bool]) -> list[tuple[str, Any]]:
    return [
        (
            "You masked the response and kept the prompt: the loss would train the model to write the "
            "user's words and never its answer. Set y[i] = -100 where trainable[i + 1] is False.",
            _targets(token_ids, lambda i: not trainable[i + 1]),
        ),
        (
            "You masked by the input's position (trainable[i]) instead of the target's (trainable[i + 1]): "
            "y[i] is the token at position i + 1, so it is that token that must be trainable. Off by one, the "
            "first answer token is never learned and the prompt's last token is.",
            _targets(token_ids, lambda i: trainable[i]),
        ),
        (
            "Your y is not shifted: y[i] must be the *next* token, token_ids[i + 1], not token_ids[i].",
            [token if trainable[i] else IGNORE_INDEX for i, token in enumerate(token_ids[:-1])],
        ),
        (
            "You masked with 0 instead of -100: 0 is a real token id, so the loss would train the model to "
            "predict it. Cross-entropy skips targets equal to ignore_index = -100.",
            [token if trainable[i + 1] else 0 for i, token in enumerate(token_ids[1:])],
        ),
    ]


def _as_int_list(value: Any, name: str, what: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise AssertionError(f"`sft_targets` should return {name} as a list of ints, got {value!r} for {what}.")
    return list(value)


def check_sft_targets(sft_targets: Callable[[list[int], list[bool]], tuple[list[int], list[int]]]) -> None:
    """Exercise 7.1: ``sft_targets(token_ids, trainable)`` → ``(x, y)`` shifted, with untrainable targets -100."""
    cases = _sft_targets_cases()
    for what, token_ids, trainable in cases:
        ids_before, trainable_before = list(token_ids), list(trainable)
        result = call(sft_targets, "sft_targets", token_ids, trainable, forbidden=[NO_SFT_ENCODING])
        if token_ids != ids_before or trainable != trainable_before:
            raise AssertionError(f"`sft_targets` changed its input lists in place ({what}): build new lists.")
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise AssertionError(f"`sft_targets` should return a pair (x, y), got {type(result).__name__}.")
        x = _as_int_list(result[0], "x", what)
        y = _as_int_list(result[1], "y", what)
        n = len(token_ids)
        if x != token_ids[:-1]:
            hint = ("x keeps the last token, which has no next token to predict: x = token_ids[:-1]."
                    if x == token_ids else "x must be token_ids[:-1], the inputs, unmasked.")
            raise AssertionError(f"For {what}, x is wrong: {hint}")
        if len(y) != n - 1:
            raise AssertionError(f"For {what}, y has {len(y)} entries; it needs {n - 1}, one per input in x.")
        expected = _targets(token_ids, lambda i: trainable[i + 1])
        if y != expected:
            mistake = first_mistake(y, _sft_targets_mistakes(token_ids, trainable), operator.eq)
            first = next(i for i, (got, want) in enumerate(zip(y, expected)) if got != want)
            raise AssertionError(
                f"For {what}, y[{first}] is {y[first]} but should be {expected[first]}. "
                + (mistake or "y[i] is token_ids[i + 1], or -100 where trainable[i + 1] is False.")
            )
    passed("sft_targets", len(cases))


# --------------------------------------------------------------------------- Exercise 7.2: pad_and_collate


def _reference_collate(examples: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(x) for x, _ in examples)
    x = torch.tensor([list(ids) + [pad_id] * (length - len(ids)) for ids, _ in examples], dtype=torch.long)
    y = torch.tensor([list(t) + [IGNORE_INDEX] * (length - len(t)) for _, t in examples], dtype=torch.long)
    return x, y  # (B, T) each


def _collate_cases() -> list[tuple[str, list[Pair], int]]:
    rng = random.Random(72)

    def example(n: int, n_prompt: int) -> Pair:
        ids = [rng.randrange(3, 90) for _ in range(n + 1)]
        return ids[:-1], [IGNORE_INDEX] * n_prompt + ids[1 + n_prompt :]

    cases = [
        ("three rows of lengths 5, 3 and 7, pad_id 67", [example(5, 2), example(3, 1), example(7, 4)], 67),
        ("one row (nothing to pad), pad_id 2", [example(6, 3)], 2),
        ("rows of equal length, pad_id 0", [example(4, 1), example(4, 2)], 0),
    ]
    rows = [example(rng.randrange(2, 30), 1) for _ in range(9)]
    cases.append(("nine random rows, pad_id 1013", [(x, y) for x, y in rows], 1013))
    return cases


def _collate_mistakes(examples: Sequence[Pair], pad_id: int) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    x, y = _reference_collate(examples, pad_id)
    length = x.size(1)
    padded_with_pad = torch.tensor([list(t) + [pad_id] * (length - len(t)) for _, t in examples])
    left_x = torch.tensor([[pad_id] * (length - len(ids)) + list(ids) for ids, _ in examples])
    left_y = torch.tensor([[IGNORE_INDEX] * (length - len(t)) + list(t) for _, t in examples])
    inputs_ignored = torch.tensor([list(ids) + [IGNORE_INDEX] * (length - len(ids)) for ids, _ in examples])
    return [
        (
            "You padded the targets y with pad_id: the loss would then train the model to predict padding "
            "after every answer. Pad y with -100 (ignore_index), which the loss skips.",
            (x, padded_with_pad),
        ),
        (
            "You padded on the left. With learned position embeddings the real tokens would move to other "
            "positions, and the first answer token would no longer sit where the chapter's rows put it: pad "
            "on the right, where causal attention never looks back at the padding.",
            (left_x, left_y),
        ),
        (
            "You padded the inputs x with -100: that is not a token id (the embedding lookup fails). Pad x "
            "with pad_id and only y with -100.",
            (inputs_ignored, y),
        ),
    ]


def check_pad_and_collate(pad_and_collate: Callable[[list[Pair], int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Exercise 7.2: ``pad_and_collate(examples, pad_id)`` → right-padded ``(x, y)`` long tensors ``(B, T)``."""
    cases = _collate_cases()
    for what, examples, pad_id in cases:
        originals = copy.deepcopy(examples)
        result = call(pad_and_collate, "pad_and_collate", examples, pad_id, forbidden=[NO_SFT_COLLATE])
        if examples != originals:
            raise AssertionError(
                f"`pad_and_collate` changed the examples it was given ({what}): `ids += [pad_id] * n` extends "
                "the caller's list. Build new lists (`ids + [pad_id] * n`)."
            )
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise AssertionError(f"`pad_and_collate` should return a pair (x, y), got {type(result).__name__}.")
        x, y = result
        want_x, want_y = _reference_collate(examples, pad_id)
        for name, got in (("x", x), ("y", y)):
            if not isinstance(got, torch.Tensor):
                raise AssertionError(f"`pad_and_collate` should return tensors, but {name} is a {type(got).__name__}.")
            if got.dtype != torch.long:
                raise AssertionError(
                    f"{name} has dtype {got.dtype}; token ids and targets must be torch.long (int64): the "
                    "embedding and cross-entropy need integer ids."
                )
            if tuple(got.shape) != tuple(want_x.shape):
                raise AssertionError(
                    f"For {what}, {name} has shape {tuple(got.shape)}, expected {tuple(want_x.shape)}: one row per "
                    "example, as long as the longest x of this batch (not a fixed length)."
                )
        if torch.equal(x, want_x) and torch.equal(y, want_y):
            continue
        mistake = first_mistake((x, y), _collate_mistakes(examples, pad_id),
                                lambda answer, wrong: torch.equal(answer[0], wrong[0]) and torch.equal(answer[1], wrong[1]))
        wrong = "x" if not torch.equal(x, want_x) else "y"
        raise AssertionError(
            f"For {what}, {wrong} is wrong. "
            + (mistake or "x is each row's ids then pad_id up to the longest row; y is its targets then -100.")
        )
    passed("pad_and_collate", len(cases))


# --- preference tuning (DPO) checks below ---

# --------------------------------------------------------------------------- Exercise 7.3: dpo_loss

#: (logits (B, T, V), targets (B, T)) of a batch of answers; targets are -100 outside the response.
Answers = tuple[torch.Tensor, torch.Tensor]


def _no_dpo_library() -> Forbidden:
    from lal.dpo import DPOObjective, dpo_loss, dpo_rewards, sequence_logprobs

    return Forbidden(
        what="lal.dpo's loss",
        why="the exercise asks you to compute the response log-probabilities and the DPO loss yourself",
        python_functions=(dpo_loss, dpo_rewards, sequence_logprobs, DPOObjective.__call__, DPOObjective.logprobs),
    )


def _response_logps(answers: Answers, *, whole: bool = False, per_token: bool = False) -> torch.Tensor:
    """Σ log p(target) over the response (targets ≠ -100) of each row, in float64: ``(B,)``.

    ``whole`` counts every position (the -100 targets read as token 0), ``per_token`` averages
    instead of summing: two classic mistakes.
    """
    logits, targets = answers
    mask = targets != IGNORE_INDEX  # (B, T)
    logps = torch.log_softmax(logits.detach().double(), dim=-1)  # (B, T, V)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    if whole:
        return picked.sum(dim=1)
    total = (picked * mask).sum(dim=1)
    return total / mask.sum(dim=1) if per_token else total


def _dpo_reference(pc: Answers, pr: Answers, rc: Answers, rr: Answers, beta: float, *, sign: float = 1.0,
                   beta_outside: bool = False, **logp_options: bool) -> torch.Tensor:
    chosen = _response_logps(pc, **logp_options) - _response_logps(rc, **logp_options)  # (B,)
    rejected = _response_logps(pr, **logp_options) - _response_logps(rr, **logp_options)  # (B,)
    if beta_outside:
        return beta * torch.nn.functional.softplus(-(chosen - rejected)).mean()
    return torch.nn.functional.softplus(-sign * beta * (chosen - rejected)).mean()


def _dpo_cases() -> list[tuple[str, list[Answers], float]]:
    """(description, [policy chosen, policy rejected, ref chosen, ref rejected], beta) cases."""
    generator = torch.Generator().manual_seed(73)
    cases = []
    for what, batch, length, vocab, beta in (
        ("one pair", 1, 6, 7, 0.1), ("three pairs, beta 0.5", 3, 9, 11, 0.5),
        ("four pairs with padding, beta 2", 4, 12, 9, 2.0), ("two pairs, a large beta of 5", 2, 8, 13, 5.0),
    ):
        answers = []
        for _ in ("chosen", "rejected"):
            targets = torch.randint(vocab, (batch, length), generator=generator)
            for row in range(batch):  # a prompt of 2..length-3 tokens, then the response, then padding
                start = int(torch.randint(2, length - 2, (1,), generator=generator))
                end = int(torch.randint(start + 1, length + 1, (1,), generator=generator))
                targets[row, :start] = IGNORE_INDEX
                targets[row, end:] = IGNORE_INDEX
            answers.append(targets)
        logits = [2.0 * torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) for _ in range(4)]
        cases.append((what, [(logits[0], answers[0]), (logits[1], answers[1]), (logits[2], answers[0]),
                             (logits[3], answers[1])], beta))
    return cases


def _dpo_mistakes(args: list[Answers], beta: float) -> list[tuple[str, torch.Tensor]]:
    return [
        ("The sign is flipped: your loss falls when the rejected answer gains on the chosen one. The loss is "
         "−log σ(β · (chosen margin − rejected margin)): it must shrink as the chosen answer wins.",
         _dpo_reference(*args, beta, sign=-1.0)),
        ("β is applied outside the sigmoid (β · −log σ(margin)). β scales the rewards inside it: "
         "−log σ(β · margin); outside, it only rescales the loss, and the model may drift as far as it likes.",
         _dpo_reference(*args, beta, beta_outside=True)),
        ("You summed the log-probabilities of the whole sequence, prompt and padding included. Only the "
         "response counts: keep the positions whose target is not -100 (the SFT mask).",
         _dpo_reference(*args, beta, whole=True)),
        ("You averaged the log-probabilities over the response's tokens. DPO compares the probability of the "
         "whole answer: sum them.",
         _dpo_reference(*args, beta, per_token=True)),
    ]


def _as_loss(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"`dpo_loss` should return a torch.Tensor (the mean loss), but returned "
                             f"{type(value).__name__}: keep it a tensor, so training can call .backward() on it.")
    if value.numel() != 1 or not value.dtype.is_floating_point:
        raise AssertionError(f"`dpo_loss` returned a {value.dtype} tensor of shape {tuple(value.shape)} on {what}; "
                             "it should return one number, the mean loss over the pairs (a float tensor).")
    if not torch.isfinite(value).all():
        raise AssertionError(f"`dpo_loss` returned {value.item()} on {what}. −log σ(z) is F.softplus(−z) "
                             "(or −F.logsigmoid(z)), which stays finite where torch.log(torch.sigmoid(z)) does not.")
    return value.reshape(())


def check_dpo_loss(dpo_loss: Callable[..., torch.Tensor]) -> None:
    """Exercise 7.3: the mean DPO loss from the (logits, targets) of the policy's and the reference's answers."""
    name = "dpo_loss"
    cases = _dpo_cases()
    rules = [_no_dpo_library()]
    for what, args, beta in cases:
        inputs = [(logits.clone().requires_grad_(True), targets.clone()) for logits, targets in args]
        value = _as_loss(call(dpo_loss, name, *inputs, beta, forbidden=rules), what)
        expected = _dpo_reference(*args, beta)
        if not torch.allclose(value.detach().double(), expected, rtol=1e-5, atol=1e-6):
            mistake = first_mistake(value.detach().double(), _dpo_mistakes(args, beta),
                                    lambda answer, wrong: bool(torch.allclose(answer, wrong, rtol=1e-5, atol=1e-6)))
            raise AssertionError(
                f"{mistake or f'`{name}` is wrong on {what}.'}\n(On {what}: expected {expected.item():.5f}, "
                f"got {value.item():.5f}.)")
        if not value.requires_grad:
            raise AssertionError(f"`{name}`'s loss carries no gradient on {what}: keep the computation in torch "
                                 "(no .item(), no torch.no_grad() around the policy), or training cannot learn from it.")
        value.backward()
        if any(logits.grad is not None and logits.grad.abs().sum() > 0 for logits, _ in inputs[2:]):
            raise AssertionError(
                "The reference is not detached: the loss sends gradient into the reference model's logits. The "
                "reference is frozen (it only measures how far the policy moved): compute its log-probabilities "
                "under torch.no_grad(), or .detach() them.")
        if any(logits.grad is None for logits, _ in inputs[:2]):
            raise AssertionError(f"No gradient reaches the policy's logits on {what}: only the reference is frozen.")
    passed(name, len(cases))
