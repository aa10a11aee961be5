"""Tests of lal.sample: the filters keep exactly the right tokens, seeds reproduce, and the
KV-cache path generates exactly what the plain path does, also past the context length."""

from __future__ import annotations

import math

import pytest
import torch

from lal.model import GPT, GPTConfig
from lal.sample import (
    _cached_step,
    _Context,
    _plain_step,
    apply_temperature,
    NearLoop,
    decode_stream,
    edit_distance,
    find_near_loop,
    generate,
    generate_text,
    min_p_filter,
    next_token_distribution,
    repetition_penalty,
    sample_next_token,
    sequence_logprob,
    stream,
    top_k_filter,
    top_p_filter,
)
from lal.tokenizers import BPETokenizer, CharTokenizer

BLOCK_SIZE = 16

#: Seeds of test models whose greedy output keeps changing past block_size (checked below).
MODEL_SEEDS = (1, 13, 20)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.py)


def tiny_gpt(seed: int = MODEL_SEEDS[0], weight_std: float = 0.5) -> GPT:
    """A tiny random GPT with large weights, so its choices vary from token to token.

    With GPT-2's initialisation (std 0.02) a random model's next-token distribution is almost
    flat and greedy decoding repeats one token forever, which would make equality tests weak.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=11, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, weight_std)
    return model


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


LOGITS = torch.tensor([0.1, 2.0, -1.0, 3.0, 0.5, 2.5])  # order: 3, 5, 1, 4, 0, 2
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "expected"), [(1, {3}), (2, {3, 5}), (3, {1, 3, 5}), (5, {0, 1, 3, 4, 5})])
def test_top_k_keeps_exactly_the_k_largest(k: int, expected: set[int]) -> None:
    filtered = top_k_filter(LOGITS, k)
    assert kept(filtered) == expected
    assert torch.equal(filtered[list(expected)], LOGITS[list(expected)])  # survivors unchanged


def test_top_k_at_or_above_vocabulary_is_a_no_op() -> None:
    assert torch.equal(top_k_filter(LOGITS, 6), LOGITS)
    assert torch.equal(top_k_filter(LOGITS, 100), LOGITS)


def test_top_k_breaks_ties_towards_lower_ids_and_keeps_exactly_k() -> None:
    tied = torch.tensor([1.0, 5.0, 2.0, 2.0, 2.0, 0.0])
    assert kept(top_k_filter(tied, 2)) == {1, 2}
    assert kept(top_k_filter(tied, 3)) == {1, 2, 3}


def test_top_k_works_row_by_row_on_batches() -> None:
    batch = torch.stack([LOGITS, -LOGITS]).unsqueeze(0)  # (1, 2, 6): any leading shape
    filtered = top_k_filter(batch, 2)
    assert kept(filtered[0, 0]) == {3, 5}
    assert kept(filtered[0, 1]) == {2, 0}


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.4, {0}),  # 0.5 alone already reaches 0.4
        (0.6, {0, 1}),  # 0.5 < 0.6: the token that crosses the threshold (0.3) is kept
        (0.7, {0, 1}),
        (0.9, {0, 1, 2}),  # 0.5 + 0.3 = 0.8 < 0.9: the 0.15 token crosses and is kept
        (0.99, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_the_smallest_nucleus_including_the_crossing_token(p: float, expected: set[int]) -> None:
    logits = PROBS.log()
    assert kept(top_p_filter(logits, p)) == expected
    shuffled = torch.tensor([2, 0, 3, 1])  # the same distribution in another token order
    assert kept(top_p_filter(logits[shuffled], p)) == {int(torch.nonzero(shuffled == i)) for i in expected}


def test_top_p_always_keeps_the_most_likely_token() -> None:
    logits = torch.tensor([[0.0, 0.0, 10.0], [5.0, 0.0, 0.0]])
    assert kept(top_p_filter(logits, 1e-6)[0]) == {2}
    assert kept(top_p_filter(logits, 1e-6)[1]) == {0}


def test_top_p_drops_a_tied_token_once_the_mass_before_it_reaches_p() -> None:
    # probabilities 0.5, 0.5: the first token alone reaches p = 0.5, so the nucleus is {0}.
    # (Keeping a token while the mass before it is <= p, instead of < p, would keep both.)
    assert kept(top_p_filter(torch.tensor([0.0, 0.0]), 0.5)) == {0}
    assert kept(top_p_filter(torch.tensor([0.0, 0.0]), 0.51)) == {0, 1}


def test_min_p_keeps_tokens_relative_to_the_most_likely_one_per_row() -> None:
    logits = PROBS.log().repeat(2, 1)  # probabilities 0.5, 0.3, 0.15, 0.05 in both rows
    logits[1] = torch.tensor([0.0, 0.0, 0.0, -10.0])  # a flat row: its own, lower, threshold
    filtered = min_p_filter(logits, 0.4)  # cut at 0.4 × 0.5 = 0.2 in row 0
    assert kept(filtered[0]) == {0, 1}
    assert kept(filtered[1]) == {0, 1, 2}
    torch.testing.assert_close(filtered[0, :2], logits[0, :2])
    assert kept(min_p_filter(torch.tensor([1.0, 1.0, 0.0]), 1.0)) == {0, 1}  # a tie at the threshold stays
    assert kept(min_p_filter(LOGITS, 0.0)) == set(range(6))
    with pytest.raises(ValueError, match="min_p"):
        min_p_filter(LOGITS, 1.5)


def test_repetition_penalty_pushes_each_seen_token_down_once() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.0])
    before = logits.clone()
    result = repetition_penalty(logits, [0, 1, 1, 1, 4], 2.0)
    torch.testing.assert_close(result, torch.tensor([1.0, -2.0, 0.5, -3.0, 0.0]))
    assert torch.equal(logits, before)  # a new tensor, the input untouched
    assert torch.equal(repetition_penalty(logits, [0, 1, 2], 1.0), logits)
    assert torch.equal(repetition_penalty(logits, [], 3.0), logits)
    torch.testing.assert_close(repetition_penalty(logits.repeat(2, 1), torch.tensor([3]), 2.0)[:, 3],
                               torch.tensor([-6.0, -6.0]))


def test_sequence_logprob_scores_every_token_after_the_first() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    ids = torch.tensor([1, 0, 1])
    expected = math.log(0.5) + math.log(1 / (1 + math.exp(2.0)))  # logits[2] predicts nothing
    assert sequence_logprob(logits, ids) == pytest.approx(expected)
    assert sequence_logprob(logits[:1], ids[:1]) == 0.0
    model = tiny_gpt().eval()
    tokens = torch.tensor([[1, 4, 2, 7, 7, 3]])
    with torch.no_grad():
        model_logits, loss = model(tokens[:, :-1], tokens[:, 1:])
        full_logits, _ = model(tokens)
    assert sequence_logprob(full_logits[0], tokens[0]) == pytest.approx(-5 * loss.item(), rel=1e-5)


def test_temperature_scales_logits_and_zero_is_greedy() -> None:
    assert torch.equal(apply_temperature(LOGITS, 2.0), LOGITS / 2)
    one_hot = next_token_distribution(LOGITS, temperature=0)
    assert torch.equal(one_hot, torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]))
    batch = torch.stack([LOGITS, -LOGITS])  # (2, V)
    assert sample_next_token(batch, temperature=0).tolist() == [[3], [2]]
    with pytest.raises(ValueError, match="greedy"):
        apply_temperature(LOGITS, 0.0)


def test_low_temperature_sharpens_and_high_temperature_flattens() -> None:
    sharp, flat = next_token_distribution(LOGITS, 0.5), next_token_distribution(LOGITS, 5.0)
    assert sharp[3] > next_token_distribution(LOGITS, 1.0)[3] > flat[3] > 1 / 6


def test_distribution_combines_temperature_top_k_and_top_p() -> None:
    probs = next_token_distribution(LOGITS, temperature=1.0, top_k=3, top_p=0.7)
    expected = torch.softmax(torch.tensor([3.0, 2.5]), dim=0)  # top-3 = {3, 5, 1}; then 0.51 + 0.31 ≥ 0.7
    assert kept(probs.log()) == {3, 5}
    torch.testing.assert_close(probs[[3, 5]], expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-0.5),
        dict(temperature=float("nan")),
        dict(top_k=0),
        dict(top_k=2.5),
        dict(top_p=0.0),
        dict(top_p=1.5),
    ],
)
def test_invalid_sampling_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_next_token(LOGITS.unsqueeze(0), **kwargs)


# --- sampling --------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    model = tiny_gpt()
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    first = generate(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(3), expected_global)  # generation did not draw from the global RNG
    torch.manual_seed(999)  # a different global state must not matter
    assert generate(model, [1, 2, 3], 30, temperature=1.0, seed=7) == first
    assert generate(model, [1, 2, 3], 30, temperature=1.0, seed=8) != first
    assert len(set(first)) >= 4  # really sampled, not stuck on one token


def test_sampled_frequencies_match_the_distribution() -> None:
    logits = PROBS.log().unsqueeze(0).expand(4000, 4)  # (4000, 4): one draw per row
    draws = sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 1)
    frequencies = torch.bincount(draws.flatten(), minlength=4) / 4000
    torch.testing.assert_close(frequencies, PROBS, atol=0.03, rtol=0)
    nucleus = sample_next_token(logits, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.flatten().tolist()) == {0, 1}


# --- the KV cache ----------------------------------------------------------------------------


def test_cached_logits_equal_plain_logits_at_every_step_past_the_context() -> None:
    model = tiny_gpt().eval()
    tokens = torch.randint(0, 11, (1, 3 * BLOCK_SIZE), generator=torch.Generator().manual_seed(1))
    plain, cached = _Context(model, tokens[:, :5], False), _Context(model, tokens[:, :5], True)
    with torch.inference_mode():
        for position in range(5, tokens.size(1)):
            torch.testing.assert_close(_cached_step(model, cached), _plain_step(model, plain), atol=1e-5, rtol=1e-5)
            for context in (plain, cached):
                context.append(tokens[:, position : position + 1], BLOCK_SIZE)


@pytest.mark.parametrize("seed", MODEL_SEEDS)
def test_kv_cache_generates_exactly_the_plain_tokens(seed: int) -> None:
    model = tiny_gpt(seed)
    n_new = 3 * BLOCK_SIZE  # the window slides for 2.5 contexts
    all_settings = (
        dict(temperature=0),
        dict(temperature=1.0, seed=seed),
        dict(temperature=0.8, top_k=5, top_p=0.9, seed=seed),
    )
    for settings in all_settings:
        with_cache = generate(model, [1, 2, 3], n_new, use_kv_cache=True, **settings)
        without = generate(model, [1, 2, 3], n_new, use_kv_cache=False, **settings)
        assert with_cache == without
        assert len(with_cache) == n_new


@pytest.mark.parametrize("seed", MODEL_SEEDS)
def test_greedy_generation_of_the_test_models_is_not_trivial(seed: int) -> None:
    """The equality tests above only mean something if the tokens vary past block_size."""
    tokens = generate(tiny_gpt(seed), [1, 2, 3], 3 * BLOCK_SIZE, temperature=0)
    assert len(set(tokens[BLOCK_SIZE:])) >= 5


# --- prompts, stop tokens, modes ---------------------------------------------------------------


def test_long_prompts_are_cropped_to_the_last_block_size_tokens() -> None:
    model = tiny_gpt()
    long_prompt = torch.randint(0, 11, (3 * BLOCK_SIZE,), generator=torch.Generator().manual_seed(2)).tolist()
    for use_cache in (True, False):
        assert generate(model, long_prompt, 20, temperature=0, use_kv_cache=use_cache) == generate(
            model, long_prompt[-BLOCK_SIZE:], 20, temperature=0, use_kv_cache=use_cache
        )
    tensor_prompt = torch.tensor([long_prompt])  # (1, T) works too
    assert generate(model, tensor_prompt, 5, temperature=0) == generate(model, long_prompt, 5, temperature=0)


def test_empty_prompt_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_gpt(), [], 5)


def test_generation_stops_before_the_stop_token() -> None:
    model = tiny_gpt()
    free = generate(model, [1, 2, 3], 40, temperature=1.0, seed=3)
    stop = free[10]
    first = free.index(stop)
    stopped = generate(model, [1, 2, 3], 40, temperature=1.0, seed=3, stop_tokens=[stop])
    assert stopped == free[:first]  # the same tokens up to the stop token, which is not included
    assert stop not in stopped


def test_zero_new_tokens_gives_nothing() -> None:
    assert generate(tiny_gpt(), [1], 0) == []


def test_stream_restores_training_mode_and_leaves_autograd_on_between_tokens() -> None:
    model = tiny_gpt().train()
    tokens = stream(model, [1, 2], 5, temperature=0)
    next(tokens)
    assert model.training
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert len(list(tokens)) == 4
    assert model.training


def test_generate_text_streams_pieces_that_add_up_to_the_result() -> None:
    tokenizer = CharTokenizer.from_text("abcdefghij\n", special_tokens=["<|end|>"])
    model = tiny_gpt()  # vocab_size 11 = 10 letters + newline; "<|end|>" (id 11) is never produced
    with pytest.raises(ValueError, match="newline"):
        generate_text(model, tokenizer, "", 5)
    pieces: list[str] = []
    text = generate_text(model, tokenizer, "abc", 25, temperature=1.0, seed=4, stream_to=pieces.append)
    assert "".join(pieces) == text
    assert len(text) == 25
    assert text == tokenizer.decode(generate(model, tokenizer.encode("abc"), 25, temperature=1.0, seed=4))
    first_char = text[0]
    cut = generate_text(model, tokenizer, "abc", 25, temperature=1.0, seed=4, stop_tokens=[first_char])
    assert cut == ""
    with pytest.raises(ValueError, match="single token"):
        generate_text(model, tokenizer, "abc", 5, stop_tokens=["ab"])


def test_streamed_text_never_splits_a_multi_byte_character() -> None:
    text = "naïve 🙂 café"
    tokenizer = BPETokenizer.train("plain words only", 260)  # few merges: 🙂 is four byte tokens
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)
    pieces: list[str] = []
    assert decode_stream(tokenizer, ids, pieces.append) == text
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)
    assert any("🙂" in piece for piece in pieces)


# --- diagnosing generated text ---------------------------------------------------------------


def test_edit_distance_counts_insertions_deletions_and_substitutions() -> None:
    assert edit_distance(list("kitten"), list("sitting")) == 3  # k→s, e→i, +g
    assert edit_distance(list("so so soul"), list("so so so soul")) == 3  # one "so " inserted
    assert edit_distance([], [4, 5]) == 2 and edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance(list("abcdefgh"), list("zyxwvuts"), limit=2) == 3  # stops early: limit + 1
    assert edit_distance(list("kitten"), list("sitting"), limit=5) == 3


def _chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_find_near_loop_reports_an_exact_loop_once_not_its_multiples() -> None:
    text = _chars("once " + "the cat sat on the mat\n" * 4)  # 5 + 4 × 23 characters
    assert find_near_loop(text) == NearLoop(period=23, start=5, repeats=4, edits=(0, 0, 0))


def test_find_near_loop_forgives_a_changed_character_in_every_repeat() -> None:
    units = ["abcdefghijklmnopqrs\n", "abcdefghiXklmnopqrs\n", "abcdefghijklmnopqrs\n", "abcdefghijklmnYpqrs\n"]
    assert find_near_loop(_chars("".join(units)), max_edit_rate=0.0) is None  # not an exact loop
    assert find_near_loop(_chars("".join(units))) == NearLoop(period=20, start=0, repeats=4, edits=(1, 1, 1))


def test_find_near_loop_forgives_a_varying_count_of_a_repeated_word() -> None:
    text = _chars("".join(f"I will be {'so ' * n}soul.\n" for n in (6, 7, 6)))  # lines of 34, 37, 34 characters
    # Stretches of 35: [line 1 + "I"], [line 2 without its "I" and its newline], ["\n" + line 3]:
    # each is 6 edits from the next ("so " in or out, and the line break moved by one stretch).
    assert find_near_loop(text) == NearLoop(period=35, start=0, repeats=3, edits=(6, 6))
    assert find_near_loop(text, max_edit_rate=0.1) is None  # 6 edits in 35 is more than a tenth


def test_find_near_loop_finds_nothing_in_ordinary_text() -> None:
    text = _chars("Now is the winter of our discontent made glorious summer by this sun of York; "
                  "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.")
    assert find_near_loop(text) is None
    assert find_near_loop(_chars("short")) is None
    with pytest.raises(ValueError, match="min_repeats ≥ 2"):
        find_near_loop(text, min_repeats=1)
