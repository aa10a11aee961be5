"""Supervised fine-tuning (SFT): teaching a pretrained model to answer instead of ramble.

A pretrained model continues text. To make it follow instructions we show it conversations
in a fixed format, the *chat template*, and train on them with one change to the loss: only
the answer counts. Chapter 7 builds each piece:

* :class:`ChatTemplate` marks who speaks with special tokens that no ordinary text contains::

      <|user|>Reverse: love<|end|><|assistant|>evol<|end|>

* :func:`encode_example` turns one (prompt, response) pair into input ids and next-token
  targets, with the targets of the prompt and the template set to ``IGNORE_INDEX`` so the
  model is trained to produce the response (and to stop), never to imitate the user;
* :func:`make_instruction_dataset` generates instructions whose answers a program can check
  (reverse a word, count its letters, add two numbers, ...), from words a character model
  trained on Shakespeare can spell, split so that held-out prompts are never trained on;
* :func:`make_sft_batches` pads encoded examples into ``(x, y)`` batches, and
  :func:`mix_pretraining` interleaves batches of pretraining text, the usual remedy for
  *forgetting* (fine-tuning pulls the model away from what pretraining taught it);
* :func:`evaluate_instructions` answers held-out prompts greedily and scores them by program.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lal.data import batch_to_device, get_batch
from lal.device import pick_device
from lal.instructions import (
    Example,
    course_instructions,
    load_instruction_file,
    make_instruction_dataset,
    score_response,
)
from lal.model import GPT, IGNORE_INDEX
from lal.sample import decode_stream, generate, stream
from lal.tokenizers import CHAT_SPECIAL_TOKENS, Tokenizer
from lal.train import EvalEvent, History, TrainConfig, train

#: A message of a conversation: ``{"role": "user" | "assistant", "content": "..."}``.
Message = Mapping[str, str]

#: What training consumes: the batch ``(x, y)`` for a given step, both ``(B, T)`` long tensors.
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# The chat template
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written as one token sequence.

    Each message is its role marker, its content, and the end marker::

        <|user|>{prompt}<|end|><|assistant|>{response}<|end|>

    Several turns simply follow each other. To ask the model for an answer, give it the
    conversation up to and including ``<|assistant|>`` (:meth:`render_prompt`) and let it
    generate until it produces ``<|end|>``. The markers must be special tokens of the
    tokenizer (one id each), e.g. ``CharTokenizer.from_text(text, special_tokens=CHAT_SPECIAL_TOKENS)``.
    """

    user: str = CHAT_SPECIAL_TOKENS[0]
    assistant: str = CHAT_SPECIAL_TOKENS[1]
    end: str = CHAT_SPECIAL_TOKENS[2]

    def role_marker(self, role: str) -> str:
        """The marker that opens a message of ``role``."""
        markers = {"user": self.user, "assistant": self.assistant}
        if role not in markers:
            raise ValueError(f"Unknown role {role!r}: a message's role must be 'user' or 'assistant'.")
        return markers[role]

    def render(self, messages: Sequence[Message]) -> str:
        """A whole conversation as text."""
        return "".join(self.role_marker(m["role"]) + m["content"] + self.end for m in _check_messages(messages))

    def render_pair(self, prompt: str, response: str) -> str:
        """One exchange: ``<|user|>{prompt}<|end|><|assistant|>{response}<|end|>``."""
        return self.render(as_messages(prompt, response))

    def render_prompt(self, prompt: str | Sequence[Message]) -> str:
        """The text to generate from: the conversation so far, then ``<|assistant|>``."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.render(messages) + self.assistant


DEFAULT_TEMPLATE = ChatTemplate()


def as_messages(prompt: str, response: str) -> list[dict[str, str]]:
    """A (prompt, response) pair as a two-message conversation."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _check_messages(messages: Sequence[Message]) -> Sequence[Message]:
    if isinstance(messages, (str, Mapping)):
        raise ValueError('messages must be a list of {"role": ..., "content": ...} dictionaries.')
    for message in messages:
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ValueError(f'Each message needs a "role" and a "content", got {message!r}.')
        if not isinstance(message["content"], str):
            raise ValueError(f"A message's content must be text, got {message['content']!r}.")
    return messages


