"""Deliberately broken solutions to chapter 3's exercises: each must fail its check."""

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- average_past


def full_mean(x):
    """Averages over all T positions: the future leaks into every position."""
    return x.mean(dim=1, keepdim=True).expand_as(x)


def excludes_current_position(x):
    """Averages positions 0..t-1 only (tril with diagonal=-1): position t forgets itself."""
    T = x.size(1)
    weights = torch.tril(torch.ones(T, T), diagonal=-1)
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1) @ x


def includes_next_position(x):
    """Off by one the other way (tril with diagonal=1): position t sees position t+1."""
    T = x.size(1)
    weights = torch.tril(torch.ones(T, T), diagonal=1)
    return weights / weights.sum(dim=1, keepdim=True) @ x


def upper_triangle(x):
    """torch.triu instead of torch.tril: position t averages the future t..T-1."""
    T = x.size(1)
    weights = torch.triu(torch.ones(T, T))
    return weights / weights.sum(dim=1, keepdim=True) @ x


def divides_by_T(x):
    """Running sum divided by T instead of t + 1."""
    return x.cumsum(dim=1) / x.size(1)


def sums_instead_of_averaging(x):
    """The tril matrix is never normalised: a running sum."""
    T = x.size(1)
    return torch.tril(torch.ones(T, T)) @ x


def normalises_columns(x):
    """Normalises the tril matrix down its columns (sum over dim=0) instead of along its rows."""
    T = x.size(1)
    weights = torch.tril(torch.ones(T, T))
    return weights / weights.sum(dim=0, keepdim=True) @ x


def averages_channels(x):
    """Runs the mean along the channels (dim=-1) instead of the positions (dim=1)."""
    C = x.size(-1)
    return x.cumsum(dim=-1) / torch.arange(1, C + 1)


def modifies_input_in_place(x):
    """Right numbers, but overwrites the caller's x with them."""
    T = x.size(1)
    weights = torch.tril(torch.ones(T, T))
    x.copy_(weights / weights.sum(dim=1, keepdim=True) @ x)
    return x


# --------------------------------------------------------------------------- split_heads / merge_heads


def split_view_without_transpose(x, n_head):
    """The classic bug: x.view(B, H, T, D) has the right shape and mixes positions."""
    B, T, C = x.shape
    return x.view(B, n_head, T, C // n_head)


def split_interleaved_channels(x, n_head):
    """Head h gets every H-th channel instead of a contiguous block."""
    B, T, C = x.shape
    return x.view(B, T, C // n_head, n_head).permute(0, 3, 1, 2)


def split_without_moving_heads(x, n_head):
    """Cuts the channels but leaves the head axis after the positions: (B, T, H, D)."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head)


def split_transposes_wrong_axes(x, n_head):
    """Transposes positions with channels-per-head instead of with heads."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 3)


def merge_reshape_without_transpose(x):
    """The classic bug in reverse: reshape (B, H, T, D) straight to (B, T, H*D)."""
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)


def merge_interleaved_channels(x):
    """Interleaves the heads' channels instead of putting the heads side by side."""
    B, H, T, D = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, D * H)


def merge_view_after_transpose(x):
    """.view on the transposed (non-contiguous) tensor: raises at run time."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).view(B, T, H * D)


def merge_forgets_to_flatten(x):
    """Transposes back but never puts the heads side by side: returns (B, T, H, D)."""
    return x.transpose(1, 2)


# --------------------------------------------------------------------------- causal_attention


def _mask(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


def no_causal_mask(q, k, v):
    """Forgets the mask: every position sees the future."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    return F.softmax(scores, dim=-1) @ v


def no_sqrt_scaling(q, k, v):
    """Forgets to divide the scores by √D."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def divides_by_d(q, k, v):
    """Divides the scores by D instead of √D."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / D).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def softmax_over_queries(q, k, v):
    """Takes the softmax over dim=-2 (the queries) instead of dim=-1 (the keys)."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-2) @ v


def masks_wrong_triangle(q, k, v):
    """Keeps the upper triangle: the future is visible, the past hidden."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~torch.triu(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def masks_the_diagonal_too(q, k, v):
    """Strict lower triangle: a position may not attend to itself (row 0 becomes NaN)."""
    T, D = q.size(-2), q.size(-1)
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def masks_with_zero(q, k, v):
    """Fills the future scores with 0 instead of -inf: exp(0) = 1 still gives them weight."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(T), 0.0)
    return F.softmax(scores, dim=-1) @ v


def zeroes_weights_after_softmax(q, k, v):
    """Masks after the softmax by multiplying with the tril matrix: rows no longer sum to 1."""
    T, D = q.size(-2), q.size(-1)
    weights = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1) * _mask(T)
    return weights @ v


def k_not_transposed(q, k, v):
    """Multiplies q @ k without transposing k (shapes only fit when T == D)."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def transposes_batch_axes(q, k, v):
    """Transposes k's first two axes (k.transpose(0, 1)) instead of its last two."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(0, 1).transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def only_first_sequence_and_head(q, k, v):
    """Works on q[0, 0] with 2-D operations and broadcasts it: right only when B = H = 1."""
    q2, k2, v2 = q[0, 0], k[0, 0], v[0, 0]
    T, D = q2.shape
    scores = (q2 @ k2.T / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    return (F.softmax(scores, dim=-1) @ v2).expand_as(q)


def returns_weights(q, k, v):
    """Returns the attention weights instead of weights @ v."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1)


def naive_softmax_overflows(q, k, v):
    """A hand-written softmax without subtracting the max: exp overflows on large scores."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(T), float("-inf"))
    exp = scores.exp()
    return exp / exp.sum(dim=-1, keepdim=True) @ v


def mask_sized_by_head_dim(q, k, v):
    """Builds the mask from D = q.size(-1) instead of T = q.size(-2)."""
    D = q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_mask(D), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def scales_q_in_place(q, k, v):
    """Right output, but scales the caller's q in place (q /= √D)."""
    T, D = q.size(-2), q.size(-1)
    q /= math.sqrt(D)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~_mask(T), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


BROKEN = {
    "check_average_past": [
        full_mean,
        excludes_current_position,
        includes_next_position,
        upper_triangle,
        divides_by_T,
        sums_instead_of_averaging,
        normalises_columns,
        averages_channels,
        modifies_input_in_place,
    ],
    "check_split_heads": [
        split_view_without_transpose,
        split_interleaved_channels,
        split_without_moving_heads,
        split_transposes_wrong_axes,
    ],
    "check_merge_heads": [
        merge_reshape_without_transpose,
        merge_interleaved_channels,
        merge_view_after_transpose,
        merge_forgets_to_flatten,
    ],
    "check_causal_attention": [
        no_causal_mask,
        no_sqrt_scaling,
        divides_by_d,
        softmax_over_queries,
        masks_wrong_triangle,
        masks_the_diagonal_too,
        masks_with_zero,
        zeroes_weights_after_softmax,
        k_not_transposed,
        transposes_batch_axes,
        only_first_sequence_and_head,
        returns_weights,
        naive_softmax_overflows,
        mask_sized_by_head_dim,
        scales_q_in_place,
    ],
}
