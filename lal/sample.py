"""Sampling: turning a model's next-token logits into text, one token at a time.

A language model only ever answers one question: *given these tokens, how likely is each
possible next token?* Generation asks it again and again, appending one chosen token each time.
How the token is chosen is the subject of chapter 6:

* **greedy** (``temperature=0``): always the most likely token. Deterministic, and prone to
  loops ("the the the ...") because the same context keeps giving the same answer;
* **temperature**: divide the logits by ``T`` before the softmax. ``T < 1`` sharpens the
  distribution towards greedy, ``T > 1`` flattens it towards uniform noise;
* **top-k**: sample only among the ``k`` most likely tokens, so the long tail of individually
  unlikely (but collectively likely) junk tokens is never drawn;
* **top-p** (nucleus): sample among the smallest set of most likely tokens whose probabilities
  add up to at least ``p``; the set is small when the model is sure and large when it is not.

The filters are applied in that order (temperature, then top-k, then top-p) to logits of any
shape ``(..., V)``; a filtered token gets a logit of ``-inf``, so its probability is exactly 0.
Two more tools work on the same logits: :func:`min_p_filter` (keep tokens at least ``min_p``
times as likely as the best one) and :func:`repetition_penalty` (push down tokens already
generated); :func:`sequence_logprob` scores a whole text under the model.
:func:`find_near_loop` tells whether generated text is stuck, even when each repeat differs a little.

:func:`stream` yields token ids as they are produced (for printing text as it appears),
:func:`generate` collects them, and :func:`generate_text` goes from a string prompt to a string.
All three can use the model's key/value cache, which gives exactly the same tokens as running
the model on the whole window at every step (see :func:`stream` for what it saves, and when it
cannot save anything).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lal.device import ThreadFitter
from lal.model import GPT
from lal.tokenizers import Tokenizer

PromptIds = Sequence[int] | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Pure functions on logits
# ---------------------------------------------------------------------------------------------


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Reject sampling settings that have no meaning, with a message that says what is allowed."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature!r}.")
    if temperature < 0:
        raise ValueError(
            f"temperature must be ≥ 0, got {temperature}: 0 means greedy (always the most likely "
            "token), 1 samples from the model's own distribution, higher values flatten it."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer (or None for no top-k filter), got {top_k!r}.")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(
            f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p!r}: it is the "
            "probability mass to keep, e.g. 0.9."
        )


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` (> 0): below 1 sharpens, above 1 flattens.

    softmax(z / T) keeps the order of the tokens but changes the gaps between their
    probabilities. ``T → 0`` tends to greedy decoding; call :func:`sample_next_token` with
    ``temperature=0`` for greedy, since dividing by zero is not defined.
    """
    check_sampling_args(temperature=temperature)
    if temperature == 0:
        raise ValueError(
            "temperature=0 means greedy decoding, which is an argmax, not a division by zero: use "
            "sample_next_token(logits, temperature=0) or logits.argmax(-1)."
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits along the last axis; set every other one to ``-inf``.

    Exactly ``k`` entries survive in every row, even when several logits tie at the boundary:
    ties are broken in favour of the *lower* token id (a stable sort), so the result does not
    depend on the hardware. ``k ≥ V`` keeps everything. Works on any shape ``(..., V)``.
    """
    check_sampling_args(top_k=k)
    if k >= logits.size(-1):
        return logits
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (..., V) best first
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order[..., :k], True)  # (..., V)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Sort the probabilities in decreasing order and walk down the list adding them up; a token
    is kept when the mass *before* it is still below ``p``. So the token whose probability
    makes the running sum cross ``p`` is kept (dropping it is the classic bug: with
    probabilities 0.5, 0.3, 0.15, 0.05 and ``p = 0.6``, the nucleus is the first two tokens,
    not just the first). The most likely token is always kept, and ``p = 1`` keeps everything.
    Ties are ordered by token id, as in :func:`top_k_filter`. Works on any shape ``(..., V)``.
    """
    check_sampling_args(top_p=p)
    if p == 1.0:
        return logits
    probs = F.softmax(logits.float(), dim=-1)  # (..., V)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (..., V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (..., V) mass of better tokens
    keep_sorted = mass_before < p  # (..., V); position 0 has mass 0 < p, so it is always kept
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)  # back to token order
    return logits.masked_fill(~keep, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens at least ``min_p`` times as likely as the most likely one (per row).

    min-p (Nguyen et al., 2024) sets the cut relative to the model's confidence: when the top
    token has probability 0.9, ``min_p = 0.1`` keeps only tokens above 0.09; when the top token
    has 0.05, it keeps everything above 0.005. A token is removed when its probability is
    *strictly* below ``min_p × p_max``, so a token exactly at the threshold (a tie) stays, and
    the most likely token always does. ``min_p = 0`` keeps everything. Works on ``(..., V)``.
    """
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}: e.g. 0.05 keeps tokens ≥ 5% of the top one.")
    probs = F.softmax(logits.float(), dim=-1)  # (..., V)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (..., 1): one cut per row
    return logits.masked_fill(probs < threshold, float("-inf"))


def repetition_penalty(logits: torch.Tensor, previous_ids: PromptIds, penalty: float) -> torch.Tensor:
    """Make the tokens already generated less likely: CTRL's repetition penalty (Keskar et al., 2019).

    Each *distinct* id of ``previous_ids`` gets its logit divided by ``penalty`` when positive and
    multiplied by it when negative, so with ``penalty > 1`` it always moves down (dividing a
    negative logit would move it *up*). An id that occurred ten times is penalised once, like one
    that occurred once. ``penalty = 1`` changes nothing. Works on ``(..., V)``, the same ids for
    every row; returns a new tensor.
    """
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
        raise ValueError(f"penalty must be a number > 0 (1 = no penalty, 1.2 is typical), got {penalty!r}.")
    ids = torch.unique(torch.as_tensor(previous_ids, dtype=torch.long, device=logits.device).flatten())  # (n,)
    seen = logits[..., ids]  # (..., n)
    penalised = torch.where(seen > 0, seen / penalty, seen * penalty)  # (..., n)
    return logits.index_copy(-1, ids, penalised)


def sequence_logprob(logits: torch.Tensor, ids: PromptIds) -> float:
    """log P(ids[1:] | ids[0]): the sum over t ≥ 1 of log softmax(logits[t − 1])[ids[t]].

    ``logits`` ``(T, V)`` are the model's outputs for the ``T`` tokens ``ids``; row ``t − 1``
    predicts token ``t``, so the first token is the condition and is not scored (a single token
    scores 0.0). It is the quantity behind perplexity (``exp(−logprob / (T − 1))``), and what a
    model uses to rank candidate continuations.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=logits.device)
    if logits.dim() != 2 or ids.dim() != 1 or logits.size(0) != ids.size(0):
        raise ValueError(
            f"logits must be (T, V) and ids (T,), got {tuple(logits.shape)} and {tuple(ids.shape)}."
        )
    log_probs = F.log_softmax(logits[:-1].float(), dim=-1)  # (T - 1, V): row t - 1 predicts token t
    return float(log_probs.gather(-1, ids[1:].unsqueeze(-1)).sum())


