"""Checks for chapter 2's exercises: the BPE merge, BPE encoding with a merge table, a bag of embeddings.

The BPE checks compare the learner's function with ``lal.tokenizers`` on hand-picked cases, each
named for what it tests (overlapping pairs, a pair at the very end, a reversed pair, ids with
several digits beside the pair, merges given out of order, non-ASCII text, empty input, …), so a
failure says which rule was broken. The embedding check forbids every lookup (``F.embedding``,
``weight[ids]``, ``index_select``, ``gather``, ``take``) through :class:`lal.checks.common.Forbidden`.
Random cases use a local ``random.Random`` or ``torch.Generator``: a check never moves the learner's
global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import Forbidden, call, expect_close, first_mistake, passed, row_lookup_of
from lal.tokenizers import BPETokenizer
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


# --------------------------------------------------------------------------- Exercise 2.1: merge


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
    ([11, 2, 1, 21, 1, 2, 12, 1, 2, 1], (1, 2), 9,
     "ids with several digits next to the pair: 11, 2 is not 1, 2 (compare ids, never their text)"),
    ([1, 12, 1, 2, 112], (1, 2), 300, "the pair (1, 2) beside 12 and 112"),
    ([256, 257, 2561, 257, 256, 2572], (256, 257), 1000, "large ids: (256, 257) beside 2561 and 2572"),
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


def _merge_as_text(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int] | None:
    """What a string replace on the ids' text gives (None when its result is not a list of ints)."""
    for sep in (", ", " "):
        text = sep.join(map(str, ids)).replace(f"{pair[0]}{sep}{pair[1]}", str(new_id))
        try:
            return [int(part) for part in text.split(sep)] if text else []
        except ValueError:
            continue
    return None


NO_LIBRARY_MERGE = Forbidden(
    what="lal's BPE (lal.tokenizers.bpe_merge or BPETokenizer)",
    why="the exercise is about writing the merge step yourself",
    python_functions=(_reference_merge, BPETokenizer),
)


def check_bpe_merge(candidate: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """Check ``bpe_merge(ids, pair, new_id) -> list`` against ``lal.tokenizers.bpe_merge``."""
    rng = random.Random(0)
    cases = list(_MERGE_CASES)
    for _ in range(6):
        ids = _random_ids(rng, 30, 3)
        cases.append((ids, (ids[3], ids[4]), 99, "a random sequence with many repeats"))
    for ids, pair, new_id, what in cases:
        before = list(ids)
        result = call(candidate, "bpe_merge", ids, pair, new_id, hint=f"The case: {what}.", forbidden=[NO_LIBRARY_MERGE])
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
            as_text = _merge_as_text(before, pair, new_id)
            if as_text is not None and result == as_text:
                raise AssertionError(
                    f"bpe_merge({before}, {pair}, {new_id}) returned {result}, expected {expected}.\n"
                    f"The case: {what}.\nYou replaced the pair in the TEXT of the ids: the digits of 11, 2 "
                    "contain '1, 2' too. Compare the ids themselves, two neighbours at a time."
                )
            hint = first_mistake(result, _merge_mistakes(before, pair, new_id),
                                 lambda answer, wrong: wrong is not None and wrong != expected and answer == wrong)
            raise AssertionError(
                f"bpe_merge({before}, {pair}, {new_id}) returned {result}, expected {expected}.\n"
                f"The case: {what}." + (f"\n{hint}" if hint else "")
            )
        if not all(type(token) is int for token in result):
            raise AssertionError(f"`bpe_merge` should return a list of Python ints, got {_short(result)}.")
    passed("bpe_merge", len(cases))


# --------------------------------------------------------------------------- Exercise 2.2: encode with merges


def _reference_train(text: str, num_merges: int) -> dict[tuple[int, int], int]:
    """Byte-level BPE over the whole text as one sequence (no pre-split), with lal's helpers."""
    ids = list(text.encode("utf-8"))
    merges = {}
    for new_id in range(256, 256 + num_merges):
        if len(ids) < 2:
            break
        pair = _reference_most_frequent(_reference_counts(ids))
        ids = _reference_merge(ids, pair, new_id)
        merges[pair] = new_id
    return merges


def _replay(ids: list[int], merges: list[tuple[tuple[int, int], int]]) -> list[int]:
    for pair, new_id in merges:
        ids = _reference_merge(ids, pair, new_id)
    return ids


def _reference_encode(text: str, merges: Mapping[tuple[int, int], int]) -> list[int]:
    """Apply the merges in the order they were learned: the lowest new id first."""
    return _replay(list(text.encode("utf-8")), sorted(merges.items(), key=lambda item: item[1]))


def _shuffled(merges: Mapping[tuple[int, int], int], seed: int) -> dict[tuple[int, int], int]:
    items = list(merges.items())
    random.Random(seed).shuffle(items)
    return dict(items)


_TRAINING_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n"
)
_CAFE_MERGES = {(195, 169): 256, (99, 97): 257, (257, 102): 258, (258, 256): 259}  # é, ca, caf, café


