"""Checks for chapter 3's exercises: causal attention, attention for a chunk after a KV cache,
and sliding-window attention.

Each check runs the learner's function on ordinary and edge cases (a single position, ``T ≠ D``,
several sequences and heads, large inputs, and windows longer than the 8 positions a learner might
hard-code) and compares it with ``F.scaled_dot_product_attention`` given the mask the exercise
describes. When the answer is wrong, the check also computes what the classic mistakes give — no
mask, no 1/√D, a softmax over the queries, the wrong triangle, the square mask of a chunk without
its offset, a window one position too wide — and names the one the learner's output matches. The
rule of all three (no ``F.scaled_dot_product_attention``, no ``lal`` attention) is enforced by
:class:`lal.checks.common.Forbidden`. All randomness comes from a local generator: a check never
moves the learner's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lal.checks.common import Forbidden, Mistakes, call, compare, expect_tensor, expect_unchanged, passed
from lal.model import CausalSelfAttention, causal_mask

_SEED = 3

#: The rule of every attention exercise: the learner builds it from @, masked_fill and softmax.
NO_LIBRARY_ATTENTION = Forbidden(
    what="F.scaled_dot_product_attention (or lal's attention)",
    why="the exercise is about computing the scores, the mask and the softmax yourself; the check "
    "compares your result with it",
    torch_names=(
        "scaled_dot_product_attention",
        "scaled_dot_product_flash_attention_for_cpu",
        "scaled_dot_product_efficient_attention",
        "scaled_dot_product_flash_attention",
        "scaled_dot_product_attention_math",
        "multi_head_attention_forward",
    ),
    python_functions=(causal_mask, CausalSelfAttention._explicit_attention, CausalSelfAttention._fused_attention),
)

AttentionFn = Callable[..., torch.Tensor]


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


def _common_mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> Mistakes:
    """The mistakes every masked attention can make, whatever its mask."""
    D = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    weights = F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    mistakes: Mistakes = [
        (
            "Your output equals attention *without any mask*: every position also looks at keys it may not "
            "see (the future, i.e. the tokens it must predict). Set the scores of forbidden keys to -inf "
            "before the softmax with masked_fill.",
            _attention_variant(q, k, v),
        ),
        (
            "Your output equals attention *without the 1/√D scaling*: divide the scores q @ kᵀ by "
            "math.sqrt(D) (D = q.size(-1)) before the mask and the softmax. Unscaled scores grow like √D and "
            "saturate the softmax (chapter 3, section 3).",
            _attention_variant(q, k, v, scale=1.0, allowed=allowed),
        ),
        (
            "You divided the scores by D instead of √D (math.sqrt(D)). Dividing by √D keeps the "
            "scores' variance at 1; dividing by D shrinks it to 1/D and flattens the weights.",
            _attention_variant(q, k, v, scale=1.0 / D, allowed=allowed),
        ),
        (
            "You masked the forbidden keys with 0 instead of -inf. A score of 0 is not 'forbidden': exp(0) = 1, "
            "so those keys still get weight after the softmax. Fill with float('-inf').",
            _attention_variant(q, k, v, allowed=allowed, fill=0.0),
        ),
        (
            "You zeroed the forbidden weights *after* the softmax, so each row no longer sums to 1. Mask the "
            "scores with -inf *before* the softmax instead.",
            (F.softmax(scores, dim=-1) * allowed) @ v,
        ),
        (
            "Your output looks like the attention *weights*, not the output: multiply the weights by v "
            "(weights @ v) and return that.",
            weights,
        ),
    ]
    if q.size(-2) == k.size(-2):  # a softmax over the queries has the right shape only for a square mask
        mistakes.append((
            "Rows of your attention weights don't sum to 1 over the keys — did you take the softmax over "
            "dim=-2 (the queries)? Each query's row of scores must be normalised: F.softmax(scores, dim=-1).",
            _attention_variant(q, k, v, allowed=allowed, softmax_dim=-2),
        ))
    return mistakes


def _attention_inputs(
    generator: torch.Generator, B: int, H: int, T_q: int, T_k: int, D: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(B, H, T_q, D, generator=generator) * scale
    k = torch.randn(B, H, T_k, D, generator=generator) * scale
    return q, k, torch.randn(B, H, T_k, D, generator=generator)


def _run_attention_cases(
    candidate: AttentionFn,
    name: str,
    cases: list[tuple[int, int, int, int, int, float, tuple[int, ...]]],
    allowed_of: Callable[..., torch.Tensor],
    mistakes_of: Callable[..., Mistakes],
    formula: str,
) -> None:
    """Run an attention exercise: cases are (B, H, T_q, T_k, D, scale of q and k, extra arguments)."""
    generator = torch.Generator().manual_seed(_SEED)
    hint = (
        "The scores are q @ k.transpose(-2, -1): (..., T_q, D) @ (..., D, T_k) -> (..., T_q, T_k), and the "
        "mask must have that shape (T_q, T_k), built from q.size(-2) and k.size(-2), not from a fixed size. "
        "k.T or k.transpose(0, 1) would swap the batch axes instead."
    )
    single_ok = False
    for B, H, T_q, T_k, D, scale, extra in cases:
        q, k, v = _attention_inputs(generator, B, H, T_q, T_k, D, scale)
        before = [t.clone() for t in (q, k, v)]
        what = f"q of shape {(B, H, T_q, D)}, k and v of shape {(B, H, T_k, D)}" + (f", arguments {extra}" if extra else "")
        try:
            out = call(candidate, name, q, k, v, *extra, hint=hint, forbidden=[NO_LIBRARY_ATTENTION])
        except AssertionError as error:
            if single_ok and B * H > 1 and "does not allow" not in str(error):
                raise AssertionError(
                    f"{error}\nYour function works for one sequence and one head (B = H = 1) but not for "
                    f"B = {B}, H = {H}: let every operation act on the last two dimensions only, so the batch "
                    "and head dimensions ride along."
                ) from None
            raise
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, H, T_q, T_k) and T_k != D:
            raise AssertionError(
                f"`{name}` returned shape {(B, H, T_q, T_k)} — the attention *weights*. Return the "
                f"output instead: weights @ v, shape {(B, H, T_q, D)}."
            )
        expect_tensor(out, name, (B, H, T_q, D))
        for argument, old, new in zip("qkv", before, (q, k, v)):
            expect_unchanged(old, new, name, argument)
        qd, kd, vd = q.double(), k.double(), v.double()
        allowed = allowed_of(T_q, T_k, *extra)
        expected = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=allowed)
        if scale > 1 and not torch.isfinite(out).all():
            raise AssertionError(
                f"`{name}` returned inf or NaN for inputs with large values (scores of several hundred): an "
                "exp() overflowed. Use F.softmax, which subtracts each row's maximum before exponentiating "
                "(or subtract scores.amax(dim=-1, keepdim=True) yourself)."
            )
        otherwise = f"`{name}` is wrong for {what}."
        if single_ok and B * H > 1:
            otherwise += (
                " It is right for B = H = 1: make every operation act on the last two dimensions only "
                "(k.transpose(-2, -1), softmax over dim=-1), so the batch and head dimensions ride along."
            )
        else:
            otherwise += f" {formula}"
        common = _common_mistakes(qd, kd, vd, allowed)  # "no mask at all" first: a shifted mask can coincide with it
        mistakes = common[:1] + mistakes_of(qd, kd, vd, allowed, *extra) + common[1:]
        compare(out, expected, mistakes, otherwise, atol=1e-4 if scale > 1 else 1e-5, rtol=1e-4)
        single_ok = single_ok or B * H == 1
    passed(name, len(cases))


def _sliced_triangle(T_q: int, T_k: int, size: int = 8) -> torch.Tensor | None:
    """The mask a learner gets by slicing a hard-coded size × size triangle (None when it cannot be sliced)."""
    if T_q > size or T_k > size:
        return None
    return torch.tril(torch.ones(size, size, dtype=torch.bool))[:T_q, :T_k]


# --------------------------------------------------------------------------- Exercise 3.1: causal_attention


def _causal_mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> Mistakes:
    T = q.size(-2)
    ones = torch.ones(T, T, dtype=torch.bool)
    return [
        (
            "You masked the wrong triangle: your positions see the future and not the past. Keep the lower "
            "triangle (torch.tril: key s ≤ query t) and set the rest to -inf.",
            _attention_variant(q, k, v, allowed=torch.triu(ones)),
        ),
        (
            "Row 0 of your weights is all -inf before the softmax (NaN after it): you masked the diagonal "
            "too. A position may attend to itself — keep the diagonal (torch.tril with diagonal=0).",
            _attention_variant(q, k, v, allowed=torch.tril(ones, diagonal=-1)),
        ),
        (
            "Each position also sees the NEXT one (torch.tril with diagonal=1): that next token is the one it "
            "must predict. Keep keys s ≤ t only (diagonal=0).",
            _attention_variant(q, k, v, allowed=torch.tril(ones, diagonal=1)),
        ),
    ]


def check_causal_attention(causal_attention: AttentionFn) -> None:
    """Check ``causal_attention(q, k, v)``: (B, H, T, D) x 3 -> (B, H, T, D), against F.scaled_dot_product_attention."""
    # (B, H, T_q, T_k, D, scale of q and k, extra): one sequence and head first, so a later failure can
    # say that only the batch/head handling is wrong; T ≠ D everywhere, so a k that is not transposed
    # fails; T = 13 and 37 catch a mask sliced from a hard-coded 8 × 8 triangle.
    cases = [
        (1, 1, 5, 5, 3, 1.0, ()),
        (1, 1, 1, 1, 4, 1.0, ()),  # a single position can only attend to itself: the output is v
        (2, 3, 6, 6, 4, 1.0, ()),
        (1, 4, 3, 3, 8, 1.0, ()),
        (2, 2, 7, 7, 16, 20.0, ()),  # scores of several hundred: a softmax that does not subtract the max overflows
        (1, 2, 13, 13, 5, 1.0, ()),
        (2, 1, 37, 37, 6, 1.0, ()),
    ]
    _run_attention_cases(
        causal_attention,
        "causal_attention",
        cases,
        lambda T_q, T_k: causal_mask(T_q, T_k),
        lambda q, k, v, allowed: _causal_mistakes(q, k, v, allowed),
        "Compute softmax(q @ kᵀ / √D with the future set to -inf, over dim=-1) @ v, with a (T, T) mask built "
        "from T = q.size(-2) (torch.tril(torch.ones(T, T, dtype=torch.bool))), not sliced from a fixed size.",
    )


# --------------------------------------------------------------------------- Exercise 3.2: a chunk after a KV cache


def _cached_mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> Mistakes:
    T_q, T_k = q.size(-2), k.size(-2)
    ones = torch.ones(T_q, T_k, dtype=torch.bool)
    cached = T_k - T_q
    mistakes: Mistakes = [
        (
            "Your mask is the top-left corner of a square causal mask (torch.tril(torch.ones(T_q, T_k))): it "
            f"treats the new queries as positions 0 … T_q − 1. They are the LAST positions: query i sits at "
            f"position T_k − T_q + i (here {cached} + i) and sees keys 0 … {cached} + i, so shift the diagonal "
            "(torch.tril(..., diagonal=T_k - T_q)).",
            _attention_variant(q, k, v, allowed=torch.tril(ones)),
        ),
        (
            "Each query also sees the key right after its own position: query i sees keys 0 … T_k − T_q + i, "
            "not one more (use diagonal=T_k - T_q, not T_k - T_q + 1).",
            _attention_variant(q, k, v, allowed=torch.tril(ones, diagonal=cached + 1)),
        ),
        (
            "Each query misses its own key: query i sees keys 0 … T_k − T_q + i, its own position included "
            "(use diagonal=T_k - T_q, not T_k - T_q − 1).",
            _attention_variant(q, k, v, allowed=torch.tril(ones, diagonal=cached - 1)),
        ),
        (
            "Your new queries see only the new keys, not the cached ones: the cache holds the past, which "
            "every new query may attend to.",
            _attention_variant(q, k, v, allowed=torch.cat([torch.zeros(T_q, cached, dtype=torch.bool), torch.tril(torch.ones(T_q, T_q, dtype=torch.bool))], dim=1)),
        ),
    ]
    sliced = _sliced_triangle(T_q, T_k)
    if sliced is not None:
        mistakes.append(("You sliced a fixed-size triangle: build the mask from q.size(-2) and k.size(-2).", _attention_variant(q, k, v, allowed=sliced)))
    return mistakes


def check_cached_attention(cached_attention: AttentionFn) -> None:
    """Check ``cached_attention(q, k, v)``: q (B, H, T_new, D), k and v (B, H, T_past + T_new, D),
    the queries being the last T_new positions -> (B, H, T_new, D)."""
    cases = [  # (B, H, T_q, T_k, D, scale, extra)
        (1, 1, 3, 5, 4, 1.0, ()),  # three new tokens after two cached ones
        (1, 1, 2, 5, 3, 1.0, ()),  # two new tokens after three cached ones, as in the chapter's picture
        (1, 1, 1, 6, 4, 1.0, ()),  # one new token: it sees every key, nothing is masked
        (1, 1, 4, 4, 3, 1.0, ()),  # an empty cache: the usual square causal mask
        (2, 3, 3, 10, 4, 1.0, ()),
        (1, 2, 5, 13, 8, 1.0, ()),
        (2, 2, 6, 37, 5, 1.0, ()),
        (1, 2, 4, 9, 16, 20.0, ()),  # scores of several hundred
    ]
    _run_attention_cases(
        cached_attention,
        "cached_attention",
        cases,
        lambda T_q, T_k: causal_mask(T_q, T_k),
        lambda q, k, v, allowed: _cached_mistakes(q, k, v, allowed),
        "Query i is position T_k − T_q + i and sees keys 0 … T_k − T_q + i: a (T_q, T_k) mask whose diagonal is "
        "shifted right by T_k − T_q.",
    )


# --------------------------------------------------------------------------- Exercise 3.3: sliding window


def _window_mask(T_q: int, T_k: int, window: int) -> torch.Tensor:
    """(T, T) True where key s is in query t's window: t − window < s ≤ t."""
    query = torch.arange(T_q).unsqueeze(1)  # (T, 1)
    key = torch.arange(T_k).unsqueeze(0)  # (1, T)
    return (key <= query) & (key > query - window)


