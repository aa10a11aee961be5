"""Checks for chapter 3's exercises: averaging the past, splitting and merging heads, causal attention.

Each check runs the learner's function on ordinary and edge cases (a single position, ``T ≠ D``,
several sequences and heads, large inputs) and compares it with a reference built from ``lal``
(``lal.model.causal_mask``, the head layout of ``lal.model.CausalSelfAttention``) and from
``F.scaled_dot_product_attention``. When the answer is wrong, the check also computes what the
classic mistakes give — no causal mask, no 1/√D, a softmax over the queries, the wrong triangle,
a ``view`` without its ``transpose`` — and names the one the learner's output matches, so the
message says what to fix. All randomness comes from a local generator: a check never moves the
learner's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lal.checks.common import Mistakes, call, compare, expect_tensor, expect_unchanged, passed
from lal.model import causal_mask


_SEED = 3










def _row_normalised(weights: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum; a row with nothing in it becomes NaN (0/0), as it would for a learner."""
    return weights / weights.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- Exercise 3.1: average_past


def _average_past_mistakes(x: torch.Tensor) -> Mistakes:
    T = x.size(1)
    ones = torch.ones(T, T, dtype=torch.float64)
    cumsum = x.cumsum(dim=1)
    return [
        (
            "Every position got the mean over all T positions, the future included. Position t may "
            "only average positions 0..t: weight them with a lower-triangular matrix (torch.tril).",
            x.mean(dim=1, keepdim=True).expand_as(x),
        ),
        (
            "Position t averaged positions 0..t-1 and left itself out. Position t must include itself: "
            "torch.tril keeps the diagonal with its default diagonal=0 (diagonal=-1 drops it).",
            _row_normalised(torch.tril(ones, diagonal=-1)) @ x,
        ),
        (
            "Position t averaged positions 0..t-1 and left itself out (position 0 got zeros). Position t "
            "must include itself: torch.tril keeps the diagonal with its default diagonal=0.",
            _row_normalised(torch.tril(ones, diagonal=-1)).nan_to_num(0.0) @ x,
        ),
        (
            "Position t also averaged position t+1: the next token leaks into the average. Use "
            "torch.tril with its default diagonal=0, not diagonal=1.",
            _row_normalised(torch.tril(ones, diagonal=1)) @ x,
        ),
        (
            "Position t averaged positions t..T-1: that is the upper triangle, the future. Use "
            "torch.tril (lower triangle), not torch.triu, and don't transpose the weight matrix.",
            _row_normalised(torch.triu(ones)) @ x,
        ),
        (
            "You divided every position by T. Position t averages t + 1 positions, so row t must be "
            "divided by t + 1: normalise each row of the tril matrix by its own sum "
            "(W / W.sum(dim=1, keepdim=True)).",
            cumsum / T,
        ),
        (
            "You summed the past instead of averaging it: divide row t of the tril matrix by t + 1, "
            "its number of ones (W / W.sum(dim=1, keepdim=True)).",
            cumsum,
        ),
        (
            "Your weight matrix is normalised down its columns (W.sum(dim=0)), not along its rows. Row t "
            "holds position t's weights and must sum to 1: W / W.sum(dim=1, keepdim=True).",
            (torch.tril(ones) / torch.tril(ones).sum(dim=0, keepdim=True)) @ x,
        ),
        (
            "You averaged over the channels (the last dimension) instead of over the positions "
            "(dimension 1). x is (B, T, C): the running mean runs along T.",
            x.cumsum(dim=-1) / torch.arange(1, x.size(-1) + 1, dtype=torch.float64),
        ),
    ]