# ---------------------------------------------------------------------------------------------
# Encoding with loss masking
# ---------------------------------------------------------------------------------------------


def special_token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token, or an error that says how to build a tokenizer that has it."""
    special = tokenizer.special_tokens
    if token not in special:
        raise ValueError(
            f"The tokenizer has no special token {token!r} (it has {sorted(special) or 'none'}). Chat "
            "fine-tuning needs the chat markers as single tokens: build the tokenizer with "
            "special_tokens=CHAT_SPECIAL_TOKENS, e.g. "
            "CharTokenizer.from_text(text, special_tokens=CHAT_SPECIAL_TOKENS), "
            "before pretraining, so the model's vocabulary has room for them."
        )
    return special[token]


def encode_conversation(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    template: ChatTemplate = DEFAULT_TEMPLATE,
    *,
    mask_prompt: bool = True,
) -> tuple[list[int], list[int]]:
    """Input ids and next-token targets of a conversation, trained on the assistant's turns only.

    The two lists have the same length ``n``. ``targets[i]`` is what the model should predict
    after reading ``input_ids[: i + 1]``, i.e. ``input_ids[i + 1]``, but it is ``IGNORE_INDEX``
    whenever that next token is not the assistant's to say: the user's words and every role
    marker are given, never predicted. What *is* trained: each token of an assistant message
    and the ``<|end|>`` that closes it (so the model learns to stop). The last position has no
    next token, so its target is always ``IGNORE_INDEX``. For ``<|user|>ab<|end|><|assistant|>xy<|end|>``::

        input_ids  <|user|>  a     b     <|end|>  <|assistant|>  x   y   <|end|>
        targets    -100      -100  -100  -100     x              y   <|end|>  -100

    Message contents are encoded with ``allowed_special=None``: a special-token string typed
    inside a message stays ordinary text and cannot forge a turn. ``mask_prompt=False`` trains
    on every next token instead, prompts and markers included (the comparison of chapter 7).
    """
    input_ids: list[int] = []
    is_answer: list[bool] = []  # is_answer[j]: token j is one the assistant must learn to produce
    for message in _check_messages(messages):
        assistant = message["role"] == "assistant"
        content = tokenizer.encode(message["content"], allowed_special=None)
        input_ids += [special_token_id(tokenizer, template.role_marker(message["role"]))]
        input_ids += content + [special_token_id(tokenizer, template.end)]
        is_answer += [False] + [assistant] * (len(content) + 1)
    if not any(is_answer):
        raise ValueError("The conversation has no assistant message, so there is nothing to train on.")
    targets = [nxt if answer or not mask_prompt else IGNORE_INDEX for nxt, answer in zip(input_ids[1:], is_answer[1:])]
    return input_ids, targets + [IGNORE_INDEX]


def encode_example(
    tokenizer: Tokenizer,
    prompt: str,
    response: str,
    template: ChatTemplate = DEFAULT_TEMPLATE,
    *,
    mask_prompt: bool = True,
) -> tuple[list[int], list[int]]:
    """:func:`encode_conversation` of one exchange: loss on the response and its ``<|end|>`` only."""
    return encode_conversation(tokenizer, as_messages(prompt, response), template, mask_prompt=mask_prompt)


def encode_prompt(
    tokenizer: Tokenizer, prompt: str | Sequence[Message], template: ChatTemplate = DEFAULT_TEMPLATE
) -> list[int]:
    """The ids to generate an answer from: the conversation so far, then ``<|assistant|>``."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    ids: list[int] = []
    for message in _check_messages(messages):
        ids.append(special_token_id(tokenizer, template.role_marker(message["role"])))
        ids += tokenizer.encode(message["content"], allowed_special=None)
        ids.append(special_token_id(tokenizer, template.end))
    return ids + [special_token_id(tokenizer, template.assistant)]


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


