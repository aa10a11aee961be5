"""Tokenizers: how text becomes the integers a language model reads, and back.

A model never sees text, only token ids. A tokenizer fixes the vocabulary (which pieces of
text get an id) and the two maps between text and ids. The choice is a trade-off:

* **Characters** (`CharTokenizer`): a tiny vocabulary (65 symbols for TinyShakespeare) and
  no training, but long sequences: every character costs one position of the context.
* **Byte-level BPE** (`BPETokenizer`): starts from the 256 possible bytes, so it can encode
  *any* text, then learns merges of frequent neighbours ("t" + "h" -> "th"), trading a
  larger vocabulary for shorter sequences. It is trained here from scratch, in seconds.
* **GPT-2's BPE via tiktoken** (`TiktokenTokenizer`): the same algorithm trained by OpenAI
  on a large web corpus: 50,257 tokens, very short sequences, but an embedding table that a
  small model trained on 1 MB of text cannot fill.

All three share one interface (`Tokenizer`): `encode`, `decode`, `vocab_size`,
`special_tokens`, `to_dict` / `save` / `load`. Special tokens such as `<|user|>` are strings
that always map to one id of their own; the fine-tuning chapter uses them to mark who speaks.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from functools import lru_cache
from pathlib import Path
from typing import Literal, Union

import regex

#: Chat markers used by the fine-tuning chapter: who speaks, and where a turn ends.
CHAT_SPECIAL_TOKENS: tuple[str, ...] = ("<|user|>", "<|assistant|>", "<|end|>")

#: GPT-2's document separator (id 50256 in `r50k_base`).
ENDOFTEXT = "<|endoftext|>"

#: GPT-2's pre-split pattern (the one tiktoken uses for `r50k_base`). Text is cut into chunks
#: (contractions, runs of letters or digits with one optional leading space, runs of
#: punctuation, whitespace) and merges never cross a chunk boundary, so "dog." and "dog!" share
#: the token for "dog" instead of learning one token per punctuation variant.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

#: The default BPE vocabulary size of `build_tokenizer("bpe", text)`.
DEFAULT_BPE_VOCAB_SIZE = 1024

#: What `encode` may treat as special: "all" registered special tokens, a set of them, or None
#: (special-token strings are then encoded as ordinary text).
AllowedSpecial = Union[Literal["all"], Set[str], None]

Pair = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class Tokenizer(ABC):
    """What every tokenizer offers: text <-> ids, a vocabulary size, and a file format.

    The model only needs `vocab_size` (the number of rows of its embedding table) and the
    ids; training, sampling and checkpoints only use the methods below, so any tokenizer can
    be swapped in.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """A short name for tables and logs, e.g. "char", "bpe", "r50k_base"."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids: every id is in `range(vocab_size)`."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> its id (a copy: changing it changes nothing)."""

    @abstractmethod
    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Turn text into token ids.

        `allowed_special` says which special-token strings become their single id: "all"
        (default), a set of them, or None to encode them as ordinary text (use None for text
        you do not control, so a user cannot type "<|assistant|>" and forge a turn).
        """

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Turn token ids back into text."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one token stands for (for showing token boundaries)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer, as plain JSON-able data.

        Checkpoints embed this dictionary, so a saved model always carries its tokenizer.
        """

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer to a JSON file and return its path.

        The file is written next to its destination and then renamed over it, so an
        interrupted save never leaves a half-written tokenizer behind.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(path.name + ".tmp")
        with open(tmp_path, "w", encoding="utf-8") as file:
            json.dump(self.to_dict(), file, ensure_ascii=False, indent=1)
        os.replace(tmp_path, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer saved with `save`; `CharTokenizer.load` also checks its kind."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(
                f"{path} holds a {type(tokenizer).__name__}, not a {cls.__name__}: "
                f"load it with load_tokenizer(path) or Tokenizer.load(path)."
            )
        return tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def tokenizer_from_dict(data: Mapping) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output (e.g. stored in a checkpoint)."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(
            "This is not a tokenizer description: expected a dictionary with a 'kind' key, as "
            "written by Tokenizer.to_dict() or Tokenizer.save()."
        )
    builders = {"char": CharTokenizer.from_dict, "bpe": BPETokenizer.from_dict,
                "tiktoken": TiktokenTokenizer.from_dict}
    kind = data["kind"]
    if kind not in builders:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected one of {sorted(builders)}.")
    try:
        return builders[kind](data)
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"The {kind!r} tokenizer description is incomplete or malformed ({err!r}); "
            f"re-create the tokenizer and save it again."
        ) from err


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer JSON file written by `Tokenizer.save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer file at {path}: save one with tokenizer.save(path).")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a tokenizer file (not valid UTF-8 JSON: {err}); "
            f"it may be truncated — save the tokenizer again."
        ) from err
    return tokenizer_from_dict(data)


def build_tokenizer(
    kind: Literal["char", "bpe", "tiktoken"],
    text: str | None = None,
    vocab_size: int | None = None,
    special_tokens: Sequence[str] | None = None,
) -> Tokenizer:
    """One entry point for the three kinds, as the command line and notebooks use it.

    `text` is required for "char" and "bpe" (they learn their vocabulary from it);
    `vocab_size` only applies to "bpe" (default `DEFAULT_BPE_VOCAB_SIZE`). `special_tokens`
    defaults to none for "char"/"bpe" and to `CHAT_SPECIAL_TOKENS` for "tiktoken".
    """
    if kind == "tiktoken":
        if vocab_size is not None:
            raise ValueError("vocab_size only applies to 'bpe'; GPT-2's vocabulary is fixed.")
        return TiktokenTokenizer(special_tokens=CHAT_SPECIAL_TOKENS if special_tokens is None
                                 else special_tokens)
    if kind not in ("char", "bpe"):
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected 'char', 'bpe' or 'tiktoken'.")
    if text is None:
        raise ValueError(f"A {kind!r} tokenizer learns its vocabulary from text: pass text=...")
    special_tokens = () if special_tokens is None else special_tokens
    if kind == "char":
        if vocab_size is not None:
            raise ValueError("vocab_size only applies to 'bpe'; a char vocabulary is the "
                             "set of characters in the text.")
        return CharTokenizer.from_text(text, special_tokens=special_tokens)
    return BPETokenizer.train(text, vocab_size or DEFAULT_BPE_VOCAB_SIZE,
                              special_tokens=special_tokens)


# ---------------------------------------------------------------------------------------------
# Special tokens (shared by the char and BPE tokenizers)
# ---------------------------------------------------------------------------------------------


def _check_special_tokens(special_tokens: Sequence[str]) -> tuple[str, ...]:
    """Validate special tokens: non-empty strings, no duplicates."""
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a sequence of strings, e.g. "
                         f"({special_tokens!r},), not a single string.")
    tokens = tuple(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"Special tokens must be non-empty strings, got {token!r}.")
    duplicates = sorted(token for token, count in Counter(tokens).items() if count > 1)
    if duplicates:
        raise ValueError(f"Special tokens must be unique; repeated: {duplicates}.")
    return tokens


def _resolve_allowed(allowed_special: AllowedSpecial, registered: Mapping[str, int]) -> set[str]:
    """Turn the `allowed_special` argument into the set of special strings to honour."""
    if allowed_special is None:
        return set()
    if allowed_special == "all":
        return set(registered)
    unknown = sorted(set(allowed_special) - set(registered))
    if unknown:
        raise ValueError(f"Not special tokens of this tokenizer: {unknown}; "
                         f"registered: {sorted(registered)}.")
    return set(allowed_special)


def split_on_special(text: str, specials: Set[str]) -> list[tuple[str, bool]]:
    """Cut text around special-token strings: [(piece, is_special), ...].

    Special tokens are matched before anything else so they are never broken into ordinary
    pieces. Longer tokens are tried first, so a special token that contains another wins.
    """
    if not specials:
        return [(text, False)] if text else []
    alternatives = "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True))
    pieces = re.split(f"({alternatives})", text)
    # re.split with one capturing group alternates: ordinary, special, ordinary, ...
    return [(piece, index % 2 == 1) for index, piece in enumerate(pieces) if piece]


# ---------------------------------------------------------------------------------------------
# Characters
# ---------------------------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """One id per character: the simplest tokenizer, and the one chapter 1 builds by hand.

    Ids are the positions of the characters in sorted order (so the same text always gives
    the same ids), followed by the special tokens, if any.
    """

    def __init__(self, chars: Sequence[str], special_tokens: Sequence[str] = ()) -> None:
        chars = list(chars)
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(f"A CharTokenizer vocabulary holds single characters, "
                                 f"got {char!r}.")
        if len(set(chars)) != len(chars):
            raise ValueError("A CharTokenizer vocabulary must not repeat characters.")
        specials = _check_special_tokens(special_tokens)
        clashes = sorted(set(specials) & set(chars))
        if clashes:
            raise ValueError(f"Special tokens {clashes} are also ordinary characters; "
                             f"use multi-character markers such as '<|user|>'.")
        self.chars: list[str] = chars
        self._stoi = {char: index for index, char in enumerate(chars)}
        self._special = {token: len(chars) + index for index, token in enumerate(specials)}
        self._itos = chars + list(specials)

    @classmethod
    def from_text(cls, text: str, special_tokens: Sequence[str] = ()) -> CharTokenizer:
        """Vocabulary = the sorted set of characters in `text`, then the special tokens.

        Occurrences of the special tokens in `text` are left out of the character set: they
        will be encoded as one id each, not as their characters.
        """
        specials = _check_special_tokens(special_tokens)
        ordinary = "".join(piece for piece, is_special in split_on_special(text, set(specials))
                           if not is_special)
        if not ordinary:
            raise ValueError("Cannot build a character vocabulary from empty text: pass the "
                             "training text, e.g. CharTokenizer.from_text(text).")
        return cls(sorted(set(ordinary)), special_tokens=specials)

    @property
    def name(self) -> str:
        return "char"

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        allowed = _resolve_allowed(allowed_special, self._special)
        ids: list[int] = []
        offset = 0
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self._special[piece])
            else:
                ids.extend(self._encode_chars(piece, offset))
            offset += len(piece)
        return ids

    def _encode_chars(self, piece: str, offset: int) -> list[int]:
        """Look up every character; on a miss, say which one, where, and what to do."""
        try:
            return [self._stoi[char] for char in piece]
        except KeyError:
            position, char = next((i, c) for i, c in enumerate(piece) if c not in self._stoi)
            raise ValueError(
                f"Character {char!r} (U+{ord(char):04X}) at position {offset + position} is not "
                f"in this tokenizer's vocabulary of {len(self.chars)} characters. Build the "
                f"tokenizer from text that contains it (CharTokenizer.from_text(...)), or remove "
                f"or replace that character in your input."
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._token_string(token_id) for token_id in ids)

    def _token_string(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._itos):
            raise ValueError(f"Token id {token_id} is outside this vocabulary "
                             f"(ids 0..{len(self._itos) - 1}).")
        return self._itos[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_string(token_id).encode("utf-8")

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": list(self.chars), "special_tokens": list(self._special)}

    @classmethod
    def from_dict(cls, data: Mapping) -> CharTokenizer:
        return cls(data["chars"], special_tokens=data.get("special_tokens", ()))


# ---------------------------------------------------------------------------------------------
# Byte-pair encoding: the two small functions chapter 2 builds by hand
# ---------------------------------------------------------------------------------------------


def get_pair_counts(ids: Sequence[int]) -> dict[Pair, int]:
    """Count each pair of neighbours: [1, 2, 3, 1, 2] -> {(1,2): 2, (2,3): 1, (3,1): 1}.

    BPE merges the most frequent pair, because replacing it saves the most positions.
    """
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def most_frequent_pair(counts: Mapping[Pair, int]) -> Pair:
    """The pair to merge next: the most frequent, and among equals the smallest pair.

    The tie-break makes training deterministic: the same text always gives the same merges.
    """
    return min(counts, key=lambda pair: (-counts[pair], pair))


def bpe_merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Occurrences never overlap: in [1, 1, 1] the pair (1, 1) is merged once, giving
    [new_id, 1], because the middle 1 is used up by the first merge.
    """
    merged: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


# ---------------------------------------------------------------------------------------------
# Fast BPE training
# ---------------------------------------------------------------------------------------------


class _PairStatistics:
    """Pair counts over a corpus of words, updated incrementally as merges are applied.

    The naive trainer recounts every pair of the whole corpus after each merge: thousands of
    merges times a million bytes. Two observations make it fast:

    1. Pre-splitting turns the corpus into *words* that repeat: TinyShakespeare's ~300,000
       chunks are only ~25,000 distinct ones. Each distinct word is stored once with its
       frequency, and a pair inside it counts `frequency` times.
    2. A merge only changes the words that contain the merged pair. An index from each pair
       to the words containing it finds them directly, and only their pairs are recounted.

    The most frequent pair is kept in a heap of (-count, pair) entries. Counts change after
    each merge, so old entries go stale; rather than searching the heap to fix them, a fresh
    entry is pushed and stale ones are skipped when they reach the top ("lazy deletion").
    """

    def __init__(self, word_counts: Mapping[tuple[int, ...], int]) -> None:
        self.words: list[list[int]] = [list(word) for word in word_counts]
        self.freqs: list[int] = list(word_counts.values())
        self.counts: dict[Pair, int] = {}
        self.words_with: dict[Pair, set[int]] = {}
        for index, (word, freq) in enumerate(zip(self.words, self.freqs)):
            for pair in zip(word, word[1:]):
                self.counts[pair] = self.counts.get(pair, 0) + freq
                self.words_with.setdefault(pair, set()).add(index)
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def pop_most_frequent(self) -> tuple[Pair, int] | None:
        """The most frequent pair and its count (ties: smallest pair), or None if none is left."""
        while self.heap:
            negative_count, pair = heapq.heappop(self.heap)
            if self.counts.get(pair) == -negative_count:
                return pair, -negative_count
        return None

    def merge(self, pair: Pair, new_id: int) -> None:
        """Apply one merge to every word containing `pair`, updating only what changed."""
        delta: Counter[Pair] = Counter()
        for index in self.words_with.pop(pair):
            old_word, freq = self.words[index], self.freqs[index]
            new_word = bpe_merge(old_word, pair, new_id)
            old_pairs = list(zip(old_word, old_word[1:]))
            new_pairs = list(zip(new_word, new_word[1:]))
            for old_pair in old_pairs:
                delta[old_pair] -= freq
            for new_pair in new_pairs:
                delta[new_pair] += freq
                self.words_with.setdefault(new_pair, set()).add(index)
            for gone in set(old_pairs) - set(new_pairs) - {pair}:
                self.words_with[gone].discard(index)
            self.words[index] = new_word
        for changed, change in delta.items():
            if change:
                self._add(changed, change)

    def _add(self, pair: Pair, change: int) -> None:
        count = self.counts.get(pair, 0) + change
        if count > 0:
            self.counts[pair] = count
            heapq.heappush(self.heap, (-count, pair))
        else:
            self.counts.pop(pair, None)
            self.words_with.pop(pair, None)


def _word_counts(text: str, pattern: regex.Pattern, specials: Set[str]) -> Counter:
    """Pre-split text into chunks and count each distinct chunk as a tuple of byte values."""
    counts: Counter[str] = Counter()
    for piece, is_special in split_on_special(text, specials):
        if not is_special:
            counts.update(pattern.findall(piece))
    return Counter({tuple(chunk.encode("utf-8")): freq for chunk, freq in counts.items()})


def _describe_bytes(token: bytes) -> str:
    return repr(token.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------------------------------
# The BPE tokenizer
# ---------------------------------------------------------------------------------------------


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding, as in GPT-2, trained from scratch.

    Ids 0-255 are the 256 byte values, so every string can be encoded (no unknown
    characters, unlike `CharTokenizer`). Id 256 + i is the i-th learned merge, and special
    tokens come last. Encoding applies the merges in the order they were learned; decoding
    concatenates the bytes of each token and reads them as UTF-8.
    """

    #: How many distinct chunks `encode` remembers; repeated words are encoded only once.
    CHUNK_CACHE_SIZE = 1 << 16

    def __init__(
        self,
        merges: Sequence[tuple[Pair, int]],
        special_tokens: Sequence[str] = (),
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> None:
        self.merges: list[tuple[Pair, int]] = [(tuple(pair), new_id) for pair, new_id in merges]
        self.vocab: dict[int, bytes] = {byte: bytes([byte]) for byte in range(256)}
        for index, ((left, right), new_id) in enumerate(self.merges):
            if new_id != 256 + index or left not in self.vocab or right not in self.vocab:
                raise ValueError(f"Merge {index} ({left}, {right}) -> {new_id} is invalid: merge i "
                                 f"must create id 256 + i from ids that already exist.")
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]
        self.pattern = pattern
        self._compiled = regex.compile(pattern)
        self._ranks: dict[Pair, int] = {pair: new_id for pair, new_id in self.merges}
        first_special = 256 + len(self.merges)
        self._special = {token: first_special + index
                         for index, token in enumerate(_check_special_tokens(special_tokens))}
        self._special_by_id = {token_id: token for token, token_id in self._special.items()}
        self._encode_chunk_cached = lru_cache(maxsize=self.CHUNK_CACHE_SIZE)(self._encode_chunk)

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] | None = None,
        verbose: bool = False,
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        `vocab_size` is the size of the final vocabulary, special tokens included, so it is
        the number to give the model. Training stops early (with a smaller vocabulary) if
        every chunk of the text has become a single token.
        """
        specials = _check_special_tokens(special_tokens or ())
        num_merges = vocab_size - 256 - len(specials)
        if num_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 "
                             f"byte tokens + {len(specials)} special tokens at least.")
        if not text:
            raise ValueError("Cannot train BPE on empty text: pass the training text.")
        stats = _PairStatistics(_word_counts(text, regex.compile(pattern), set(specials)))
        vocab = {byte: bytes([byte]) for byte in range(256)}
        merges: list[tuple[Pair, int]] = []
        report_every = max(1, num_merges // 10)
        for new_id in range(256, 256 + num_merges):
            best = stats.pop_most_frequent()
            if best is None:
                if verbose:
                    print(f"stopped after {len(merges)} merges: every chunk is one token")
                break
            pair, count = best
            stats.merge(pair, new_id)
            merges.append((pair, new_id))
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            if verbose and (len(merges) % report_every == 0 or len(merges) <= 10):
                print(f"merge {len(merges)}/{num_merges}: {pair} -> {new_id} "
                      f"{_describe_bytes(vocab[new_id])} ({count} occurrences)")
        return cls(merges, special_tokens=specials, pattern=pattern)

    @property
    def name(self) -> str:
        return "bpe"

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self._special)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        allowed = _resolve_allowed(allowed_special, self._special)
        ids: list[int] = []
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self._special[piece])
                continue
            for chunk in self._compiled.findall(piece):
                ids.extend(self._encode_chunk_cached(chunk))
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Encode one pre-split chunk: repeatedly apply the earliest-learned applicable merge.

        Merges must be replayed in training order: a later merge may be built from an earlier
        one (e.g. "th" + "e"), so it only finds its pair once the earlier one is applied.
        """
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, float("inf")))
            if pair not in self._ranks:
                break
            ids = bpe_merge(ids, pair, self._ranks[pair])
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenate the tokens' bytes and read them as UTF-8.

        A single token can hold part of a multi-byte character (e.g. one byte of an emoji), so
        an arbitrary id list may not be valid UTF-8; such bytes become U+FFFD, the replacement
        character. Ids produced by `encode` always decode back to the exact original text.
        """
        return b"".join(self.token_bytes(token_id) for token_id in ids).decode(
            "utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id].encode("utf-8")
        raise ValueError(f"Token id {token_id} is outside this vocabulary "
                         f"(ids 0..{self.vocab_size - 1}).")

    def to_dict(self) -> dict:
        return {"kind": "bpe", "pattern": self.pattern,
                "merges": [list(pair) for pair, _ in self.merges],
                "special_tokens": list(self._special)}

    @classmethod
    def from_dict(cls, data: Mapping) -> BPETokenizer:
        merges = [((int(left), int(right)), 256 + index)
                  for index, (left, right) in enumerate(data["merges"])]
        return cls(merges, special_tokens=data.get("special_tokens", ()),
                   pattern=data.get("pattern", GPT2_SPLIT_PATTERN))


# ---------------------------------------------------------------------------------------------
# GPT-2's tokenizer, through tiktoken
# ---------------------------------------------------------------------------------------------


class TiktokenUnavailableError(RuntimeError):
    """tiktoken's vocabulary file could not be loaded (offline without ``TIKTOKEN_CACHE_DIR``, …)."""


def _load_base_encoding(encoding_name: str):
    """`tiktoken.get_encoding`, with the offline failure turned into advice.

    tiktoken downloads its vocabulary file the first time an encoding is used and caches it
    in the folder named by the environment variable `TIKTOKEN_CACHE_DIR` (default: a temporary
    folder). Without internet and without that cache, the download fails deep inside
    `requests`; the message below says how to fix it.
    """
    import tiktoken

    if encoding_name not in tiktoken.list_encoding_names():
        raise ValueError(f"Unknown tiktoken encoding {encoding_name!r}; "
                         f"available: {tiktoken.list_encoding_names()}.")
    try:
        return tiktoken.get_encoding(encoding_name)
    except Exception as err:  # network, proxy, corrupted cache: all end in the same advice
        cache = os.environ.get("TIKTOKEN_CACHE_DIR")
        where = (f"TIKTOKEN_CACHE_DIR is set to {cache!r} but does not hold it" if cache
                 else "TIKTOKEN_CACHE_DIR is not set")
        raise TiktokenUnavailableError(
            f"Could not load tiktoken's {encoding_name!r} vocabulary "
            f"({type(err).__name__}: {err}). "
            f"tiktoken downloads it on first use and caches it; {where}. Fix: go online once "
            f"(the file is then cached), or set the environment variable TIKTOKEN_CACHE_DIR to a "
            f"folder holding tiktoken's cached files (copied from a machine where this worked) "
            f"before creating the tokenizer."
        ) from err


class TiktokenTokenizer(Tokenizer):
    """GPT-2's byte-level BPE (`r50k_base`) through tiktoken, with chat tokens added.

    The special tokens are registered in a new `tiktoken.Encoding` that extends the original
    one, with ids after GPT-2's last (`<|endoftext|>` = 50256), so `<|user|>` is always exactly
    one token and ordinary text encodes exactly as in GPT-2.
    """

    def __init__(self, encoding_name: str = "r50k_base",
                 special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS) -> None:
        import tiktoken

        base = _load_base_encoding(encoding_name)
        registered = dict(base._special_tokens)
        next_id = base.n_vocab
        self._added: dict[str, int] = {}
        for token in _check_special_tokens(special_tokens):
            if token not in registered:
                registered[token] = self._added[token] = next_id
                next_id += 1
        self.encoding_name = encoding_name
        self.encoding = tiktoken.Encoding(
            name=f"{encoding_name}+lal" if self._added else encoding_name,
            pat_str=base._pat_str,
            mergeable_ranks=base._mergeable_ranks,
            special_tokens=registered,
        )

    @property
    def name(self) -> str:
        return self.encoding_name

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.encoding._special_tokens)

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        allowed = _resolve_allowed(allowed_special, self.encoding._special_tokens)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        self._check_ids(ids)
        return self.encoding.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        self._check_ids([token_id])
        return self.encoding.decode_single_token_bytes(token_id)

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [token_id for token_id in ids if not 0 <= token_id < self.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside this vocabulary "
                             f"(ids 0..{self.vocab_size - 1}).")

    def to_dict(self) -> dict:
        """Only the encoding name and the added tokens: the ranks come from tiktoken."""
        return {"kind": "tiktoken", "encoding_name": self.encoding_name,
                "special_tokens": list(self._added)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TiktokenTokenizer:
        return cls(data["encoding_name"], special_tokens=data.get("special_tokens", ()))
