"""Checks for chapter 2's exercises: pair counts, the BPE merge, BPE training, embedding lookup.

The BPE checks compare the learner's function with ``lal.tokenizers`` on hand-picked cases, each
named for what it tests (overlapping pairs, a pair at the very end, a reversed pair, ties, non-ASCII
text, empty input, …), so a failure says which rule was broken. Random cases use a local
``random.Random``: a check never moves the learner's global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import call, expect_close, passed
from lal.tokenizers import bpe_merge as _reference_merge
from lal.tokenizers import get_pair_counts as _reference_counts
from lal.tokenizers import most_frequent_pair as _reference_most_frequent


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _random_ids(rng: random.Random, length: int, alphabet: int) -> list[int]:
    return [rng.randrange(alphabet) for _ in range(length)]


# --------------------------------------------------------------------------- Exercise 2.1: pair counts


_COUNT_CASES: list[tuple[list[int], str]] = [
    ([1, 2, 3, 1, 2, 4], "an ordinary sequence"),
    ([1, 1, 1], "overlapping pairs: in [1, 1, 1] the pair (1, 1) occurs twice (positions 0-1 and 1-2)"),
    ([1, 1, 1, 1], "a run of four equal tokens: (1, 1) occurs three times"),
    ([7, 3], "two tokens: exactly one pair"),
    ([3, 9, 4], "the last pair (9, 4) must be counted, and (4, 3) must not: the text does not wrap around"),
    ([5], "a single token: no pairs, so {}"),
    ([], "an empty list: no pairs, so {}"),
]


def check_get_pair_counts(candidate: Callable[[list[int]], Mapping]) -> None:
    """Check ``get_pair_counts(ids) -> {(a, b): count}`` against ``lal.tokenizers.get_pair_counts``."""
    rng = random.Random(0)
    cases = list(_COUNT_CASES)
    cases += [(_random_ids(rng, 40, 4), "a random sequence with many repeated pairs") for _ in range(5)]
    for ids, what in cases:
        before = list(ids)
        result = call(candidate, "get_pair_counts", ids, hint=f"The case: {what}.")
        if ids != before:
            raise AssertionError("`get_pair_counts` changed its input list: count the pairs without modifying `ids`.")
        if not isinstance(result, Mapping):
            raise AssertionError(f"`get_pair_counts` should return a dict, but returned {type(result).__name__}.")
        expected = _reference_counts(ids)
        result = dict(result)
        if result == expected:
            continue
        hint = ""
        bad_keys = [key for key in result if not (isinstance(key, tuple) and len(key) == 2)]
        wrapped = dict(expected)
        if len(ids) >= 2:
            wrapped[(ids[-1], ids[0])] = wrapped.get((ids[-1], ids[0]), 0) + 1
        if bad_keys:
            hint = f" The keys must be pairs (tuples of two ints), such as (1, 2); you used {bad_keys[0]!r}."
        elif {(b, a): n for (a, b), n in result.items()} == expected:
            hint = " Your pairs are reversed: the key is (ids[i], ids[i + 1]), the left token first."
        elif len(ids) >= 2 and result == wrapped:
            hint = " You counted the pair (last token, first token): the sequence does not wrap around."
        elif set(result) == set(expected):
            hint = (" You found the right pairs with the wrong counts: every occurrence counts, overlapping ones "
                    "included.")
        elif len(ids) >= 2 and result == _reference_counts(ids[:-1]):
            hint = " The last pair is missing: there are len(ids) - 1 pairs, (ids[i], ids[i + 1]) for i < len(ids) - 1."
        raise AssertionError(
            f"get_pair_counts({ids}) returned {result}, expected {expected} (the case: {what}).{hint}"
        )
    passed("get_pair_counts", len(cases))


# --------------------------------------------------------------------------- Exercise 2.2: merge


_MERGE_CASES: list[tuple[list[int], tuple[int, int], int, str]] = [
    ([5, 1, 2, 3, 1, 2, 7], (1, 2), 9, "an ordinary sequence: every occurrence of the pair is replaced, not only the first"),
    ([1, 2, 1, 2, 1, 2], (1, 2), 9, "three occurrences in a row"),
    ([1, 1, 1], (1, 1), 9, "overlapping occurrences: the first two 1s merge, the third has no partner left"),
    ([1, 1, 1, 1], (1, 1), 9, "a run of four: two merges, [9, 9]"),
    ([3, 1, 2], (1, 2), 9, "the pair at the very end (check your loop bound: the last pair starts at len(ids) - 2)"),
    ([1, 2, 3], (1, 2), 9, "the pair at the very start"),
    ([2, 1, 2, 1], (1, 2), 9, "order matters: (2, 1) is not the pair (1, 2)"),
    ([4, 5, 6], (1, 2), 9, "the pair is not present: the same tokens come back, in a new list"),
    ([1], (1, 2), 9, "a single token"),
    ([], (1, 2), 9, "an empty list"),
    ([1, 2], (1, 2), 256, "exactly the pair"),
]


def _merge_mistakes(ids: list[int], pair: tuple[int, int], new_id: int) -> list[tuple[str, list[int]]]:
    """What the classic wrong merges return for this input, with what to tell the learner."""
    n = len(ids)
    overlapping = [new_id if i + 1 < n and (ids[i], ids[i + 1]) == pair else ids[i] for i in range(n)]
    first = next((i for i in range(n - 1) if (ids[i], ids[i + 1]) == pair), None)
    first_only = list(ids) if first is None else ids[:first] + [new_id] + ids[first + 2:]
    at_end = list(ids[:-2]) + [new_id] if n >= 2 and (ids[-2], ids[-1]) == pair else None
    missed_end = _reference_merge(ids[:-2], pair, new_id) + list(ids[-2:]) if at_end is not None else None
    if missed_end is not None and n >= 3 and (ids[-3], ids[-2]) == pair:
        missed_end = None  # the last pair overlaps the one before it: the case is not about the loop bound
    unordered = []
    i = 0
    while i < n:
        if i + 1 < n and {ids[i], ids[i + 1]} == set(pair):
            unordered.append(new_id)
            i += 2
        else:
            unordered.append(ids[i])
            i += 1
    return [
        ("You only replaced the first occurrence of the pair: keep scanning to the end of the list.", first_only),
        ("You let occurrences overlap: after a merge, skip BOTH tokens of the pair (i += 2), so a token is never "
         "used by two merges; and do not keep the second token of a merged pair.", overlapping),
        ("A pair at the very end of the list was not merged: check your loop bound (the last pair starts at index "
         "len(ids) - 2, so test `i + 1 < len(ids)`, not `i + 2 < len(ids)`).", missed_end),
        ("You also merged the reversed pair: (a, b) only matches ids[i] == a and ids[i + 1] == b, in that order.",
         unordered),
    ]


def check_bpe_merge(candidate: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """Check ``bpe_merge(ids, pair, new_id) -> list`` against ``lal.tokenizers.bpe_merge``."""
    rng = random.Random(0)
    cases = list(_MERGE_CASES)
    for _ in range(6):
        ids = _random_ids(rng, 30, 3)
        cases.append((ids, (ids[3], ids[4]), 99, "a random sequence with many repeats"))
    for ids, pair, new_id, what in cases:
        before = list(ids)
        result = call(candidate, "bpe_merge", ids, pair, new_id, hint=f"The case: {what}.")
        if ids != before:
            raise AssertionError(
                f"`bpe_merge` changed its input list (called with ids={before}, pair={pair}). The caller still "
                "needs the original tokens: build and return a new list instead of editing `ids`."
            )
        if not isinstance(result, list):
            raise AssertionError(
                f"`bpe_merge` should return a list, but returned {type(result).__name__} ({_short(result)}). "
                "Collect the tokens in a list (`merged = []`, `merged.append(...)`) and return it."
            )
        if result is ids:
            raise AssertionError("`bpe_merge` returned its input list itself: return a new list.")
        expected = _reference_merge(ids, pair, new_id)
        if result != expected:
            hints = [message for message, wrong in _merge_mistakes(before, pair, new_id)
                     if wrong is not None and wrong != expected and result == wrong]
            raise AssertionError(
                f"bpe_merge({before}, {pair}, {new_id}) returned {result}, expected {expected}.\n"
                f"The case: {what}." + (f"\n{hints[0]}" if hints else "")
            )
        if not all(type(token) is int for token in result):
            raise AssertionError(f"`bpe_merge` should return a list of Python ints, got {_short(result)}.")
    passed("bpe_merge", len(cases))


# --------------------------------------------------------------------------- Exercise 2.3: train BPE


def _reference_train(text: str, num_merges: int) -> list[tuple[tuple[int, int], int]]:
    """Byte-level BPE over the whole text as one sequence (no pre-split), with lal's helpers."""
    ids = list(text.encode("utf-8"))
    merges = []
    for new_id in range(256, 256 + num_merges):
        if len(ids) < 2:
            break
        pair = _reference_most_frequent(_reference_counts(ids))
        ids = _reference_merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


