"""Generation with the MLX model: MLX computes the logits, ``lal.sample`` chooses the tokens.

The model and its KV cache run in MLX; each step's last row of logits (one vector of
``vocab_size`` numbers) goes to ``lal.sample.sample_next_token`` through NumPy, so temperature,
top-k, top-p, greedy decoding and the seeded ``torch.Generator`` are the very code the PyTorch
backend uses. With the same weights and seed, the two backends therefore write the same text
(up to float rounding at a near tie, which in practice does not happen in a few hundred tokens).

The cache follows ``lal.sample.stream``: the prompt is read once, then one token per step; once
the text is longer than the context, the window slides, every position changes, and the cache is
rebuilt from the whole window at each step (learned absolute positions cannot be shifted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import mlx.core as mx
import numpy as np
import torch

from lal.mlx.model import GPT
from lal.sample import PromptIds, _prompt_tensor, check_sampling_args, decode_stream, sample_next_token
from lal.tokenizers import Tokenizer


def _prompt_ids(prompt_ids: PromptIds, block_size: int) -> list[int]:
    """The prompt as a list of ids, cropped to its last ``block_size``: lal.sample's own checks."""
    return _prompt_tensor(prompt_ids, block_size, torch.device("cpu"))[0].tolist()


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
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, as ``lal.sample.stream`` does for a PyTorch model."""
    check_sampling_args(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}.")
    block_size = model.config.block_size
    window = _prompt_ids(prompt_ids, block_size)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stops = {int(token) for token in stop_tokens}
    cache = model.new_kv_cache()
    unread = window
    was_training = model.training
    model.eval()  # no dropout; MLX keeps no autograd state, so nothing like torch.no_grad is needed
    try:
        for _ in range(max_new_tokens):
            if cache.length + len(unread) > block_size:  # the window slid: every position changed
                cache.reset()
                unread = window
            logits, _ = model(mx.array([unread], dtype=mx.int32), kv_cache=cache)  # (1, T_new, V)
            last = torch.from_numpy(np.array(logits[:, -1, :]))  # (1, V): computing happens here
            token = int(sample_next_token(last, temperature=temperature, top_k=top_k, top_p=top_p,
                                          generator=generator).item())
            if token in stops:
                return
            window = (window + [token])[-block_size:]
            unread = [token]
            yield token
    finally:
        model.train(was_training)


def generate(model: GPT, prompt_ids: PromptIds, max_new_tokens: int, **sampling) -> list[int]:
    """The new token ids (not the prompt, not the stop token), as a list. See :func:`stream`."""
    return list(stream(model, prompt_ids, max_new_tokens, **sampling))


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
    stream_to: Callable[[str], object] | None = None,
) -> str:
    """Continue ``prompt`` and return the new text only: ``lal.sample.generate_text`` for an MLX model."""
    if not prompt:
        raise ValueError('The prompt is empty; start from a newline (prompt="\\n") to sample from nothing.')
    tokens = stream(model, tokenizer.encode(prompt), max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed)
    return decode_stream(tokenizer, tokens, stream_to)