class SFTBatches:
    """Padded ``(x, y)`` batches of encoded examples: call it with a step number.

    Each example becomes one row: ``x`` its input ids, ``y`` its masked targets (see
    :func:`encode_conversation`), without the last position, whose target is always ignored.
    Rows are padded on the right to the longest row of the batch: ``x`` with the ``<|end|>``
    id, ``y`` with ``IGNORE_INDEX``. Right padding is invisible to the real tokens, because
    causal attention only looks left, and ignored targets add nothing to the loss.

    Examples that do not fit in ``block_size`` are dropped (``n_dropped`` counts them) rather
    than cut: a cut example would lose the end of its answer, or the start of its question.
    ``mask_prompt=False`` trains on the prompts too (see :func:`encode_conversation`).
    Every kept row has at least one trained target (the closing ``<|end|>``), so no row, and
    hence no batch, is all ``IGNORE_INDEX``: cross-entropy over such a batch would be 0 / 0 = NaN.

    The batch of step ``s`` depends only on ``seed`` and ``s``: examples are visited in a new
    shuffled order every epoch, so each is seen once per epoch, and resuming at step ``s``
    gives the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: Tokenizer,
        batch_size: int,
        block_size: int,
        *,
        seed: int = 0,
        template: ChatTemplate = DEFAULT_TEMPLATE,
        mask_prompt: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}.")
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.device = torch.device(device)
        self.pad_id = special_token_id(tokenizer, template.end)
        self.rows: list[tuple[list[int], list[int]]] = []
        self.n_dropped = 0
        longest = 0
        for example in examples:
            input_ids, targets = encode_example(
                tokenizer, example.prompt, example.response, template, mask_prompt=mask_prompt
            )
            longest = max(longest, len(input_ids) - 1)
            if len(input_ids) - 1 <= block_size:
                self.rows.append((input_ids[:-1], targets[:-1]))
            else:
                self.n_dropped += 1
        if not self.rows:
            raise ValueError(
                f"No example fits in block_size={block_size} (of {self.n_dropped}; the longest needs "
                f"{longest} positions): use a model with a longer context, or shorter examples."
            )
        self._epoch, self._order = -1, list(range(len(self.rows)))  # the shuffled order of one epoch

    def __len__(self) -> int:
        """Number of usable examples (one epoch)."""
        return len(self.rows)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = step * self.batch_size  # position of this batch's first row in the endless stream
        rows = [self.rows[self._row_at(position)] for position in range(first, first + self.batch_size)]
        return self.collate(rows)

    def collate(self, rows: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad rows to the longest one: ``x`` with the end-token id, ``y`` with ``IGNORE_INDEX``."""
        length = max(len(ids) for ids, _ in rows)
        x = torch.full((len(rows), length), self.pad_id, dtype=torch.long)  # (B, T)
        y = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, (ids, targets) in enumerate(rows):
            x[row, : len(ids)] = torch.tensor(ids)
            y[row, : len(targets)] = torch.tensor(targets)
        return batch_to_device(x, y, self.device)

    def _row_at(self, position: int) -> int:
        """The row at ``position`` of the endless stream: epoch after epoch, each freshly shuffled."""
        epoch, offset = divmod(position, len(self.rows))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_step_seed(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.rows), generator=generator).tolist()
        return self._order[offset]

    def __repr__(self) -> str:
        return (
            f"SFTBatches({len(self)} examples, {self.n_dropped} dropped as longer than block_size="
            f"{self.block_size}, batch_size={self.batch_size})"
        )


def make_sft_batches(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    batch_size: int,
    block_size: int,
    *,
    seed: int = 0,
    template: ChatTemplate = DEFAULT_TEMPLATE,
    mask_prompt: bool = True,
    device: str | torch.device = "cpu",
) -> SFTBatches:
    """A batch function ``batches(step) -> (x, y)`` over instruction examples; see :class:`SFTBatches`."""
    return SFTBatches(
        examples, tokenizer, batch_size, block_size,
        seed=seed, template=template, mask_prompt=mask_prompt, device=device,
    )


