"""Chapter 3's classic mistakes: every function here must fail its check, with the message its pattern names."""

import math

import torch
import torch.nn.functional as F

import lal.model
from lal.model import causal_mask as renamed_causal_mask

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


_TRIANGLE_8 = torch.tril(torch.ones(8, 8, dtype=torch.bool))  # a mask sized for the examples a learner tried


def sliced_8x8_triangle(q, k, v):
    """Slices a hard-coded 8 × 8 triangle: right up to T = 8, a shape error beyond."""
    T, D = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~_TRIANGLE_8[:T, :T], float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def calls_sdpa(q, k, v):
    """F.scaled_dot_product_attention: the function the check compares with."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def calls_sdpa_from_c(q, k, v):
    """torch._C._nn.scaled_dot_product_attention: the same function, by its C name."""
    return torch._C._nn.scaled_dot_product_attention(q, k, v, is_causal=True)


def uses_lal_mask(q, k, v):
    """lal.model.causal_mask, under another name."""
    allowed = renamed_causal_mask(q.size(-2), k.size(-2))
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~allowed, float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def uses_lal_attention(q, k, v):
    """lal's explicit attention method, called on a throwaway object."""
    class Head:
        head_dim = q.size(-1)
        attn_dropout = staticmethod(lambda x: x)

    return lal.model.CausalSelfAttention._explicit_attention(Head(), q, k, v)[0]


# --------------------------------------------------------------------------- cached_attention


def _masked(q, k, v, allowed):
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~allowed, float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def top_left_triangle(q, k, v):
    """torch.tril(torch.ones(T_new, T_k)): the new queries treated as positions 0 … T_new − 1."""
    return _masked(q, k, v, torch.tril(torch.ones(q.size(-2), k.size(-2), dtype=torch.bool)))


def diagonal_one_too_far(q, k, v):
    """diagonal=T_k − T_new + 1: each query also sees the next key."""
    T_new, T_k = q.size(-2), k.size(-2)
    return _masked(q, k, v, torch.tril(torch.ones(T_new, T_k, dtype=torch.bool), diagonal=T_k - T_new + 1))


def diagonal_one_short(q, k, v):
    """diagonal=T_k − T_new − 1: each query misses its own key."""
    T_new, T_k = q.size(-2), k.size(-2)
    return _masked(q, k, v, torch.tril(torch.ones(T_new, T_k, dtype=torch.bool), diagonal=T_k - T_new - 1))


def new_keys_only(q, k, v):
    """Attends over the new keys only: the cache is ignored."""
    T_new = q.size(-2)
    return _masked(q, k[..., -T_new:, :], v[..., -T_new:, :], torch.tril(torch.ones(T_new, T_new, dtype=torch.bool)))


def cached_sliced_8x8(q, k, v):
    """Slices the shifted mask from a hard-coded 8 × 8 triangle."""
    T_new, T_k = q.size(-2), k.size(-2)
    return _masked(q, k, v, _TRIANGLE_8[T_k - T_new:T_k, :T_k])


def cached_without_mask(q, k, v):
    """No mask at all: right only for one new token."""
    return _masked(q, k, v, torch.ones(q.size(-2), k.size(-2), dtype=torch.bool))


def cached_with_sdpa(q, k, v):
    """F.scaled_dot_product_attention with a hand-made mask."""
    T_new, T_k = q.size(-2), k.size(-2)
    allowed = torch.tril(torch.ones(T_new, T_k, dtype=torch.bool), diagonal=T_k - T_new)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def cached_with_lal_mask(q, k, v):
    """lal.model.causal_mask builds the rectangle."""
    return _masked(q, k, v, lal.model.causal_mask(q.size(-2), k.size(-2)))


# --------------------------------------------------------------------------- sliding_window_attention


def _band(T, low, high):
    offset = torch.arange(T).unsqueeze(1) - torch.arange(T).unsqueeze(0)  # query minus key
    return (offset >= low) & (offset <= high)


def window_one_too_wide(q, k, v, window):
    """Keeps keys t − window … t: window + 1 keys."""
    return _masked(q, k, v, _band(q.size(-2), 0, window))


def window_one_too_narrow(q, k, v, window):
    """Keeps keys t − window + 2 … t: window − 1 keys."""
    return _masked(q, k, v, _band(q.size(-2), 0, window - 2))


def ignores_window(q, k, v, window):
    """Plain causal attention: the window argument is never used."""
    return _masked(q, k, v, _band(q.size(-2), 0, q.size(-2)))


def centred_window(q, k, v, window):
    """A band on both sides of the diagonal: the window reaches into the future."""
    return _masked(q, k, v, _band(q.size(-2), -(window - 1), window - 1))


def window_no_scaling(q, k, v, window):
    """The right band, without dividing the scores by √D."""
    scores = (q @ k.transpose(-2, -1)).masked_fill(~_band(q.size(-2), 0, window - 1), float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def window_with_sdpa(q, k, v, window):
    """F.scaled_dot_product_attention with the band as attn_mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_band(q.size(-2), 0, window - 1))


BROKEN = {
    "check_causal_attention": [
        (no_causal_mask, r"without any mask"),
        (no_sqrt_scaling, r"without the 1/√D scaling"),
        (divides_by_d, r"by D instead of √D"),
        (softmax_over_queries, r"dim=-2 \(the queries\)"),
        (masks_wrong_triangle, r"masked the wrong triangle"),
        (masks_the_diagonal_too, r"masked the diagonal"),
        (masks_with_zero, r"with 0 instead of -inf"),
        (zeroes_weights_after_softmax, r"\*after\* the softmax"),
        (k_not_transposed, r"(?s)raised RuntimeError.*q @ k.transpose\(-2, -1\)"),
        (transposes_batch_axes, r"(?s)raised RuntimeError.*k\.transpose\(0, 1\) would swap the batch axes"),
        (only_first_sequence_and_head, r"right for B = H = 1"),
        (returns_weights, r"attention \*weights\*"),
        (naive_softmax_overflows, r"exp\(\) overflowed"),
        (mask_sized_by_head_dim, r"(?s)raised RuntimeError.*mask must have that shape \(T_q, T_k\), built from q\.size\(-2\)"),
        (scales_q_in_place, r"changed its input `q` in place"),
        (sliced_8x8_triangle, r"(?s)raised RuntimeError.*not from a fixed size"),
        (calls_sdpa, r"does not allow"),
        (calls_sdpa_from_c, r"does not allow"),
        (uses_lal_mask, r"does not allow"),
        (uses_lal_attention, r"does not allow"),
    ],
    "check_cached_attention": [
        (top_left_triangle, r"top-left corner of a square causal mask"),
        (diagonal_one_too_far, r"also sees the key right after"),
        (diagonal_one_short, r"misses its own key"),
        (new_keys_only, r"see only the new keys"),
        (cached_sliced_8x8, r"(?s)raised RuntimeError.*not from a fixed size"),
        (cached_without_mask, r"without any mask"),
        (cached_with_sdpa, r"does not allow"),
        (cached_with_lal_mask, r"does not allow"),
    ],
    "check_sliding_window_attention": [
        (window_one_too_wide, r"one key too wide"),
        (window_one_too_narrow, r"one key too narrow"),
        (ignores_window, r"ignored the window"),
        (centred_window, r"reaches into the FUTURE"),
        (window_no_scaling, r"without the 1/√D scaling"),
        (window_with_sdpa, r"does not allow"),
    ],
}