_TRAIN_CASES: list[tuple[str, int, str]] = [
    ("aaabdaaabac", 3, "the example from the task"),
    ("xyab", 1, "a tie: every pair occurs once, and the smallest pair (97, 98) = 'ab' must win, not the first one seen"),
    ("hug pug pun bun hugs", 8, "ordinary text with ties"),
    ("café, café, déjà vu", 6, "non-ASCII text: work on the UTF-8 bytes (é is the two bytes 195, 169), not on characters"),
    ("aaaa", 5, "overlaps, and an early stop: 'aaaa' becomes one token after 2 merges, so only 2 merges are returned"),
    ("To be, or not to be, that is the question:", 0, "num_merges = 0: no merges"),
    ("a", 3, "a single byte: nothing to merge"),
    ("", 3, "an empty text: nothing to merge"),
    ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n", 25,
     "a longer text: merges build on earlier merges, so recount the pairs after every merge"),
]


def _train_first_seen_ties(text: str, num_merges: int) -> list[tuple[tuple[int, int], int]]:
    ids, merges = list(text.encode("utf-8")), []
    for new_id in range(256, 256 + num_merges):
        if len(ids) < 2:
            break
        counts = _reference_counts(ids)
        pair = max(counts, key=counts.get)  # the first pair seen among the most frequent
        ids = _reference_merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


