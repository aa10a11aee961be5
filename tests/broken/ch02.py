"""Chapter 2's classic mistakes: every function here must fail its check."""

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- get_pair_counts


def counts_overlapping_pairs_once(ids):
    """Skips ahead after a repeated token, so (1, 1) in [1, 1, 1] counts once."""
    counts = {}
    i = 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return counts


def wraps_around(ids):
    """Pairs the last token with the first, as if the text were a circle."""
    counts = {}
    for pair in zip(ids, ids[1:] + ids[:1]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def misses_last_pair(ids):
    """Stops one pair early: range(len(ids) - 2)."""
    counts = {}
    for i in range(len(ids) - 2):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def presence_not_count(ids):
    """Records that a pair occurs (1) instead of how often."""
    return {pair: 1 for pair in zip(ids, ids[1:])}


def reversed_pairs(ids):
    """Keys the pair as (next, current)."""
    counts = {}
    for a, b in zip(ids, ids[1:]):
        counts[(b, a)] = counts.get((b, a), 0) + 1
    return counts


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


# --------------------------------------------------------------------------- train_bpe


def _counts(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _merge(ids, pair, new_id):
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def ties_to_first_seen(text, num_merges):
    """Breaks ties by first occurrence (max over dict order), not by the smallest pair."""
    ids, merges = list(text.encode("utf-8")), []
    for new_id in range(256, 256 + num_merges):
        if len(ids) < 2:
            break
        counts = _counts(ids)
        pair = max(counts, key=counts.get)
        ids = _merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


def characters_not_bytes(text, num_merges):
    """Starts from code points (ord) instead of UTF-8 bytes."""
    ids, merges = [ord(char) for char in text], []
    for new_id in range(256, 256 + num_merges):
        if len(ids) < 2:
            break
        counts = _counts(ids)
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = _merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


def new_ids_start_at_255(text, num_merges):
    """Numbers the first merge 255, colliding with the last byte."""
    ids, merges = list(text.encode("utf-8")), []
    for new_id in range(255, 255 + num_merges):
        if len(ids) < 2:
            break
        counts = _counts(ids)
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = _merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


def counts_only_once(text, num_merges):
    """Counts the pairs once and takes the top ones, never recounting after a merge."""
    ids = list(text.encode("utf-8"))
    counts = _counts(ids)
    ranked = sorted(counts, key=lambda p: (-counts[p], p))[:num_merges]
    return [(pair, 256 + i) for i, pair in enumerate(ranked)]


def never_stops_early(text, num_merges):
    """Does not stop when one token is left: min() of no pairs raises ValueError."""
    ids, merges = list(text.encode("utf-8")), []
    for new_id in range(256, 256 + num_merges):
        counts = _counts(ids)
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = _merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


# --------------------------------------------------------------------------- embedding_lookup_as_matmul


def one_hot_without_num_classes(ids, weight):
    """Lets F.one_hot guess V from the largest id in the batch."""
    return F.one_hot(ids).to(weight.dtype) @ weight


def one_hot_as_float32(ids, weight):
    """Casts the one-hot to float32 whatever the weight's dtype."""
    return F.one_hot(ids, num_classes=weight.size(0)).float() @ weight.float()


def detached_lookup(ids, weight):
    """Right values, but computed without gradient: the table could never learn."""
    with torch.no_grad():
        return F.one_hot(ids, num_classes=weight.size(0)).to(weight.dtype) @ weight


def flattens_batch(ids, weight):
    """Flattens the ids and forgets to restore the batch shape."""
    return F.one_hot(ids.reshape(-1), num_classes=weight.size(0)).to(weight.dtype) @ weight


BROKEN = {
    "check_get_pair_counts": [counts_overlapping_pairs_once, wraps_around, misses_last_pair, presence_not_count,
                              reversed_pairs],
    "check_bpe_merge": [merges_overlapping, replaces_first_only, misses_pair_at_end, merges_right_to_left, mutates_input,
                        matches_reversed_pair, returns_tuple, crashes_on_empty],
    "check_train_bpe": [ties_to_first_seen, characters_not_bytes, new_ids_start_at_255, counts_only_once,
                        never_stops_early],
    "check_embedding_lookup_as_matmul": [one_hot_without_num_classes, one_hot_as_float32, detached_lookup,
                                         flattens_batch],
}