def next_token_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The probabilities :func:`sample_next_token` draws from, shape ``(..., V)``.

    Temperature first, then top-k, then top-p, then softmax. With ``temperature=0`` this is the
    one-hot distribution of greedy decoding (all mass on the argmax), which is what plotting
    and the sampling explorer show.
    """
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()  # sample in float32 even when the model runs in bf16/fp16
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return F.softmax(logits, dim=-1)


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token for each row of ``logits`` ``(B, V)``; returns ids ``(B, 1)`` long.

    ``temperature=0`` is greedy (argmax, no randomness used). Otherwise one sample is drawn per
    row with ``torch.multinomial`` from ``generator`` (the global RNG when None), so a seeded
    generator gives the same tokens on every run on the same device.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}; use logits[:, -1, :].")
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    probs = next_token_distribution(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def stream(
    model: GPT,
    prompt_ids: PromptIds,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int] = (),
    use_kv_cache: bool = True,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, one at a time, as the model produces them.

    * The prompt must hold at least one token (encode a newline to start "from nothing"). A
      prompt longer than the model's ``block_size`` is cropped to its last ``block_size``
      tokens: the model has no position embedding beyond that.
    * Generation stops early when a token of ``stop_tokens`` is produced; the stop token itself
      is not yielded.
    * ``seed`` makes sampling reproducible (on the same device) through a private
      ``torch.Generator``; the global RNG is neither used nor changed. ``seed=None`` uses the
      global RNG.
    * The model runs in eval mode (no dropout) under ``torch.inference_mode``, one step at a
      time, and is put back in its previous mode after every step, so stopping early (``break``)
      never leaves it in eval mode and your code between tokens runs with autograd as usual.

    **The KV cache.** Without it, every step runs the model on the whole window (up to
    ``block_size`` tokens) to get one new row of logits. With ``use_kv_cache=True`` the prompt is
    run once ("prefill"), the keys and values of every layer are kept, and each later step runs
    the model on the one new token only: the work of one position instead of the whole window.

    That holds while the sequence fits in the context. Once it is longer than ``block_size``,
    the window slides by one token per step, and with *learned absolute* position embeddings
    every token in it moves to a new position, so every cached key and value is stale. To give
    exactly the tokens of the plain path, the cache is then reset and the whole window
    re-computed at every step: past ``block_size`` the cache saves nothing. (Models with
    relative positions, such as rotary embeddings, can keep their cache while the window
    slides; some generators instead re-prefill only half a window so the cache lasts for the
    next half, but then the model sees less context than it could, and outputs differ.)

    Sampling draws exactly one sample per step from the same generator in the same order in
    both paths, so greedy and seeded outputs are the same with and without the cache (up to
    float rounding between the two kernels, which in practice never changes a token).
    """
    check_sampling_args(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}.")
    device = model.transformer.wte.weight.device
    window = _prompt_tensor(prompt_ids, model.config.block_size, device)  # (1, T ≤ block_size)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stops = {int(token) for token in stop_tokens}

    def choose(logits: torch.Tensor) -> torch.Tensor:  # (1, V) -> (1, 1)
        return sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    return _token_loop(model, window, max_new_tokens, choose, stops, use_kv_cache)