def _train_counted_once(text: str, num_merges: int) -> list[tuple[tuple[int, int], int]]:
    counts = _reference_counts(list(text.encode("utf-8")))
    ranked = sorted(counts, key=lambda p: (-counts[p], p))[:num_merges]
    return [(pair, 256 + i) for i, pair in enumerate(ranked)]


def check_train_bpe(candidate: Callable[[str, int], list]) -> None:
    """Check ``train_bpe(text, num_merges)`` against byte-level BPE built from ``lal.tokenizers``."""
    for text, num_merges, what in _TRAIN_CASES:
        result = call(candidate, "train_bpe", text, num_merges, hint=f"The case: {what}.")
        if not isinstance(result, list):
            raise AssertionError(f"`train_bpe` should return a list of ((left, right), new_id) tuples, got "
                                 f"{type(result).__name__}.")
        try:
            result = [((int(pair[0]), int(pair[1])), int(new_id)) for pair, new_id in result]
        except (TypeError, ValueError, IndexError):
            raise AssertionError(
                f"`train_bpe` should return a list of ((left, right), new_id) tuples, such as "
                f"[((97, 97), 256), ...]; got {_short(result)}."
            ) from None
        expected = _reference_train(text, num_merges)
        if result == expected:
            continue
        hint = ""
        ids_given = [new_id for _, new_id in result]
        if ids_given and ids_given != list(range(256, 256 + len(ids_given))):
            hint = (f" Your new ids are {ids_given[:3]}...: merge i creates id 256 + i (ids 0-255 are the bytes), "
                    "so the first merge is 256, then 257, ...")
        elif result == _train_first_seen_ties(text, num_merges):
            hint = (" Ties are broken wrongly: among equally frequent pairs take the SMALLEST pair, "
                    "min(counts, key=lambda p: (-counts[p], p)); max(counts, key=counts.get) takes the first one seen.")
        elif result == _train_counted_once(text, num_merges):
            hint = (" You counted the pairs only once: after every merge the sequence changes, so count its pairs "
                    "again (new pairs such as (256, 257) appear, merged ones disappear).")
        elif len(result) > len(expected):
            hint = " You returned too many merges: stop when fewer than two tokens are left."
        elif len(result) < len(expected):
            hint = f" You returned {len(result)} merges, expected {len(expected)}."
        raise AssertionError(
            f"train_bpe({text!r}, {num_merges}) returned {_short(result)},\n"
            f"expected {_short(expected)}.\nThe case: {what}.{hint}"
        )
    passed("train_bpe", len(_TRAIN_CASES))