def _encode_cases() -> list[tuple[str, dict[tuple[int, int], int], str]]:
    """(text, merges, what): merges given in an order that is NOT the order they were learned."""
    trained = _reference_train(_TRAINING_TEXT, 40)
    aaab = {(256, 257): 258, (97, 97): 256, (97, 98): 257}
    return [
        ("aaaa", {(97, 97): 256, (256, 256): 257}, "a merge that builds on an earlier one: 'aaaa' → [257]"),
        ("aaabdaaabac", aaab, "the example from the task: the merges come newest first in the dict"),
        ("café au lait, café", _CAFE_MERGES,
         "non-ASCII text: start from the UTF-8 bytes (é is the two bytes 195, 169), not from characters"),
        ("hello", aaab, "no merge applies: the bytes come back"),
        ("", aaab, "an empty text: []"),
        ("Speak, citizens: resolved to famish, proceed no further.", _shuffled(trained, 1),
         "40 merges learned from another text, in shuffled order, on a sentence they were not learned from"),
        (_TRAINING_TEXT, _shuffled(trained, 2), "the text the 40 merges were learned from"),
        ("abab", {(98, 97): 256, (97, 98): 257},
         "two merges compete for the same bytes: (98, 97) was learned first (id 256), so 'abab' → [97, 256, 98]"),
    ]


def _encode_mistakes(text: str, merges: Mapping[tuple[int, int], int]) -> list[tuple[str, list[int]]]:
    as_bytes = list(text.encode("utf-8"))
    in_order = sorted(merges.items(), key=lambda item: item[1])
    frequent: list[int] = list(as_bytes)
    while True:  # merging the most frequent known pair first, as if training again
        counts = {pair: n for pair, n in _reference_counts(frequent).items() if pair in merges}
        if not counts:
            break
        pair = _reference_most_frequent(counts)
        frequent = _reference_merge(frequent, pair, merges[pair])
    return [
        ("You applied the merges in the dict's order. A dict of merges promises no order: apply them in "
         "the order they were LEARNED, the lowest new id first (sorted(merges.items(), key=lambda m: m[1]), "
         "or repeatedly merge the neighbouring pair with the lowest id in `merges`).", _replay(as_bytes, list(merges.items()))),
        ("You started from the characters (ord(c)), not from the UTF-8 bytes: list(text.encode('utf-8')).",
         _replay([ord(c) for c in text], in_order)),
        ("You merged the most FREQUENT known pair first, as training does. Encoding replays the merges "
         "in the order they were learned, the lowest new id first, whatever the counts in this text.", frequent),
        ("You applied each merge in one pass over the merges, but only where both tokens were bytes: "
         "merges build on earlier merges (258 = (256, 257)), so apply them in order to the current sequence.",
         _replay(as_bytes, [m for m in in_order if max(m[0]) < 256])),
    ]


NO_LIBRARY_ENCODE = Forbidden(
    what="lal's BPETokenizer",
    why="the exercise is about encoding with the merge table yourself (lal.tokenizers.bpe_merge, the "
    "package's version of exercise 2.1, is allowed)",
    python_functions=(BPETokenizer, BPETokenizer.encode, BPETokenizer._encode_chunk),
)


def check_bpe_encode(candidate: Callable[[str, Mapping[tuple[int, int], int]], list[int]]) -> None:
    """Check ``bpe_encode(text, merges)``: the merges, a dict in any order, applied in the order learned."""
    cases = _encode_cases()
    for text, merges, what in cases:
        before = dict(merges)
        result = call(candidate, "bpe_encode", text, merges, hint=f"The case: {what}.", forbidden=[NO_LIBRARY_ENCODE])
        if dict(merges) != before or list(merges) != list(before):
            raise AssertionError("`bpe_encode` changed the `merges` dict: leave it as it was (sort a copy of its items).")
        if not isinstance(result, list) or not all(type(token) is int for token in result):
            raise AssertionError(
                f"`bpe_encode` should return a list of Python ints, but returned {_short(result)} ({type(result).__name__})."
            )
        expected = _reference_encode(text, merges)
        if result == expected:
            continue
        hint = first_mistake(result, _encode_mistakes(text, merges),
                             lambda answer, wrong: wrong != expected and answer == wrong)
        raise AssertionError(
            f"bpe_encode({_short(text)}, ...) returned {_short(result)}, expected {_short(expected)}.\n"
            f"The case: {what}." + (f"\n{hint}" if hint else "")
        )
    passed("bpe_encode", len(cases))


# --------------------------------------------------------------------------- Exercise 2.3: bag of embeddings


def _no_lookups(weight: torch.Tensor) -> list[Forbidden]:
    why = ("the exercise asks for the lookup as a matrix product (counts of each id, times the weight), "
           "the view that explains an embedding's gradient")
    return [
        Forbidden(
            what="a lookup (F.embedding, F.embedding_bag, index_select, gather, take)",
            why=why,
            torch_names=("embedding", "embedding_bag", "index_select", "gather", "take", "take_along_dim"),
        ),
        Forbidden(what="an index into the weight (weight[ids])", why=why, torch_names=("__getitem__",),
                  predicate=row_lookup_of(weight)),
    ]