def _window_mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, window: int) -> Mistakes:
    T = q.size(-2)
    query = torch.arange(T).unsqueeze(1)
    key = torch.arange(T).unsqueeze(0)
    mistakes: Mistakes = [
        (
            f"Your windows are one key too wide: with window={window}, position t sees the {window} keys "
            f"t − {window - 1} … t (itself included), not t − {window} … t.",
            _attention_variant(q, k, v, allowed=_window_mask(T, T, window + 1)),
        ),
        (
            "You ignored the window: your output is plain causal attention. Also mask the keys more than "
            "window − 1 positions back (key s < t − window + 1).",
            _attention_variant(q, k, v, allowed=causal_mask(T, T)),
        ),
        (
            "Your window is centred on each position and reaches into the FUTURE: a causal window covers "
            "t − window + 1 … t only.",
            _attention_variant(q, k, v, allowed=(key - query).abs() < window),
        ),
    ]
    if window > 1:
        mistakes.append((
            f"Your windows are one key too narrow: with window={window}, position t sees {window} keys, "
            f"t − {window - 1} … t, itself included.",
            _attention_variant(q, k, v, allowed=_window_mask(T, T, window - 1)),
        ))
    return mistakes


def check_sliding_window_attention(sliding_window_attention: AttentionFn) -> None:
    """Check ``sliding_window_attention(q, k, v, window)``: causal attention where position t sees
    keys t − window + 1 … t only; (B, H, T, D) x 3 -> (B, H, T, D)."""
    cases = [  # (B, H, T, T, D, scale, (window,))
        (1, 1, 6, 6, 3, 1.0, (3,)),
        (1, 1, 5, 5, 4, 1.0, (1,)),  # a window of 1: each position sees only itself, the output is v
        (2, 2, 7, 7, 4, 1.0, (7,)),  # a window as long as the sequence: plain causal attention
        (1, 2, 4, 4, 6, 1.0, (10,)),  # a window longer than the sequence
        (2, 3, 13, 13, 5, 1.0, (4,)),
        (1, 2, 37, 37, 8, 1.0, (9,)),
        (2, 2, 9, 9, 16, 20.0, (3,)),  # scores of several hundred
    ]
    _run_attention_cases(
        sliding_window_attention,
        "sliding_window_attention",
        cases,
        _window_mask,
        _window_mistakes,
        "Position t sees keys s with t − window < s ≤ t: causal, and at most `window` keys back (itself included).",
    )