def generate(
    model: GPT,
    prompt_ids: PromptIds,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int] = (),
    use_kv_cache: bool = True,
) -> list[int]:
    """The new token ids (not the prompt, not the stop token), as a list. See :func:`stream`."""
    return list(
        stream(
            model,
            prompt_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_tokens=stop_tokens,
            use_kv_cache=use_kv_cache,
        )
    )


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int | str] = (),
    use_kv_cache: bool = True,
    stream_to: Callable[[str], object] | None = None,
) -> str:
    """Continue ``prompt`` and return the new text only (without the prompt or the stop token).

    Special-token strings in ``prompt`` (such as ``<|user|>``) become their ids, so a chat
    prompt can be passed as text. ``stop_tokens`` may name tokens by id or by their text (e.g.
    ``"<|end|>"`` or ``"\\n"``; the text must be exactly one token). ``stream_to`` is called with
    each new piece of text as soon as it is complete, e.g. ``stream_to=lambda s: print(s,
    end="", flush=True)`` to watch the text appear. The pieces add up to the returned string.
    """
    if not prompt:
        raise ValueError(
            "The prompt is empty, but the model needs at least one token to condition on. "
            'Start from a newline (prompt="\\n") to sample from nothing.'
        )
    prompt_ids = tokenizer.encode(prompt)
    stops = [_token_id(tokenizer, token) for token in stop_tokens]
    tokens = stream(
        model,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_tokens=stops,
        use_kv_cache=use_kv_cache,
    )
    return decode_stream(tokenizer, tokens, stream_to)


def decode_stream(
    tokenizer: Tokenizer, tokens: Iterable[int], stream_to: Callable[[str], object] | None = None
) -> str:
    """Decode token ids as they arrive, passing each completed piece of text to ``stream_to``.

    A byte-level BPE token can hold half of a UTF-8 character, and decoding it alone would show
    a replacement character '�'; such a piece is held back until the character is complete.
    Returns the whole text, which equals ``tokenizer.decode(list(tokens))``.
    """
    decoder = _IncrementalDecoder(tokenizer)
    for token in tokens:
        piece = decoder.add(token)
        if piece and stream_to is not None:
            stream_to(piece)
    rest = decoder.flush()
    if rest and stream_to is not None:
        stream_to(rest)
    return decoder.text


