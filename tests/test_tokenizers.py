"""Tests of lal.tokenizers: exact ids, round-trips, file format, and clear errors.

The `shakespeare` fixture (TinyShakespeare's text) comes from conftest.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import skip_unless_available
from lal.tokenizers import (
    CHAT_SPECIAL_TOKENS,
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    TiktokenUnavailableError,
    Tokenizer,
    bpe_merge,
    build_tokenizer,
    get_pair_counts,
    load_tokenizer,
    most_frequent_pair,
    tokenizer_from_dict,
)

MIXED_TEXT = (
    "Hello world! Hello, wörld? The café serves crème brûlée. 123 4567 89.\n"
    "Ünïcödé: naïve façade, 日本語のテキスト, emoji 🙂🚀👩‍💻, and tabs\there.\n"
) * 20


@pytest.fixture(scope="module")
def gpt2() -> TiktokenTokenizer:
    try:
        return TiktokenTokenizer()
    except TiktokenUnavailableError as err:  # offline without a tiktoken cache: the message says what to do
        skip_unless_available(False, str(err))


@pytest.fixture(scope="module")
def mixed_bpe() -> BPETokenizer:
    return BPETokenizer.train(MIXED_TEXT, 350, special_tokens=CHAT_SPECIAL_TOKENS)


# --- the reference functions of chapter 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "pair", "expected"),
    [
        ([1, 1, 1], (1, 1), [9, 1]),  # overlapping: the middle 1 is used once
        ([1, 1, 1, 1], (1, 1), [9, 9]),
        ([1, 2, 1, 2, 1], (1, 2), [9, 9, 1]),
        ([3, 1, 2], (1, 2), [3, 9]),  # pair at the end
        ([1, 2, 3], (2, 1), [1, 2, 3]),  # order matters: (2, 1) is not (1, 2)
        ([1], (1, 1), [1]),
        ([], (1, 1), []),
    ],
)
def test_bpe_merge(ids: list[int], pair: tuple[int, int], expected: list[int]) -> None:
    assert bpe_merge(ids, pair, 9) == expected


def test_get_pair_counts_counts_overlapping_neighbours() -> None:
    assert get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_pair_counts([1, 1, 1]) == {(1, 1): 2}
    assert get_pair_counts([5]) == {}


def test_most_frequent_pair_breaks_ties_by_smallest_pair() -> None:
    assert most_frequent_pair({(2, 3): 5, (1, 9): 5, (0, 0): 1}) == (1, 9)
    assert most_frequent_pair({(2, 3): 6, (1, 9): 5}) == (2, 3)


# --- BPE training --------------------------------------------------------------------------


def test_bpe_classic_example_exact_merges_and_ids() -> None:
    # Wikipedia's example: aa -> Z, then ab -> Y (tied with Za; (97, 98) < (256, 97)), ZY -> X.
    tokenizer = BPETokenizer.train("aaabdaaabac", vocab_size=259)
    assert tokenizer.merges == [((97, 97), 256), ((97, 98), 257), ((256, 257), 258)]
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tokenizer.vocab[258] == b"aaab"
    assert tokenizer.vocab_size == 259


def test_bpe_merges_never_cross_pre_split_chunks() -> None:
    tokenizer = BPETokenizer.train("ab ab ab ab", vocab_size=258)
    # Chunks are "ab" and " ab": the first merge is inside a chunk, never "b" + " ".
    assert tokenizer.merges == [((97, 98), 256), ((32, 256), 257)]
    assert tokenizer.encode("ab ab") == [256, 257]


def _naive_bpe_merges(text: str, num_merges: int) -> list:
    """Reference trainer: recount every pair of every word after each merge."""
    chunks = Counter(regex.findall(GPT2_SPLIT_PATTERN, text))
    words = {tuple(chunk.encode("utf-8")): freq for chunk, freq in chunks.items()}
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts: Counter = Counter()
        for word, freq in words.items():
            for pair, count in get_pair_counts(word).items():
                counts[pair] += count * freq
        pair = most_frequent_pair(counts)
        merges.append((pair, new_id))
        merged: Counter = Counter()
        for word, freq in words.items():
            merged[tuple(bpe_merge(word, pair, new_id))] += freq
        words = merged
    return merges


def test_fast_training_equals_naive_recount(shakespeare: str) -> None:
    sample = shakespeare[:20_000] + MIXED_TEXT
    fast = BPETokenizer.train(sample, vocab_size=256 + 120)
    assert fast.merges == _naive_bpe_merges(sample, 120)


def test_bpe_special_tokens_come_after_merges(mixed_bpe: BPETokenizer) -> None:
    assert mixed_bpe.vocab_size == 350
    assert len(mixed_bpe.merges) == 350 - 256 - 3
    assert mixed_bpe.special_tokens == {"<|user|>": 347, "<|assistant|>": 348, "<|end|>": 349}
    ids = mixed_bpe.encode("<|user|>Hi<|end|>")
    assert ids[0] == 347 and ids[-1] == 349 and all(i < 347 for i in ids[1:-1])
    as_text = mixed_bpe.encode("<|user|>", allowed_special=None)
    assert len(as_text) > 1 and all(i < 347 for i in as_text)
    assert mixed_bpe.decode(as_text) == "<|user|>"
    assert mixed_bpe.encode("<|user|><|end|>", allowed_special={"<|end|>"})[-1] == 349
    with pytest.raises(ValueError, match="Not special tokens"):
        mixed_bpe.encode("hi", allowed_special={"<|system|>"})


def test_bpe_does_not_learn_merges_across_special_tokens() -> None:
    text = "<|end|>" * 50 + "hello hello"
    tokenizer = BPETokenizer.train(text, vocab_size=270, special_tokens=["<|end|>"])
    learned = [tokenizer.vocab[new_id] for _, new_id in tokenizer.merges]
    assert not any(b"|" in token or b"<" in token for token in learned)


def test_bpe_training_stops_when_nothing_is_left_to_merge() -> None:
    tokenizer = BPETokenizer.train("ab", vocab_size=300)
    assert tokenizer.merges == [((97, 98), 256)]
    assert tokenizer.vocab_size == 257


@pytest.mark.parametrize(
    ("text", "vocab_size", "message"),
    [("", 300, "empty text"), ("abc", 258, "too small")],
)
def test_bpe_train_rejects_bad_input(text: str, vocab_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BPETokenizer.train(text, vocab_size, special_tokens=CHAT_SPECIAL_TOKENS)


def test_bpe_decode_of_a_partial_character_uses_replacement(mixed_bpe: BPETokenizer) -> None:
    emoji_bytes = "🙂".encode("utf-8")
    assert mixed_bpe.decode([emoji_bytes[0]]) == "\ufffd"
    assert mixed_bpe.decode(list(emoji_bytes)) == "🙂"
    with pytest.raises(ValueError, match="outside this vocabulary"):
        mixed_bpe.decode([350])


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_bpe_round_trips_any_text(mixed_bpe: BPETokenizer, text: str) -> None:
    assert mixed_bpe.decode(mixed_bpe.encode(text)) == text
    assert mixed_bpe.decode(mixed_bpe.encode(text, allowed_special=None)) == text


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=20), st.sampled_from(CHAT_SPECIAL_TOKENS))))
def test_bpe_round_trips_text_with_special_tokens(mixed_bpe: BPETokenizer, parts: list) -> None:
    text = "".join(parts)
    ids = mixed_bpe.encode(text)
    assert mixed_bpe.decode(ids) == text
    assert ids.count(mixed_bpe.special_tokens["<|user|>"]) == text.count("<|user|>")


def test_bpe_on_tinyshakespeare_trains_fast_and_compresses(shakespeare: str) -> None:
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(shakespeare, vocab_size=2048)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = tokenizer.encode(shakespeare)
    encode_s = time.perf_counter() - start
    ratio = len(ids) / len(shakespeare)
    print(f"\nBPE 2048 on TinyShakespeare: train {train_s:.2f} s, encode {encode_s:.2f} s, "
          f"{ratio:.4f} tokens/char")
    assert len(tokenizer.merges) == 2048 - 256
    # The first merges of this text, pinned: " t", "he", " a" (measured).
    assert [tokenizer.vocab[new_id] for _, new_id in tokenizer.merges[:3]] == [b" t", b"he", b" a"]
    assert 0.33 < ratio < 0.36  # measured 0.3483; characters are 1.0
    assert max(ids) < 2048
    assert tokenizer.decode(ids) == shakespeare


# --- characters ----------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_characters() -> None:
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert tokenizer.decode([7, 5, 6, 4, 1]) == "world"
    assert tokenizer.vocab_size == 8 and tokenizer.name == "char"


def test_char_on_tinyshakespeare_has_65_characters(shakespeare: str) -> None:
    tokenizer = CharTokenizer.from_text(shakespeare)
    assert tokenizer.vocab_size == 65
    assert tokenizer.encode("First Citizen") == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52]


def test_char_unknown_character_says_what_and_where_and_what_to_do() -> None:
    tokenizer = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError) as info:
        tokenizer.encode("hello wörld")
    message = str(info.value)
    assert "'ö'" in message and "position 7" in message
    assert "from text that contains it" in message


def test_char_special_tokens_follow_the_characters() -> None:
    tokenizer = CharTokenizer.from_text("<|user|>ab<|end|>ba",
                                        special_tokens=["<|user|>", "<|end|>"])
    assert tokenizer.chars == ["a", "b"]  # the markers' own characters are not in the text
    assert tokenizer.special_tokens == {"<|user|>": 2, "<|end|>": 3}
    assert tokenizer.encode("<|user|>ab<|end|>") == [2, 0, 1, 3]
    assert tokenizer.decode([2, 0, 1, 3]) == "<|user|>ab<|end|>"
    with pytest.raises(ValueError, match="'<'"):
        tokenizer.encode("<|user|>", allowed_special=None)


@pytest.mark.parametrize(
    ("chars", "special_tokens", "message"),
    [(["a", "a"], (), "repeat"), (["ab"], (), "single characters"),
     (["a"], ("<|x|>", "<|x|>"), "unique"), (["a"], ("a",), "also ordinary"),
     (["a"], "<|x|>", "not a single string")],
)
def test_char_rejects_bad_vocabularies(chars: list, special_tokens, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CharTokenizer(chars, special_tokens=special_tokens)


def test_char_rejects_empty_text_and_unknown_ids() -> None:
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="outside this vocabulary"):
        CharTokenizer.from_text("ab").decode([2])


SHAKESPEARE_LIKE = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=sorted(set(SHAKESPEARE_LIKE))))
def test_char_round_trips_text_from_its_alphabet(text: str) -> None:
    tokenizer = CharTokenizer.from_text(SHAKESPEARE_LIKE)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


# --- GPT-2 through tiktoken ----------------------------------------------------------------


def test_tiktoken_matches_gpt2_ids(gpt2: TiktokenTokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.name == "r50k_base"


def test_tiktoken_chat_tokens_are_single_ids_after_gpt2s(gpt2: TiktokenTokenizer) -> None:
    assert gpt2.special_tokens == {"<|endoftext|>": 50256, "<|user|>": 50257,
                                   "<|assistant|>": 50258, "<|end|>": 50259}
    assert gpt2.vocab_size == 50260
    text = "<|user|>Hi<|end|><|assistant|>Hello<|end|><|endoftext|>"
    ids = gpt2.encode(text)
    assert ids == [50257, 17250, 50259, 50258, 15496, 50259, 50256]
    assert gpt2.decode(ids) == text
    as_text = gpt2.encode("<|user|>", allowed_special=None)
    assert len(as_text) > 1 and max(as_text) < 50256
    with pytest.raises(ValueError, match="outside this vocabulary"):
        gpt2.decode([50260])


def test_tiktoken_offline_failure_names_the_cache_variable(monkeypatch, tmp_path) -> None:
    import tiktoken
    import tiktoken.load
    import tiktoken.registry

    def no_network(blobpath: str) -> bytes:
        raise ConnectionError(f"no network to fetch {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    with pytest.raises(TiktokenUnavailableError, match="TIKTOKEN_CACHE_DIR") as info:
        TiktokenTokenizer()
    assert "go online once" in str(info.value)


def test_tiktoken_unknown_encoding_name() -> None:
    with pytest.raises(ValueError, match="Unknown tiktoken encoding"):
        TiktokenTokenizer("gpt-9000")


def test_tiktoken_compresses_tinyshakespeare(gpt2: TiktokenTokenizer, shakespeare: str) -> None:
    ids = gpt2.encode(shakespeare)
    assert len(ids) == 338_025  # GPT-2's count for TinyShakespeare, as in nanoGPT
    assert gpt2.decode(ids) == shakespeare


# --- files, dictionaries, the factory ------------------------------------------------------


@pytest.fixture(params=["char", "bpe", "tiktoken"])
def any_tokenizer(request, mixed_bpe: BPETokenizer) -> Tokenizer:
    if request.param == "char":
        return CharTokenizer.from_text(MIXED_TEXT, special_tokens=CHAT_SPECIAL_TOKENS)
    if request.param == "bpe":
        return mixed_bpe
    return request.getfixturevalue("gpt2")


def test_save_load_rebuilds_the_same_tokenizer(any_tokenizer: Tokenizer, tmp_path) -> None:
    path = any_tokenizer.save(tmp_path / "sub" / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert type(loaded) is type(any_tokenizer)
    assert loaded.to_dict() == any_tokenizer.to_dict()
    assert loaded.special_tokens == any_tokenizer.special_tokens
    assert loaded.vocab_size == any_tokenizer.vocab_size
    text = MIXED_TEXT[:300] + "<|user|>hi<|end|>"
    assert loaded.encode(text) == any_tokenizer.encode(text)
    assert type(any_tokenizer).load(path).to_dict() == any_tokenizer.to_dict()
    assert tokenizer_from_dict(json.loads(json.dumps(any_tokenizer.to_dict()))).to_dict() == \
        any_tokenizer.to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary left


def test_load_errors_are_clear(tmp_path, mixed_bpe: BPETokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="No tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_text('{"kind": "bpe", "merges": [[97,', encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        load_tokenizer(truncated)
    with pytest.raises(ValueError, match="Unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "morse"})
    with pytest.raises(ValueError, match="not a tokenizer description"):
        tokenizer_from_dict([1, 2, 3])
    with pytest.raises(ValueError, match="incomplete"):
        tokenizer_from_dict({"kind": "char"})
    with pytest.raises(ValueError, match="merge i must create"):
        tokenizer_from_dict({"kind": "bpe", "merges": [[97, 300]]})
    path = mixed_bpe.save(tmp_path / "bpe.json")
    with pytest.raises(ValueError, match="holds a BPETokenizer, not a CharTokenizer"):
        CharTokenizer.load(path)


def test_build_tokenizer() -> None:
    char = build_tokenizer("char", text="abc")
    assert isinstance(char, CharTokenizer) and char.vocab_size == 3
    bpe = build_tokenizer("bpe", text=MIXED_TEXT, vocab_size=300, special_tokens=["<|end|>"])
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == 300
    with pytest.raises(ValueError, match="pass text"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="only applies to 'bpe'"):
        build_tokenizer("char", text="abc", vocab_size=10)
    with pytest.raises(ValueError, match="Unknown tokenizer kind"):
        build_tokenizer("word", text="abc")


def test_build_tokenizer_tiktoken_registers_chat_tokens(gpt2: TiktokenTokenizer) -> None:
    tokenizer = build_tokenizer("tiktoken")
    assert tokenizer.special_tokens == gpt2.special_tokens