def _step_seed(seed: int, step: int) -> int:
    """A reproducible generator seed for each (seed, step), spread over 32 bits.

    A hash rather than arithmetic such as ``(seed << 32) + step``: torch's CPU generator keeps
    only the low 32 bits of its seed, so those two would give every seed the same batches.
    """
    return zlib.crc32(f"{seed}:{step}".encode("utf-8"))


def pretraining_batches(
    data: torch.Tensor, batch_size: int, block_size: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> BatchFn:
    """A batch function of random windows of pretraining tokens (as in pretraining), seeded by step."""

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(_step_seed(seed, step))
        return get_batch(data, batch_size, block_size, device=device, generator=generator)

    return batch


def pretraining_steps_before(step: int, mix_ratio: float) -> int:
    """How many of the steps ``0 .. step - 1`` use pretraining text: ``floor(step · mix_ratio)``."""
    return math.floor(step * mix_ratio)


def mix_pretraining(sft_batches: BatchFn, pretrain_batches: BatchFn, mix_ratio: float) -> BatchFn:
    """A batch function where a fraction ``mix_ratio`` of the steps trains on pretraining text.

    Fine-tuning on a narrow dataset moves the weights away from what pretraining taught (the
    validation loss on the pretraining text goes up: *forgetting*). Replaying some pretraining
    text keeps that knowledge in use. Step ``s`` is a pretraining step when
    ``floor((s + 1) · r) > floor(s · r)``: exactly ``r`` of the steps over any long run,
    spread evenly (``r = 0.25``: every fourth step), with no randomness. Each source is asked
    for its own consecutive steps, so neither skips data the other consumed.
    """
    if not 0.0 <= mix_ratio < 1.0:
        raise ValueError(f"mix_ratio must be in [0, 1) (the share of pretraining batches), got {mix_ratio}.")

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        done = pretraining_steps_before(step, mix_ratio)
        if pretraining_steps_before(step + 1, mix_ratio) > done:
            return pretrain_batches(done)
        return sft_batches(step - done)

    return batch


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """One scored answer."""

    example: Example
    generated: str
    correct: bool


@dataclass
class EvalReport:
    """Scored answers to instructions: accuracy per task and overall."""

    results: list[EvalResult] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.results) / len(self.results) if self.results else 0.0

    def task_accuracy(self) -> dict[str, float]:
        """Task name -> share of correct answers, in the order the tasks first appear."""
        return {task: correct / total for task, (correct, total) in self._counts().items()}

    def to_rows(self) -> list[dict[str, object]]:
        """One row per task, then an "all" row: task, correct, total, accuracy (for a table)."""
        rows: list[dict[str, object]] = [
            {"task": task, "correct": correct, "total": total, "accuracy": correct / total}
            for task, (correct, total) in self._counts().items()
        ]
        rows.append({"task": "all", "correct": self.n_correct, "total": len(self.results), "accuracy": self.accuracy})
        return rows

    def _counts(self) -> dict[str, tuple[int, int]]:
        """Task name -> (correct, total)."""
        counts: dict[str, tuple[int, int]] = {}
        for result in self.results:
            correct, total = counts.get(result.example.task, (0, 0))
            counts[result.example.task] = (correct + result.correct, total + 1)
        return counts

    @property
    def n_correct(self) -> int:
        return sum(r.correct for r in self.results)

    def summary(self) -> str:
        """One line: ``accuracy: 0.873 (139/160)``."""
        return f"accuracy: {self.accuracy:.3f} ({self.n_correct}/{len(self.results)})"

    def to_dict(self) -> dict[str, object]:
        """Overall and per-task scores as plain values (``lal eval --json``)."""
        return {"accuracy": self.accuracy, "correct": self.n_correct, "total": len(self.results),
                "tasks": {row["task"]: row for row in self.to_rows() if row["task"] != "all"}}

    def __str__(self) -> str:
        lines = [f"{'task':<12} {'correct':>7} {'total':>5} {'accuracy':>8}"]
        for row in self.to_rows():
            lines.append(f"{row['task']:<12} {row['correct']:>7} {row['total']:>5} {row['accuracy']:>8.0%}")
        return "\n".join(lines)


