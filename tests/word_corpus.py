"""Texts of random words from a short list, for the tests that train tiny models: the spelling is
learnable in a few dozen steps, the order of the words is not, so the loss falls and then levels off."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from lal.tokenizers import CharTokenizer

WORDS = ("the", "king", "queen", "shall", "speak", "of", "love", "and", "death", "now")


def word_text(n_words: int, seed: int, words: Sequence[str] = WORDS) -> str:
    """``n_words`` words drawn from ``words`` with a seeded generator, joined by spaces."""
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n_words))


def char_corpus(text: str, n_train: int | None = None) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """A character tokenizer of ``text`` and its ids split into train and validation (the first
    ``n_train`` ids train; by default the first 90 %)."""
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(0.9 * len(ids)) if n_train is None else n_train
    return tokenizer, ids[:split], ids[split:]