# --------------------------------------------------------------------------- Exercise 2.4: embedding


def check_embedding_lookup_as_matmul(candidate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Check ``embedding_lookup_as_matmul(ids, weight)`` against ``F.embedding``: values, shape, dtype, gradient."""
    generator = torch.Generator().manual_seed(0)
    cases = [
        ((7,), 10, 4, torch.float32, "a sequence of 7 ids"),
        ((2, 5), 12, 6, torch.float32, "a batch (B, T) = (2, 5): keep the batch shape"),
        ((3,), 65, 8, torch.float32, "ids that do not include the largest id V - 1: pass num_classes=V to F.one_hot"),
        ((1,), 3, 2, torch.float32, "a single id"),
        ((2, 3), 9, 5, torch.float64, "a float64 weight: cast the one-hot to weight.dtype, not to float32"),
    ]
    for shape, V, C, dtype, what in cases:
        weight = torch.randn(V, C, generator=generator, dtype=dtype)
        high = V - 1 if "largest" in what else V  # ids below V - 1 in that case
        ids = torch.randint(0, high, shape, generator=generator)
        if "largest" not in what:
            ids.view(-1)[0] = V - 1
        learner_weight = weight.clone().requires_grad_(True)
        reference_weight = weight.clone().requires_grad_(True)
        ids_before = ids.clone()
        result = call(candidate, "embedding_lookup_as_matmul", ids, learner_weight, hint=f"The case: {what}.")
        if not isinstance(result, torch.Tensor):
            raise AssertionError(f"`embedding_lookup_as_matmul` should return a tensor, got {type(result).__name__}.")
        expected = F.embedding(ids, reference_weight)
        if tuple(result.shape) != tuple(expected.shape):
            raise AssertionError(
                f"`embedding_lookup_as_matmul` returned shape {tuple(result.shape)} for ids of shape {shape} and a "
                f"({V}, {C}) weight, expected {tuple(expected.shape)} (the case: {what}). The output keeps the ids' "
                "shape and adds C at the end: one_hot(ids) is (..., V), times (V, C)."
            )
        if result.dtype != expected.dtype:
            raise AssertionError(
                f"`embedding_lookup_as_matmul` returned dtype {result.dtype} for a {dtype} weight (the case: {what})."
            )
        if not torch.equal(ids, ids_before):
            raise AssertionError("`embedding_lookup_as_matmul` changed `ids` in place.")
        expect_close(result.detach(), expected.detach(),
                     f"`embedding_lookup_as_matmul` gives the wrong rows (the case: {what}): output[..., :] must be "
                     "row ids[...] of the weight. Did you multiply by weight.T, or build the one-hot wrongly?")
        if not result.requires_grad:
            raise AssertionError(
                "The result carries no gradient back to `weight` (did you detach it, or use torch.no_grad()?): "
                "the embedding table must learn through this lookup."
            )
        upstream = torch.randn(expected.shape, generator=generator, dtype=dtype)
        result.backward(upstream)
        expected.backward(upstream)
        expect_close(learner_weight.grad, reference_weight.grad,
                     f"The gradient with respect to `weight` is wrong (the case: {what}): it should be "
                     "one_hot(ids)ᵀ @ grad_output, non-zero only in the rows of the ids used.")
    passed("embedding_lookup_as_matmul", len(cases))