def answer(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[Message],
    max_new_tokens: int,
    *,
    template: ChatTemplate = DEFAULT_TEMPLATE,
    **sampling: object,
) -> str:
    """The model's answer to ``prompt`` (text or a conversation), generated until ``<|end|>``.

    ``sampling`` takes :func:`lal.sample.generate`'s options (default: greedy).
    """
    sampling.setdefault("temperature", 0.0)
    end_id = special_token_id(tokenizer, template.end)
    prompt_ids = encode_prompt(tokenizer, prompt, template)
    new_ids = generate(model, prompt_ids, max_new_tokens, stop_tokens=(end_id,), **sampling)
    return tokenizer.decode(new_ids)


@torch.no_grad()
def greedy_answers(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str | Sequence[Message]],
    max_new_tokens: int,
    *,
    template: ChatTemplate = DEFAULT_TEMPLATE,
) -> list[str]:
    """The model's greedy answers to ``prompts`` (texts or conversations), generated until ``<|end|>``.

    The same answers as :func:`answer`, many at once: prompts of the same length in
    tokens are decoded together, as one batch with a KV cache, so no row needs padding (the
    model has no padding mask) and a few dozen batches answer thousands of prompts. One
    difference: an answer stops at the end of the context, where :func:`answer` crops the
    context and goes on; an answer that long has missed its ``<|end|>`` and is wrong in both.
    A prompt that fills the context by itself is answered by :func:`answer`, which crops it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, prompt, template) for prompt in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    answers = [""] * len(prompts)
    end_id = special_token_id(tokenizer, template.end)
    try:
        for length, rows in by_length.items():
            if length >= model.config.block_size:  # no room for a token without cropping the prompt
                for index in rows:
                    answers[index] = answer(model, tokenizer, prompts[index], max_new_tokens, template=template)
                continue
            n_new = min(max_new_tokens, model.config.block_size - length)
            cache = model.new_kv_cache(len(rows))
            logits, _ = model(torch.tensor([encoded[i] for i in rows], device=device), kv_cache=cache)  # (B, L, V)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            new_tokens = []
            for _ in range(n_new):
                token = logits[:, -1].argmax(dim=-1)  # (B,)
                new_tokens.append(token)
                done |= token == end_id
                if bool(done.all()) or len(new_tokens) == n_new:
                    break
                logits, _ = model(token[:, None], kv_cache=cache)  # (B, 1, V)
            generated = torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in rows]  # (B, n)
            for index, ids in zip(rows, generated):
                cut = ids.index(end_id) if end_id in ids else len(ids)
                answers[index] = tokenizer.decode(ids[:cut])
    finally:
        model.train(was_training)
    return answers


def answer_budget(tokenizer: Tokenizer, examples: Sequence[Example]) -> int:
    """New tokens to allow when answering ``examples``: their longest expected answer plus 4."""
    return max((len(tokenizer.encode(e.response, allowed_special=None)) for e in examples), default=0) + 4


def evaluate_instructions(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    max_new_tokens: int | None = None,
    *,
    template: ChatTemplate = DEFAULT_TEMPLATE,
) -> EvalReport:
    """Answer every example greedily (stopping at ``<|end|>``) and score it with :func:`score_response`.

    ``max_new_tokens`` defaults to the longest expected answer plus 4 tokens: a model that has
    not learned to stop is cut off there (and scored wrong) instead of rambling on. The answers
    are :func:`answer`'s, computed many at a time by :func:`greedy_answers`.
    """
    if max_new_tokens is None:
        max_new_tokens = answer_budget(tokenizer, examples)
    answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens, template=template)
    return EvalReport([EvalResult(e, text, score_response(e, text)) for e, text in zip(examples, answers)])


def chat_reply(
    model: GPT,
    tokenizer: Tokenizer,
    message: str | Sequence[Message],
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream_to: Callable[[str], object] | None = None,
    template: ChatTemplate = DEFAULT_TEMPLATE,
) -> str:
    """The model's reply to a user message (or a whole conversation), streamed to ``stream_to``."""
    tokens = stream(
        model,
        encode_prompt(tokenizer, message, template),
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_tokens=(special_token_id(tokenizer, template.end),),
    )
    return decode_stream(tokenizer, tokens, stream_to)


