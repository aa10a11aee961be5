"""Chapter 2's classic mistakes: every function here must fail its check, with the message its pattern names."""

import torch
import torch.nn.functional as F

import lal.tokenizers
from lal.tokenizers import bpe_merge as renamed_bpe_merge

# --------------------------------------------------------------------------- bpe_merge


def merges_overlapping(ids, pair, new_id):
    """Advances by one after a merge, so [1, 1, 1] with (1, 1) gives [9, 9, 1]."""
    merged = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
        else:
            merged.append(ids[i])
    return merged


def replaces_first_only(ids, pair, new_id):
    """Replaces the first occurrence and stops."""
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def misses_pair_at_end(ids, pair, new_id):
    """Off-by-one bound: a pair that ends at the last token is never merged."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 2 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def merges_right_to_left(ids, pair, new_id):
    """Scans from the right, so [1, 1, 1] with (1, 1) gives [1, 9] instead of [9, 1]."""
    merged = []
    i = len(ids) - 1
    while i >= 0:
        if i >= 1 and (ids[i - 1], ids[i]) == pair:
            merged.append(new_id)
            i -= 2
        else:
            merged.append(ids[i])
            i -= 1
    return merged[::-1]


def mutates_input(ids, pair, new_id):
    """Edits the caller's list in place and returns it."""
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def matches_reversed_pair(ids, pair, new_id):
    """Treats (b, a) as the pair (a, b): compares sets, not ordered tuples."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and {ids[i], ids[i + 1]} == set(pair):
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def returns_tuple(ids, pair, new_id):
    """Right tokens, but returned as a tuple."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return tuple(merged)


def crashes_on_empty(ids, pair, new_id):
    """Starts from ids[0], so an empty list raises IndexError."""
    merged = [ids[0]]
    for token in ids[1:]:
        if (merged[-1], token) == pair and merged[-1] != new_id:
            merged[-1] = new_id
        else:
            merged.append(token)
    return merged


def replaces_in_text(ids, pair, new_id):
    """Replaces the pair in the text of the ids: '11, 2' contains '1, 2' too."""
    text = ", ".join(map(str, ids)).replace(f"{pair[0]}, {pair[1]}", str(new_id))
    return [int(part) for part in text.split(", ")] if text else []


def calls_lal(ids, pair, new_id):
    """Calls lal's bpe_merge under another name."""
    return renamed_bpe_merge(ids, pair, new_id)


# --------------------------------------------------------------------------- bpe_encode


def _replay(ids, merges):
    for pair, new_id in merges:
        ids = lal.tokenizers.bpe_merge(ids, pair, new_id)
    return ids


def replays_dict_order(text, merges):
    """Applies the merges in the dict's order, which is not the order they were learned."""
    return _replay(list(text.encode("utf-8")), merges.items())


def characters_not_bytes(text, merges):
    """Starts from ord(c) of each character instead of the UTF-8 bytes."""
    return _replay([ord(c) for c in text], sorted(merges.items(), key=lambda m: m[1]))


def most_frequent_first(text, merges):
    """Merges the most frequent known pair first, as if training again."""
    ids = list(text.encode("utf-8"))
    while True:
        counts = {p: n for p, n in lal.tokenizers.get_pair_counts(ids).items() if p in merges}
        if not counts:
            return ids
        pair = lal.tokenizers.most_frequent_pair(counts)
        ids = lal.tokenizers.bpe_merge(ids, pair, merges[pair])


def byte_pairs_only(text, merges):
    """Applies only the merges of two bytes: merges built on merges never happen."""
    return _replay(list(text.encode("utf-8")), sorted((m for m in merges.items() if max(m[0]) < 256), key=lambda m: m[1]))


def sorts_merges_in_place(text, merges):
    """Right ids, but reorders the caller's dict."""
    ordered = sorted(merges.items(), key=lambda m: m[1])
    merges.clear()
    merges.update(ordered)
    return _replay(list(text.encode("utf-8")), ordered)


def uses_lal_tokenizer(text, merges):
    """Builds lal's BPETokenizer from the table and calls its encode."""
    tokenizer = lal.tokenizers.BPETokenizer(sorted(merges.items(), key=lambda m: m[1]), pattern=r"(?s).+")
    return tokenizer.encode(text)