def check_mean_embedding(candidate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Check ``mean_embedding(ids, weight)``: (B, T) ids, (V, C) weight -> (B, C) mean of the rows, and its gradient."""
    name = "mean_embedding"
    generator = torch.Generator().manual_seed(0)
    cases = [  # ((B, T), V, C, dtype, what)
        ((2, 5), 10, 4, torch.float32, "a batch of 2 sequences of 5 ids"),
        ((3, 4), 65, 8, torch.float32, "ids that do not include the largest id V − 1: pass num_classes=V to F.one_hot"),
        ((1, 1), 3, 2, torch.float32, "a single id: its own row"),
        ((2, 6), 4, 3, torch.float32, "repeated ids: an id that occurs twice counts twice in the mean"),
        ((4, 9), 1000, 6, torch.float32, "a vocabulary of 1,000 and T = 9"),
        ((2, 3), 9, 5, torch.float64, "a float64 weight: build the counts in weight.dtype"),
        ((5, 5), 5, 7, torch.float32, "a square (5, 5) batch of ids over 5 tokens"),
    ]
    for (B, T), V, C, dtype, what in cases:
        weight = torch.randn(V, C, generator=generator, dtype=dtype)
        high = V - 1 if "largest" in what else V
        ids = torch.randint(0, high, (B, T), generator=generator)
        if "largest" not in what:
            ids[0, 0] = V - 1
        learner_weight = weight.clone().requires_grad_(True)
        reference_weight = weight.clone().requires_grad_(True)
        ids_before = ids.clone()
        hint = (f"The case: {what}. A shape error often means F.one_hot guessed V from the largest id "
                "in the batch: pass num_classes=weight.size(0).")
        result = call(candidate, name, ids, learner_weight, hint=hint, forbidden=_no_lookups(learner_weight))
        if not isinstance(result, torch.Tensor):
            raise AssertionError(f"`{name}` should return a tensor, got {type(result).__name__}.")
        expected = F.embedding(ids, reference_weight).mean(dim=1)  # (B, C)
        if tuple(result.shape) != (B, C):
            raise AssertionError(
                f"`{name}` returned shape {tuple(result.shape)} for ids of shape {(B, T)} and a ({V}, {C}) weight, "
                f"expected {(B, C)} (the case: {what}): one mean vector per sequence. The (B, V) counts of each "
                "id, divided by T, times the (V, C) weight give (B, C)."
            )
        if result.dtype != expected.dtype:
            raise AssertionError(f"`{name}` returned dtype {result.dtype} for a {dtype} weight (the case: {what}).")
        if not torch.equal(ids, ids_before):
            raise AssertionError(f"`{name}` changed `ids` in place.")
        summed = F.embedding(ids, weight).sum(dim=1)
        if torch.allclose(result.detach().double(), summed.double(), atol=1e-5) and T > 1:
            raise AssertionError(f"`{name}` returned the SUM of the rows, not their mean: divide by T = {T} (the case: {what}).")
        batch_mean = F.embedding(ids, weight).mean(dim=(0, 1)).expand(B, C)
        if torch.allclose(result.detach().double(), batch_mean.double(), atol=1e-5) and B > 1:
            raise AssertionError(f"`{name}` averaged over the whole batch: each sequence (row of ids) gets its own mean.")
        present = (F.one_hot(ids, V).sum(dim=1) > 0).to(dtype)  # (B, V): 1 for each id that occurs
        presence = present / present.sum(dim=1, keepdim=True) @ weight
        if torch.allclose(result.detach().double(), presence.double(), atol=1e-5) and not torch.allclose(
            presence.double(), expected.detach().double(), atol=1e-5
        ):
            raise AssertionError(
                f"`{name}` counted each id once however often it occurs (the case: {what}): an id that occurs "
                "twice must weigh twice in the mean. Sum the one-hot vectors, do not just mark which ids occur."
            )
        expect_close(result.detach(), expected.detach(),
                     f"`{name}` is wrong (the case: {what}): row b must be the mean of weight's rows ids[b, 0], …, "
                     "ids[b, T − 1]. Build counts[b, v] = how often v occurs in ids[b], then (counts / T) @ weight. "
                     "Did you multiply by weight.T, or count along the wrong axis?")
        if not result.requires_grad:
            raise AssertionError(
                "The result carries no gradient back to `weight` (did you detach it, or use torch.no_grad()?): "
                "the embedding table must learn through this product."
            )
        upstream = torch.randn(expected.shape, generator=generator, dtype=dtype)
        result.backward(upstream)
        expected.backward(upstream)
        expect_close(learner_weight.grad, reference_weight.grad,
                     f"The gradient with respect to `weight` is wrong (the case: {what}): it should be "
                     "(counts / T)ᵀ @ grad_output, non-zero only in the rows of the ids used.")
    passed(name, len(cases))