# ---------------------------------------------------------------------------------------------
# New special tokens for a pretrained model
# ---------------------------------------------------------------------------------------------


def add_special_tokens(
    model: GPT, tokenizer: Tokenizer, tokens: Sequence[str] = CHAT_SPECIAL_TOKENS
) -> Tokenizer:
    """Give a pretrained model and its tokenizer the special ``tokens`` they lack; return the new tokenizer.

    Every existing id keeps its meaning; each new token gets the next id, and the model's token
    embedding (and with it the tied output head) grows by one row per new token, **initialised
    to the mean of the existing rows**. Why the mean: as an input, the new token then looks like
    an ordinary token, inside the range the blocks were trained on (a random row of another
    scale would be an input they never saw); as an output, its logit ``h · mean`` is the average
    of the other logits, so the model neither predicts it everywhere nor can never learn to
    predict it. Fine-tuning then moves the rows to where they are needed.
    """
    from lal.tokenizers import tokenizer_from_dict

    missing = [token for token in tokens if token not in tokenizer.special_tokens]
    if not missing:
        return tokenizer
    description = tokenizer.to_dict()
    description["special_tokens"] = list(tokenizer.special_tokens) + missing
    extended = tokenizer_from_dict(description)
    old_vocab = tokenizer.vocab_size
    if extended.vocab_size != old_vocab + len(missing) or any(
        extended.special_tokens[token] < old_vocab for token in missing
    ):
        raise ValueError(f"Cannot add special tokens to a {tokenizer.name} tokenizer without renumbering it.")
    resize_token_embeddings(model, extended.vocab_size)
    return extended


@torch.no_grad()
def resize_token_embeddings(model: GPT, vocab_size: int) -> None:
    """Grow the token embedding and the tied head to ``vocab_size`` rows, new rows = the mean row."""
    old = model.transformer.wte.weight  # (V_old, C)
    if vocab_size < old.size(0):
        raise ValueError(f"The model already has {old.size(0)} token rows; shrinking to {vocab_size} would lose some.")
    grown = torch.nn.Embedding(vocab_size, old.size(1), device=old.device, dtype=old.dtype)
    grown.weight[: old.size(0)] = old
    grown.weight[old.size(0) :] = old.mean(dim=0)  # (V_new - V_old, C) rows, all the mean
    model.transformer.wte = grown
    model.lm_head = torch.nn.Linear(old.size(1), vocab_size, bias=False, device=old.device, dtype=old.dtype)
    model.lm_head.weight = grown.weight  # keep the weight tying
    model.config.vocab_size = vocab_size


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

#: The measured recipe (data/sft/README.md): ``lal sft``'s defaults and chapter 7's.
SFT_STEPS = 6000
SFT_BATCH_SIZE = 32
SFT_LR = 3e-3
SFT_MIX_RATIO = 0.2