# --------------------------------------------------------------------------- mean_embedding


def _counts(ids, weight):
    return F.one_hot(ids, num_classes=weight.size(0)).to(weight.dtype).sum(dim=1)


def one_hot_without_num_classes(ids, weight):
    """F.one_hot(ids) guesses V from the largest id: too few columns when V − 1 is absent."""
    return F.one_hot(ids).to(weight.dtype).sum(dim=1) / ids.size(1) @ weight


def sums_not_mean(ids, weight):
    """Returns the sum of the rows, not their mean."""
    return _counts(ids, weight) @ weight


def mean_over_batch(ids, weight):
    """Averages over every id of the batch: one vector repeated for each sequence."""
    return (_counts(ids, weight).sum(dim=0, keepdim=True) / ids.numel() @ weight).expand(ids.size(0), -1)


def detached_product(ids, weight):
    """Right values, but no gradient reaches the weight."""
    return (_counts(ids, weight) / ids.size(1) @ weight).detach()


def counts_presence(ids, weight):
    """Marks which ids occur (0/1) instead of how often: a repeated id counts once."""
    present = (_counts(ids, weight) > 0).to(weight.dtype)
    return present / present.sum(dim=1, keepdim=True) @ weight


def float32_counts(ids, weight):
    """One-hot cast to float32: a float64 weight gives float32 (or a dtype error)."""
    return F.one_hot(ids, num_classes=weight.size(0)).float().sum(dim=1) / ids.size(1) @ weight.float()


def indexes_weight(ids, weight):
    """weight[ids].mean(1): the lookup the exercise replaces."""
    return weight[ids].mean(dim=1)


def indexes_weight_in_a_loop(ids, weight):
    """Looks rows up one int at a time: weight[i] in a Python loop."""
    return torch.stack([torch.stack([weight[int(i)] for i in row]).mean(dim=0) for row in ids])


def uses_f_embedding(ids, weight):
    """F.embedding(ids, weight).mean(1)."""
    return F.embedding(ids, weight).mean(dim=1)


def uses_embedding_bag(ids, weight):
    """F.embedding_bag(mode='mean')."""
    return F.embedding_bag(ids, weight, mode="mean")


def uses_index_select(ids, weight):
    """torch.index_select on the flattened ids."""
    return weight.index_select(0, ids.flatten()).view(*ids.shape, -1).mean(dim=1)


BROKEN = {
    "check_bpe_merge": [
        (merges_overlapping, r"let occurrences overlap"),
        (replaces_first_only, r"only replaced the first occurrence"),
        (misses_pair_at_end, r"check your loop bound"),
        (merges_right_to_left, r"(?s)overlapping occurrences: the first two 1s merge"),
        (mutates_input, r"changed its input list"),
        (matches_reversed_pair, r"also merged the reversed pair"),
        (returns_tuple, r"should return a list, but returned tuple"),
        (crashes_on_empty, r"raised IndexError"),
        (replaces_in_text, r"replaced the pair in the TEXT"),
        (calls_lal, r"does not allow"),
    ],
    "check_bpe_encode": [
        (replays_dict_order, r"in the dict's order"),
        (characters_not_bytes, r"not from the UTF-8 bytes"),
        (most_frequent_first, r"most FREQUENT known pair"),
        (byte_pairs_only, r"merges build on earlier merges"),
        (sorts_merges_in_place, r"changed the `merges` dict"),
        (uses_lal_tokenizer, r"does not allow"),
    ],
    "check_mean_embedding": [
        (one_hot_without_num_classes, r"(?s)raised RuntimeError.*num_classes=weight.size\(0\)"),
        (sums_not_mean, r"SUM of the rows"),
        (mean_over_batch, r"averaged over the whole batch"),
        (detached_product, r"no gradient back to `weight`"),
        (counts_presence, r"counted each id once"),
        (float32_counts, r"dtype torch.float32 for a torch.float64 weight"),
        (indexes_weight, r"does not allow"),
        (indexes_weight_in_a_loop, r"does not allow"),
        (uses_f_embedding, r"does not allow"),
        (uses_embedding_bag, r"does not allow"),
        (uses_index_select, r"does not allow"),
    ],
}