def _average_past_reference(x: torch.Tensor) -> torch.Tensor:
    """The chapter's third form: a softmax of zero scores with lal's causal mask, times x."""
    T = x.size(1)
    scores = torch.zeros(T, T, dtype=x.dtype).masked_fill(~causal_mask(T, T), float("-inf"))
    return F.softmax(scores, dim=-1) @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def check_average_past(average_past: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``average_past(x)``: (B, T, C) -> (B, T, C), position t = mean of x[:, 0..t]."""
    name = "average_past"
    generator = torch.Generator().manual_seed(_SEED)
    cases = [(2, 5, 3), (1, 1, 4), (3, 7, 1), (1, 6, 6), (2, 9, 2)]  # (B, T, C); T = 1 and T = C included
    for B, T, C in cases:
        x = torch.randn(B, T, C, generator=generator)
        before = x.clone()
        out = expect_tensor(call(average_past, name, x), name, (B, T, C))
        expect_unchanged(before, x, name, "x")
        expected = _average_past_reference(x.double())
        compare(
            out,
            expected,
            _average_past_mistakes(x.double()),
            f"`{name}` is wrong for x of shape {(B, T, C)}: out[:, t] must be the mean of x[:, 0], ..., x[:, t]. "
            "Build W = torch.tril(torch.ones(T, T)), divide each row by its sum, and return W @ x.",
            atol=1e-5,
            rtol=1e-4,
        )
    passed(name, len(cases))


# --------------------------------------------------------------------------- Exercise 3.2: heads


def _split_reference(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """lal's layout (CausalSelfAttention.forward): head h owns channels h*D .. (h+1)*D - 1."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, H, T, D)


def _merge_reference(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


_VIEW_HINT = (
    "view(B, T, H, D) first cuts each position's channels into heads, then transpose(1, 2) moves the "
    "head axis in front of the positions."
)


def check_split_heads(split_heads: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Check ``split_heads(x, n_head)``: (B, T, C) -> (B, H, T, D) with lal's channel layout."""
    name = "split_heads"
    cases = [(2, 5, 12, 3), (1, 1, 8, 2), (3, 4, 8, 1), (2, 6, 8, 8), (1, 3, 6, 2)]  # (B, T, C, H)
    for B, T, C, H in cases:
        D = C // H
        x = torch.arange(B * T * C, dtype=torch.float32).view(B, T, C)  # every entry tells where it came from
        before = x.clone()
        out = call(split_heads, name, x, H, hint="Use only view/reshape and transpose/permute.")
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, T, H, D):
            raise AssertionError(
                f"`{name}` returned shape {(B, T, H, D)} = (B, T, H, D): the heads are cut but the head axis "
                f"is still after the positions. Move it with .transpose(1, 2) to get (B, H, T, D)."
            )
        expect_tensor(out, name, (B, H, T, D))
        expect_unchanged(before, x, name, "x")
        mistakes = [
            (
                "Right shape, wrong contents: x.view(B, H, T, D) (or reshape) alone cuts the memory in the "
                f"wrong places, so a head's rows mix channels of different positions. {_VIEW_HINT}",
                x.view(B, H, T, D),
            ),
            (
                "Your heads take every H-th channel (view(B, T, D, H)): head h must own a contiguous block "
                f"of channels, h*D .. (h+1)*D - 1, as in lal's CausalSelfAttention. {_VIEW_HINT}",
                x.view(B, T, D, H).permute(0, 3, 1, 2),
            ),
        ]
        compare(
            out,
            _split_reference(x, H),
            mistakes,
            f"`{name}` is wrong for x of shape {(B, T, C)} and n_head={H}: out[b, h, t] must be "
            f"x[b, t, h*D:(h+1)*D]. {_VIEW_HINT}",
            atol=0.0,
            rtol=0.0,
        )
    passed(name, len(cases))


def check_merge_heads(merge_heads: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``merge_heads(x)``: (B, H, T, D) -> (B, T, H*D), the inverse of the split."""
    name = "merge_heads"
    cases = [(2, 3, 5, 4), (1, 2, 1, 3), (3, 1, 4, 8), (2, 4, 6, 1), (1, 2, 3, 2)]  # (B, H, T, D)
    hint = (
        "After a transpose the tensor is no longer contiguous, so .view fails on it: use .reshape, or "
        ".contiguous().view(...)."
    )
    for B, H, T, D in cases:
        x = torch.arange(B * H * T * D, dtype=torch.float32).view(B, H, T, D)
        before = x.clone()
        out = call(merge_heads, name, x, hint=hint)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, T, H, D) and (H, D) != (1, 1):
            raise AssertionError(
                f"`{name}` returned shape {(B, T, H, D)} = (B, T, H, D): the heads are back next to their "
                "positions but not yet side by side. Finish with .reshape(B, T, H * D)."
            )
        expect_tensor(out, name, (B, T, H * D))
        expect_unchanged(before, x, name, "x")
        mistakes = [
            (
                "Right shape, wrong contents: reshaping (B, H, T, D) straight to (B, T, H*D) glues together "
                "rows of *different positions*. Transpose first: x.transpose(1, 2) gives (B, T, H, D), "
                "then .reshape(B, T, H * D).",
                x.reshape(B, T, H * D),
            ),
            (
                "Your channels are interleaved (head 0's channel 0, head 1's channel 0, ...). The heads must "
                "sit side by side: all of head 0's D channels, then head 1's: x.transpose(1, 2).reshape(B, T, H * D).",
                x.permute(0, 2, 3, 1).reshape(B, T, D * H),
            ),
        ]
        compare(
            out,
            _merge_reference(x),
            mistakes,
            f"`{name}` is wrong for x of shape {(B, H, T, D)}: out[b, t, h*D:(h+1)*D] must be x[b, h, t]. "
            "Use x.transpose(1, 2).reshape(B, T, H * D).",
            atol=0.0,
            rtol=0.0,
        )
    passed(name, len(cases))


# --------------------------------------------------------------------------- Exercise 3.3: causal_attention


def _attention_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    allowed: torch.Tensor | None = None,
    fill: float = float("-inf"),
    softmax_dim: int = -1,
) -> torch.Tensor:
    """softmax(q kᵀ · scale, masked) v, with each ingredient replaceable to reproduce a mistake."""
    D = q.size(-1)
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(D) if scale is None else scale)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, fill)
    return F.softmax(scores, dim=softmax_dim) @ v


def _attention_mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Mistakes:
    T, D = q.size(-2), q.size(-1)
    causal = causal_mask(T, T)
    ones = torch.ones(T, T, dtype=torch.bool)
    weights = F.softmax((q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~causal, float("-inf")), dim=-1)
    return [
        (
            "Your output equals attention *without the causal mask*: every position also looks at the "
            "positions after it, i.e. at the tokens it must predict. Set the scores of future keys to "
            "-inf before the softmax: scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float('-inf')).",
            _attention_variant(q, k, v),
        ),
        (
            "Your output equals attention *without the 1/√D scaling*: divide the scores q @ kᵀ by "
            "math.sqrt(D) (D = q.size(-1)) before the mask and the softmax. Unscaled scores grow like √D and "
            "saturate the softmax (chapter 3, section 3).",
            _attention_variant(q, k, v, scale=1.0, allowed=causal),
        ),
        (
            "You divided the scores by D instead of √D (math.sqrt(D)). Dividing by √D keeps the "
            "scores' variance at 1; dividing by D shrinks it to 1/D and flattens the weights.",
            _attention_variant(q, k, v, scale=1.0 / D, allowed=causal),
        ),
        (
            "Rows of your attention weights don't sum to 1 over the keys — did you take the softmax over "
            "dim=-2 (the queries)? Each query's row of scores must be normalised: F.softmax(scores, dim=-1).",
            _attention_variant(q, k, v, allowed=causal, softmax_dim=-2),
        ),
        (
            "You masked the wrong triangle: your positions see the future and not the past. Keep the lower "
            "triangle (torch.tril: key s ≤ query t) and set the rest to -inf.",
            _attention_variant(q, k, v, allowed=torch.triu(ones)),
        ),
        (
            "You masked the future with 0 instead of -inf. A score of 0 is not 'forbidden': exp(0) = 1, so "
            "future positions still get weight after the softmax. Fill with float('-inf').",
            _attention_variant(q, k, v, allowed=causal, fill=0.0),
        ),
        (
            "You zeroed the future weights *after* the softmax, so each row no longer sums to 1. Mask the "
            "scores with -inf *before* the softmax instead.",
            (F.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1) * causal) @ v,
        ),
        (
            "Your output looks like the attention *weights*, not the output: multiply the weights by v "
            "(weights @ v) and return that.",
            weights,
        ),
        (
            "Row 0 of your weights is all -inf before the softmax (NaN after it): you masked the diagonal "
            "too. A position may attend to itself — keep the diagonal (torch.tril with diagonal=0).",
            _attention_variant(q, k, v, allowed=torch.tril(ones, diagonal=-1)),
        ),
    ]


def _attention_inputs(
    generator: torch.Generator, B: int, H: int, T: int, D: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (torch.randn(B, H, T, D, generator=generator) for _ in range(3))
    return q * scale, k * scale, v


def check_causal_attention(
    causal_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Check ``causal_attention(q, k, v)``: (B, H, T, D) x 3 -> (B, H, T, D), against F.scaled_dot_product_attention."""
    name = "causal_attention"
    generator = torch.Generator().manual_seed(_SEED)
    # (B, H, T, D, scale of q and k): one sequence and head first, so a later failure can say that
    # only the batch/head handling is wrong; T ≠ D everywhere, so a k that is not transposed fails.
    cases = [
        (1, 1, 5, 3, 1.0),
        (1, 1, 1, 4, 1.0),  # a single position can only attend to itself: the output is v
        (2, 3, 6, 4, 1.0),
        (1, 4, 3, 8, 1.0),
        (2, 2, 7, 16, 20.0),  # scores of several hundred: a softmax that does not subtract the max overflows
    ]
    hint = (
        "The scores are q @ k.transpose(-2, -1): (..., T, D) @ (..., D, T) -> (..., T, T). k.T or "
        "k.transpose(0, 1) would swap the batch axes instead, and the mask is (T, T) with T = q.size(-2)."
    )
    single_ok = False
    for B, H, T, D, scale in cases:
        q, k, v = _attention_inputs(generator, B, H, T, D, scale)
        before = [t.clone() for t in (q, k, v)]
        try:
            out = call(causal_attention, name, q, k, v, hint=hint)
        except AssertionError as error:
            if single_ok and B * H > 1:
                raise AssertionError(
                    f"{error}\nYour function works for one sequence and one head (B = H = 1) but not for "
                    f"B = {B}, H = {H}: let every operation act on the last two dimensions only, so the batch "
                    "and head dimensions ride along."
                ) from None
            raise
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, H, T, T) and T != D:
            raise AssertionError(
                f"`{name}` returned shape {(B, H, T, T)} — the (B, H, T, T) attention *weights*. Return the "
                f"output instead: weights @ v, shape {(B, H, T, D)}."
            )
        expect_tensor(out, name, (B, H, T, D))
        for argument, old, new in zip("qkv", before, (q, k, v)):
            expect_unchanged(old, new, name, argument)
        qd, kd, vd = q.double(), k.double(), v.double()
        expected = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        if scale > 1 and not torch.isfinite(out).all():
            raise AssertionError(
                f"`{name}` returned inf or NaN for inputs with large values (scores of several hundred): an "
                "exp() overflowed. Use F.softmax, which subtracts each row's maximum before exponentiating "
                "(or subtract scores.amax(dim=-1, keepdim=True) yourself)."
            )
        otherwise = f"`{name}` is wrong for q, k, v of shape {(B, H, T, D)}."
        if single_ok and B * H > 1:
            otherwise += (
                " It is right for B = H = 1: make every operation act on the last two dimensions only "
                "(k.transpose(-2, -1), softmax over dim=-1), so the batch and head dimensions ride along."
            )
        else:
            otherwise += " Compute softmax(q @ kᵀ / √D with the future set to -inf, over dim=-1) @ v."
        compare(out, expected, _attention_mistakes(qd, kd, vd), otherwise, atol=1e-4 if scale > 1 else 1e-5, rtol=1e-4)
        single_ok = single_ok or B * H == 1
    passed(name, len(cases))