def default_finetune_config(**overrides: object) -> TrainConfig:
    """Training settings for fine-tuning a pretrained char-tiny-sized model (``overrides`` replace any).

    Compared with pretraining: a lower peak learning rate (the weights are already good; big
    steps would wash out what pretraining taught), a short warmup, no weight decay (it would
    pull the weights towards zero, not towards their pretrained values), and no ``best.pt``:
    the validation loss on pretraining text measures forgetting, not the skill being taught,
    so the checkpoint to use is the last one.
    """
    settings: dict[str, object] = dict(
        max_steps=SFT_STEPS, batch_size=SFT_BATCH_SIZE, lr=SFT_LR, min_lr=SFT_LR / 10, warmup_steps=50,
        weight_decay=0.0, eval_interval=250, eval_windows=256, save_best=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def finetune(
    model: GPT,
    batches: BatchFn,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    *,
    tokenizer: Tokenizer | None = None,
    callbacks: Iterable[Callable[[EvalEvent], object]] = (),
    resume: bool = False,
) -> History:
    """Fine-tune ``model`` on the batches of a batch function ``batches(step) -> (x, y)``.

    The loop is pretraining's, :func:`lal.train.train`: AdamW with decay / no-decay groups,
    warmup + cosine, gradient clipping and accumulation, mixed precision where the device has
    it, NaN detection, checkpoints in ``cfg.out_dir`` and exact resume. Only the batches differ:
    padded, masked SFT batches (:func:`make_sft_batches`), possibly mixed with pretraining
    windows (:func:`mix_pretraining`). ``cfg.batch_size`` and ``cfg.block_size`` are not used
    for training: the batch function decides both.

    ``val_data`` holds pretraining validation tokens: the validation loss recorded every
    ``cfg.eval_interval`` steps (on the same fixed windows as pretraining) measures how much of
    its pretraining the model forgets.
    """
    return train(model, batches, val_data, cfg, tokenizer=tokenizer, callbacks=callbacks, resume=resume)


@dataclass
class FinetuneReport:
    """What :func:`finetune_from_checkpoint` did: the history, held-out scores and the saved file."""

    path: Path
    history: History
    n_examples: int
    n_dropped: int
    before: EvalReport | None  # held-out scores of the pretrained model (None with your own data)
    after: EvalReport | None

    def __str__(self) -> str:
        first, last = self.history.val_loss[0], self.history.val_loss[-1]
        lines = [
            f"Fine-tuned for {self.history.step[-1]} steps on {self.n_examples} examples "
            f"({self.n_dropped} too long for the context were left out).",
            f"Pretraining validation loss (the windows lal train scores): {first:.3f} before, {last:.3f} after "
            "(the rise is forgetting).",
        ]
        if self.before is not None and self.after is not None:
            lines.append("Held-out instructions (words never seen in fine-tuning), greedy, exact match:")
            lines.append(compare_reports(self.before, self.after))
        lines.append(f"Saved to {self.path}; try it with: lal chat --ckpt {self.path.parent}")
        return "\n".join(lines)


def compare_reports(before: EvalReport, after: EvalReport) -> str:
    """Two reports of the same examples side by side: one row per task, then "all"."""
    lines = [f"{'task':<12} {'before':>7} {'after':>7} {'total':>5}"]
    for old, new in zip(before.to_rows(), after.to_rows()):
        lines.append(f"{new['task']:<12} {old['accuracy']:>7.0%} {new['accuracy']:>7.0%} {new['total']:>5}")
    return "\n".join(lines)


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run in ``out`` unless asked to continue it or replace it."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the fine-tuned checkpoints.")
    earlier = [name for name in ("best.pt", "last.pt", "metrics.jsonl") if (out / name).exists()]
    if resume and not (out / "last.pt").is_file():
        raise ValueError(f"Cannot resume: {out} holds no last.pt. Leave out --resume to start a new run.")
    if earlier and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds a run ({', '.join(earlier)}). Add --resume to continue it, --overwrite to "
            "replace it, or choose another --out."
        )
    if overwrite:
        for name in earlier:
            (out / name).unlink()