# ---------------------------------------------------------------------------------------------
# Diagnosing generated text
# ---------------------------------------------------------------------------------------------


def edit_distance(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``.

    The classic dynamic programme, one row at a time: ``row[j]`` is the distance between the
    first ``i`` items of ``a`` and the first ``j`` of ``b``. With a ``limit``, it stops as soon as
    every entry of a row exceeds it (the distance can only grow from there) and returns
    ``limit + 1``: comparing two unrelated stretches then costs a few rows, not all of them.
    """
    row = list(range(len(b) + 1))
    for i, item in enumerate(a, start=1):
        previous_diagonal, row[0] = row[0], i
        for j, other in enumerate(b, start=1):
            substitute = previous_diagonal + (item != other)
            previous_diagonal = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, substitute)  # delete, insert, substitute
        if limit is not None and min(row) > limit:
            return limit + 1
    return row[-1] if limit is None else min(row[-1], limit + 1)


@dataclass(frozen=True)
class NearLoop:
    """The end of a text written as ``repeats`` stretches of ``period`` tokens, each close to the last.

    ``start`` is where the first of those stretches begins; ``edits[i]`` is the edit distance
    between stretch ``i`` and stretch ``i + 1`` (0 everywhere: an exact loop).
    """

    period: int
    start: int
    repeats: int
    edits: tuple[int, ...]

    def stretches(self, ids: Sequence[int]) -> list[list[int]]:
        """The repeated stretches of ``ids``, in order."""
        return [list(ids[self.start + i * self.period : self.start + (i + 1) * self.period]) for i in range(self.repeats)]


def find_near_loop(
    ids: Sequence[int], *, min_period: int = 10, max_edit_rate: float = 0.3, min_repeats: int = 3
) -> NearLoop | None:
    """The approximate loop the end of ``ids`` is stuck in, or None when the text is not stuck.

    Greedy text rarely repeats *exactly*: the model writes the same line again with a word more
    or one less, so a test for exact periodicity finds nothing. Here the text's last
    ``min_repeats`` stretches of ``period`` tokens must each be within ``max_edit_rate × period``
    edits (:func:`edit_distance`) of the stretch before; an edit distance, unlike a
    position-by-position comparison, forgives an inserted word, and the rest still lines up.
    Of the periods ``≥ min_period`` that pass, the one with the fewest edits per token wins (the
    shortest on a tie, so an exact loop is reported once, not as its multiples), and the loop is
    then followed back through every earlier stretch that still passes.

    Stretches of ordinary text, real Shakespeare or text sampled at temperature 1, are more than
    0.6 edits per token apart at every period (measured on windows of 300 characters), so the
    default rate of 0.3 separates the two; periods below ``min_period`` are left to an exact test,
    since two short stretches can be close by chance.
    """
    ids = list(ids)
    if min_period < 1 or min_repeats < 2 or not 0.0 <= max_edit_rate < 1.0:
        raise ValueError("find_near_loop needs min_period ≥ 1, min_repeats ≥ 2 and 0 ≤ max_edit_rate < 1.")
    best: tuple[float, int] | None = None  # (edits per token, period)
    for period in range(min_period, len(ids) // min_repeats + 1):
        edits = _stretch_edits(ids, period, int(max_edit_rate * period), max_stretches=min_repeats)
        if len(edits) + 1 >= min_repeats:
            score = (sum(edits) / (len(edits) * period), period)
            best = score if best is None else min(best, score)
    if best is None:
        return None
    period = best[1]
    edits = _stretch_edits(ids, period, int(max_edit_rate * period), max_stretches=len(ids) // period)
    return NearLoop(period=period, start=len(ids) - (len(edits) + 1) * period, repeats=len(edits) + 1,
                    edits=tuple(edits))


def _stretch_edits(ids: list[int], period: int, allowed: int, max_stretches: int) -> list[int]:
    """Edit distances between consecutive stretches of ``period`` tokens, walking back from the end
    while each is ``≤ allowed``, over at most ``max_stretches`` stretches (earliest first)."""
    edits: list[int] = []
    end = len(ids)
    while len(edits) + 1 < max_stretches and end - 2 * period >= 0:
        distance = edit_distance(ids[end - 2 * period : end - period], ids[end - period : end], limit=allowed)
        if distance > allowed:
            break
        edits.insert(0, distance)
        end -= period
    return edits


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _prompt_tensor(prompt_ids: PromptIds, block_size: int, device: torch.device) -> torch.Tensor:
    """The prompt as a ``(1, T)`` long tensor on ``device``, cropped to its last ``block_size`` ids."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.size(0) == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"prompt_ids must be a list of ids or a (1, T) tensor, got shape {tuple(ids.shape)}.")
    if ids.numel() == 0:
        raise ValueError(
            "The prompt is empty, but the model needs at least one token to condition on. Start "
            "from a single token, e.g. the id of a newline: tokenizer.encode('\\n')."
        )
    return ids[-block_size:].unsqueeze(0).to(device)  # (1, T)


@contextmanager
def _eval_inference(model: GPT) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for one step, then the model's previous mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class _Context:
    """What the model has seen: the sliding window of ids, and (optionally) its KV cache."""

    def __init__(self, model: GPT, window: torch.Tensor, use_cache: bool) -> None:
        self.window = window  # (1, T): the last ≤ block_size tokens
        self.unread = window  # (1, T_new): tokens the cache has not seen yet
        self.cache = model.new_kv_cache(batch_size=1) if use_cache else None

    def append(self, token: torch.Tensor, block_size: int) -> None:
        self.window = torch.cat([self.window, token], dim=1)[:, -block_size:]  # (1, ≤ block_size)
        self.unread = token  # (1, 1)


def _plain_step(model: GPT, context: _Context) -> torch.Tensor:
    """Logits ``(1, V)`` for the next token: the whole window, recomputed from scratch."""
    logits, _ = model(context.window)  # (1, T, V)
    return logits[:, -1, :]


def _cached_step(model: GPT, context: _Context) -> torch.Tensor:
    """Logits ``(1, V)`` for the next token, feeding the cache only the tokens it has not seen.

    When the unread tokens no longer fit behind the cached ones, the window has slid: every
    position changed, so the cache is reset and the whole window is read again (see :func:`stream`).
    """
    cache = context.cache
    if cache.length + context.unread.size(1) > model.config.block_size:
        cache.reset()
        context.unread = context.window
    logits, _ = model(context.unread, kv_cache=cache)  # (1, T_new, V)
    return logits[:, -1, :]


def _token_loop(
    model: GPT,
    window: torch.Tensor,
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    stops: set[int],
    use_kv_cache: bool,
) -> Iterator[int]:
    """The generation loop shared by both paths; yields outside inference mode (see :func:`stream`)."""
    step = _cached_step if use_kv_cache else _plain_step
    with _eval_inference(model):
        context = _Context(model, window, use_cache=use_kv_cache)
    fit_threads = ThreadFitter()  # follow other programs' CPU use (lal/_cpu_load.py)
    for _ in range(max_new_tokens):
        fit_threads()
        with _eval_inference(model):
            token = choose(step(model, context))  # (1, 1)
            token_id = int(token.item())
            if token_id in stops:
                return
            context.append(token, model.config.block_size)
        yield token_id


def _token_id(tokenizer: Tokenizer, token: int | str) -> int:
    """An id given as an int, a special-token string, or text that encodes to exactly one token."""
    if isinstance(token, int):
        return token
    special = tokenizer.special_tokens
    if token in special:
        return special[token]
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        raise ValueError(
            f"Stop token {token!r} encodes to {len(ids)} tokens ({ids}); a stop token must be a single "
            "token. Pass its id, a special token such as '<|end|>', or a single character."
        )
    return ids[0]


class _IncrementalDecoder:
    """Turn a growing list of ids into text pieces, never splitting a multi-byte character.

    The whole list is decoded each time and only the new suffix is released; a trailing '�'
    (an incomplete character) waits for the next token.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decoded = self.tokenizer.decode(self.ids)
        if decoded.endswith("\ufffd"):
            return ""
        return self._release(decoded)

    def flush(self) -> str:
        return self._release(self.tokenizer.decode(self.ids))

    def _release(self, decoded: str) -> str:
        piece = decoded[len(self.text) :]
        self.text = decoded
        return piece