def finetune_from_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data_path: str | os.PathLike | None = None,
    steps: int = SFT_STEPS,
    batch_size: int = SFT_BATCH_SIZE,
    lr: float = SFT_LR,
    mix_ratio: float = SFT_MIX_RATIO,
    device: str | None = None,
    seed: int = 1337,
    progress: bool = True,
    dataset: str | None = None,
    text_path: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], object] = print,
) -> FinetuneReport:
    """Fine-tune a pretrained checkpoint on instructions into ``out/`` (``lal sft``).

    The instructions are ``data_path`` (JSON Lines, see :func:`load_instruction_file`) or, by
    default, the course's generated training set, scored before and after on its held-out set
    (``log`` gets both tables). A share ``mix_ratio`` of the steps replays the pretraining text
    (``dataset`` or ``text_path``, default TinyShakespeare, tokenized with the checkpoint's
    tokenizer), whose validation loss, on the same windows ``lal train`` scored, measures
    forgetting. ``out/last.pt`` and ``out/metrics.jsonl`` are written at every evaluation, so
    an interrupted run continues with ``resume=True``; an earlier run in ``out`` is refused
    unless ``resume`` or ``overwrite``.
    """
    from lal.checkpoint import load_checkpoint, save_checkpoint
    from lal.data import prepare_text_data

    out = Path(out)
    check_run_folder(out, resume=resume, overwrite=overwrite)
    examples, heldout = (load_instruction_file(data_path), []) if data_path is not None else (
        course_instructions("train"), course_instructions("heldout"))
    checkpoint = load_checkpoint(ckpt, device=pick_device(device))
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    if any(token not in tokenizer.special_tokens for token in CHAT_SPECIAL_TOKENS):
        tokenizer = add_special_tokens(model, tokenizer)
        log(f"Added the chat tokens {', '.join(CHAT_SPECIAL_TOKENS)} to the tokenizer and the model.")
    text = prepare_text_data(dataset=dataset, text_path=text_path, tokenizer=tokenizer)
    block_size = model.config.block_size
    device_name = str(next(model.parameters()).device)
    try:
        sft_batches = make_sft_batches(examples, tokenizer, batch_size, block_size, seed=seed, device=device_name)
    except ValueError as error:
        raise ValueError(
            f"The instruction examples cannot be encoded with this model's tokenizer: {error} "
            "A character-level model knows only the characters of the text it was pretrained on: give "
            "--data a JSONL file of examples written with those characters, or pretrain with a BPE or "
            "tiktoken tokenizer, which can encode any text."
        ) from error
    batches: BatchFn = sft_batches
    if mix_ratio > 0:
        pretraining = pretraining_batches(text.train, batch_size, block_size, seed=seed, device=device_name)
        batches = mix_pretraining(sft_batches, pretraining, mix_ratio)
    before = evaluate_instructions(model, tokenizer, heldout) if heldout else None
    if before is not None:
        log(f"Before fine-tuning:\n{before}")
    pretrained_cfg = (checkpoint.extra or {}).get("train_config") or {}
    cfg = default_finetune_config(
        max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, device=device, seed=seed, progress=progress,
        eval_windows=pretrained_cfg.get("eval_windows", 256), eval_interval=max(1, min(250, steps // 4)),
        out_dir=out,
    )
    torch.manual_seed(seed)  # dropout, if the model has any
    history = finetune(model, batches, text.val, cfg, tokenizer=tokenizer, resume=resume)
    after = evaluate_instructions(model, tokenizer, heldout) if heldout else None
    extra = {
        "finetuned_from": str(checkpoint.path),
        "finetune_config": cfg.to_dict(),
        "mix_ratio": mix_ratio,
        "val_loss": history.val_loss[-1],
        "heldout_accuracy": None if after is None else after.accuracy,
    }
    path = save_checkpoint(out / "last.pt", model, tokenizer, extra=extra)
    return FinetuneReport(Path(path), history, len(sft_batches), sft_batches.n_dropped, before, after)


def evaluate_checkpoint(
    ckpt: str | os.PathLike, data_path: str | os.PathLike, *, device: str | None = None
) -> EvalReport:
    """Score a checkpoint on an instruction file (``lal eval``): greedy answers, exact match."""
    from lal.checkpoint import load_checkpoint

    examples = load_instruction_file(data_path)
    checkpoint = load_checkpoint(ckpt, device=pick_device(device))
    return evaluate_instructions(checkpoint.model, checkpoint.tokenizer, examples)
