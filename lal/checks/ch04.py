"""Checks for chapter 4's exercises: LayerNorm, RMSNorm, the SwiGLU MLP, and the parameter count of
a LLaMA-style GPT.

Each check compares the learner's function with PyTorch on ordinary and edge cases. When the answer
is wrong, it also computes the answers that the classic mistakes give (unbiased variance, eps
outside the square root, a mean subtracted in RMSNorm, the gate and the up projection swapped, a
tied head, position embeddings a rotary model does not have, …) and names the one the learner's
output matches, so the message says what to fix, not only that something is off. Each exercise's
rules (no ``F.layer_norm``, no ``F.rms_norm``, no ``F.silu``, no model built to count) are enforced by
:class:`lal.checks.common.Forbidden`. All randomness comes from local generators: a check never
moves the learner's global RNG.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lal.checks.common import Forbidden, Mistakes, call, compare, expect_tensor, expect_unchanged, passed
from lal.model import GPT, GPTConfig, count_parameters, expected_parameters

_NORMS = ("layer_norm", "rms_norm", "group_norm", "batch_norm", "instance_norm", "normalize")
NO_LIBRARY_LAYER_NORM = Forbidden(
    what="a library normalisation (F.layer_norm, torch.layer_norm, nn.LayerNorm, ...)",
    why="the exercise asks you to compute the mean and the variance yourself",
    torch_names=_NORMS,
)
NO_LIBRARY_RMS_NORM = Forbidden(
    what="a library normalisation (F.rms_norm, nn.RMSNorm, F.layer_norm, F.normalize, ...)",
    why="the exercise asks you to compute the root mean square yourself",
    torch_names=_NORMS,
)


# --------------------------------------------------------------------------- Exercise 4.1: LayerNorm

_LN_ATOL, _LN_RTOL = 1e-5, 1e-4


def _normalise(x: torch.Tensor, dims: tuple[int, ...], *, unbiased: bool, eps: float, eps_inside: bool) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / (torch.sqrt(var + eps) if eps_inside else torch.sqrt(var) + eps)


def _layer_norm_mistakes(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> Mistakes:
    last, every = (-1,), tuple(range(x.dim()))

    def norm(
        dims: tuple[int, ...] = last, unbiased: bool = False, eps: float = eps, eps_inside: bool = True
    ) -> torch.Tensor:
        return _normalise(x, dims, unbiased=unbiased, eps=eps, eps_inside=eps_inside)

    mistakes: Mistakes = []
    if eps != 1e-5:  # first: ignoring the argument would otherwise read as "ignored eps" below
        hard_coded = "You used eps = 1e-5 although the call passed another eps: use the `eps` argument."
        mistakes.append((hard_coded, norm(eps=1e-5) * w + b))
    mistakes += [
        (
            "You used the unbiased variance (divide by C − 1; torch.var's and x.std()'s default). LayerNorm "
            "divides by C: use ((x - mean)**2).mean(-1, keepdim=True) or x.var(-1, unbiased=False, keepdim=True). "
            "(If you divided by x.std() + eps: eps also belongs inside the square root, sqrt(var + eps).)",
            norm(unbiased=True) * w + b,
        ),
        (
            "eps is outside the square root: LayerNorm divides by sqrt(var + eps), not sqrt(var) + eps. "
            "They differ most when a row's variance is tiny, as in this case.",
            norm(eps_inside=False) * w + b,
        ),
        (
            "You ignored eps (divided by sqrt(var)). A row whose values are all equal has variance 0, and "
            "0 / 0 is NaN: eps inside the square root keeps the division safe.",
            norm(eps=0.0) * w + b,
        ),
        (
            "You normalised over dim 0 (down the columns). LayerNorm normalises each position's vector: "
            "mean and variance over the last dimension (dim=-1).",
            norm(dims=(0,)) * w + b,
        ),
        (
            "You normalised over all the elements at once. LayerNorm normalises each row (each position's "
            "C features) separately: reduce over dim=-1 only.",
            norm(dims=every) * w + b,
        ),
        ("The gain (weight) is missing: after normalising, multiply by weight, then add bias.", norm() + b),
        ("The shift (bias) is missing: after normalising and multiplying by weight, add bias.", norm() * w),
        ("You added bias before multiplying by weight: LayerNorm is x_hat * weight + bias.", (norm() + b) * w),
    ]
    if x.shape[-1] == x.shape[-2]:  # only a square input lets a missing keepdim broadcast silently
        keepdim = (
            "A mean or variance without keepdim=True: its shape (..., C) → (...) then broadcasts along the "
            "wrong axis (a square input hides the shape error). Use keepdim=True."
        )
        mean, var = x.mean(dim=-1), x.var(dim=-1, unbiased=False)
        mistakes.append((keepdim, (x - mean) / torch.sqrt(var + eps) * w + b))
        mistakes.append((keepdim, (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(var + eps) * w + b))
    return mistakes


def check_layer_norm(layer_norm: Callable[..., torch.Tensor]) -> None:
    """Exercise 4.1: ``layer_norm(x, weight, bias, eps)`` must equal ``F.layer_norm`` over the last dim."""
    g = torch.Generator().manual_seed(42)

    def params(c: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        weight = 1.0 + 0.5 * torch.randn(c, generator=g, dtype=dtype)
        return weight, 0.5 * torch.randn(c, generator=g, dtype=dtype)

    constant_rows = torch.randn(3, 5, generator=g)
    constant_rows[1] = 2.0
    cases = [  # (what, x, eps or None for the default)
        ("a (5, 8) input, default eps", 2 * torch.randn(5, 8, generator=g) + 1, None),
        ("a (3, 4) input: small C", torch.randn(3, 4, generator=g) + 3, 1e-5),
        ("a (B, T, C) = (2, 3, 5) input", torch.randn(2, 3, 5, generator=g), 1e-5),
        ("a square (4, 4) input", torch.randn(4, 4, generator=g) * torch.arange(1.0, 5.0), 1e-5),
        ("rows with a tiny variance (≈ 1e-6)", 0.01 + 1e-3 * torch.randn(3, 6, generator=g), 1e-5),
        ("a row whose values are all equal", constant_rows, 1e-5),
        ("eps=0.1", torch.randn(4, 6, generator=g), 0.1),
        ("a float64 (2, 7, 3) input", torch.randn(2, 7, 3, generator=g, dtype=torch.float64), 1e-5),
    ]
    shape_hint = (
        "A shape error here usually means a mean or variance taken without keepdim=True, so it cannot "
        "broadcast against x."
    )
    for what, x, eps in cases:
        weight, bias = params(x.shape[-1], x.dtype)
        before = x.clone()
        kwargs = {} if eps is None else {"eps": eps}
        out = call(layer_norm, "layer_norm", x, weight, bias, hint=shape_hint, forbidden=[NO_LIBRARY_LAYER_NORM], **kwargs)
        actual = expect_tensor(out, "layer_norm", tuple(x.shape))
        expect_unchanged(before, x, "layer_norm")
        if actual.dtype != x.dtype:
            raise AssertionError(
                f"`layer_norm` returned {actual.dtype} for {x.dtype} input ({what}): keep the input's dtype."
            )
        eps_value = 1e-5 if eps is None else eps
        expected = F.layer_norm(x, (x.shape[-1],), weight, bias, eps_value)
        compare(
            actual,
            expected,
            _layer_norm_mistakes(x, weight, bias, eps_value),
            f"`layer_norm` is wrong on {what}. Steps: mean and biased variance over the last dim "
            "(keepdim=True), (x - mean) / sqrt(var + eps), then * weight + bias.",
            atol=_LN_ATOL,
            rtol=_LN_RTOL,
        )
    passed("layer_norm", len(cases))


# --------------------------------------------------------------------------- Exercise 4.2: RMSNorm

_RMS_ATOL, _RMS_RTOL = 1e-5, 1e-4


def _rms_mistakes(x: torch.Tensor, w: torch.Tensor, eps: float) -> Mistakes:
    def rms(values: torch.Tensor, dims: tuple[int, ...] = (-1,), eps: float = eps, inside: bool = True) -> torch.Tensor:
        mean_square = values.pow(2).mean(dim=dims, keepdim=True)
        return torch.sqrt(mean_square + eps) if inside else torch.sqrt(mean_square) + eps

    centred = x - x.mean(dim=-1, keepdim=True)
    mistakes: Mistakes = []
    if eps != 1e-6:
        mistakes.append(("You used eps = 1e-6 although the call passed another eps: use the `eps` argument.", x / rms(x, eps=1e-6) * w))
    mistakes += [
        (
            "You subtracted the mean: that is LayerNorm without its shift. RMSNorm does NOT centre: it divides "
            "x itself by sqrt(mean(x²) + eps), so a constant offset survives.",
            centred / rms(centred) * w,
        ),
        (
            "eps is outside the square root: RMSNorm divides by sqrt(mean(x²) + eps), not sqrt(mean(x²)) + eps. "
            "They differ most when a row is tiny, as in this case.",
            x / rms(x, inside=False) * w,
        ),
        (
            "You used the sum of squares, not their mean (the L2 norm, not the root MEAN square): divide by C "
            "inside the root, x.pow(2).mean(dim=-1, keepdim=True).",
            x / torch.sqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps) * w,
        ),
        (
            "You divided by the mean square itself: take its square root, sqrt(mean(x²) + eps) (or multiply "
            "by torch.rsqrt(...)).",
            x / (x.pow(2).mean(dim=-1, keepdim=True) + eps) * w,
        ),
        (
            "You normalised over dim 0 (down the columns). RMSNorm normalises each position's vector: the mean "
            "of squares over the last dimension (dim=-1).",
            x / rms(x, dims=(0,)) * w,
        ),
        ("The gain (weight) is missing: after normalising, multiply by weight.", x / rms(x)),
        (
            "You divided by the standard deviation: RMSNorm uses the root mean square of x, sqrt(mean(x²)), "
            "which does not subtract the mean first.",
            x / torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + eps) * w,
        ),
    ]
    return mistakes


def check_rms_norm(rms_norm: Callable[..., torch.Tensor]) -> None:
    """Exercise 4.2: ``rms_norm(x, weight, eps=1e-6)`` must equal ``F.rms_norm(x, (C,), weight, eps)``."""
    g = torch.Generator().manual_seed(43)
    zero_row = torch.randn(3, 6, generator=g)
    zero_row[1] = 0.0
    cases = [  # (what, x, eps or None for the default 1e-6)
        ("a (5, 8) input with a mean far from 0, default eps", 2 * torch.randn(5, 8, generator=g) + 3, None),
        ("a (3, 4) input", torch.randn(3, 4, generator=g), 1e-6),
        ("a (B, T, C) = (2, 3, 5) input", torch.randn(2, 3, 5, generator=g), 1e-6),
        ("rows of tiny values (≈ 1e-3)", 1e-3 * torch.randn(4, 6, generator=g), 1e-5),
        ("a row of zeros", zero_row, 1e-6),
        ("eps=0.1", torch.randn(4, 6, generator=g), 0.1),
        ("a (2, 40, 96) input, C = 96", torch.randn(2, 40, 96, generator=g), 1e-6),
        ("a float64 (2, 7, 3) input", torch.randn(2, 7, 3, generator=g, dtype=torch.float64) + 1, 1e-6),
    ]
    shape_hint = "A shape error here usually means a mean taken without keepdim=True, so it cannot broadcast against x."
    for what, x, eps in cases:
        weight = 1.0 + 0.5 * torch.randn(x.shape[-1], generator=g, dtype=x.dtype)
        before = x.clone()
        kwargs = {} if eps is None else {"eps": eps}
        out = call(rms_norm, "rms_norm", x, weight, hint=shape_hint, forbidden=[NO_LIBRARY_RMS_NORM], **kwargs)
        actual = expect_tensor(out, "rms_norm", tuple(x.shape))
        expect_unchanged(before, x, "rms_norm")
        if actual.dtype != x.dtype:
            raise AssertionError(f"`rms_norm` returned {actual.dtype} for {x.dtype} input ({what}): keep the input's dtype.")
        eps_value = 1e-6 if eps is None else eps
        expected = F.rms_norm(x, (x.shape[-1],), weight, eps_value)
        otherwise = (
            f"`rms_norm` is wrong on {what}. Steps: the mean of x² over the last dim (keepdim=True), "
            "x / sqrt(that + eps), then * weight."
        )
        if eps is None:
            otherwise += " The default eps is 1e-6."
        compare(actual, expected, _rms_mistakes(x, weight, eps_value), otherwise, atol=_RMS_ATOL, rtol=_RMS_RTOL)
    passed("rms_norm", len(cases))


# --------------------------------------------------------------------------- Exercise 4.3: SwiGLU

NO_LIBRARY_ACTIVATION = Forbidden(
    what="a library activation (F.silu, nn.SiLU, F.gelu, F.glu)",
    why="the exercise asks you to build SiLU from torch.sigmoid: silu(z) = z · sigmoid(z)",
    torch_names=("silu", "gelu", "glu", "mish", "hardswish"),
)


def _swiglu_mistakes(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> Mistakes:
    gate, up = x @ w_gate, x @ w_up  # (..., H) each
    return [
        (
            "You applied SiLU to the up projection instead of the gate: the GATE goes through SiLU, "
            "silu(x @ w_gate) * (x @ w_up).",
            (F.silu(up) * gate) @ w_down,
        ),
        (
            "You used sigmoid(z) instead of silu(z) = z · sigmoid(z) on the gate (that is the original GLU).",
            (torch.sigmoid(gate) * up) @ w_down,
        ),
        ("You used GELU on the gate (GEGLU): SwiGLU's gate uses SiLU, z · sigmoid(z).", (F.gelu(gate) * up) @ w_down),
        ("You used ReLU on the gate: SwiGLU's gate uses SiLU, z · sigmoid(z).", (torch.relu(gate) * up) @ w_down),
        (
            "The gate has no SiLU at all: (x @ w_gate) * (x @ w_up) is a bilinear layer. Apply "
            "silu(z) = z · sigmoid(z) to the gate.",
            (gate * up) @ w_down,
        ),
        (
            "The up projection is missing: SwiGLU multiplies the activated gate by a SECOND projection of x, "
            "silu(x @ w_gate) * (x @ w_up), before projecting down.",
            F.silu(gate) @ w_down,
        ),
        ("You added the two branches instead of multiplying them: silu(x @ w_gate) * (x @ w_up).", (F.silu(gate) + up) @ w_down),
        ("The down projection is missing: finish with (...) @ w_down to go back to C channels.", F.silu(gate) * up),
    ]


def check_swiglu_mlp(swiglu_mlp: Callable[..., torch.Tensor]) -> None:
    """Exercise 4.3: ``swiglu_mlp(x, w_gate, w_up, w_down)`` = (silu(x @ w_gate) * (x @ w_up)) @ w_down."""
    g = torch.Generator().manual_seed(44)
    cases = [  # (what, shape of x, hidden width H)
        ("x of shape (4, 6), hidden width 10", (4, 6), 10),
        ("x of shape (B, T, C) = (2, 5, 8), hidden width 12", (2, 5, 8), 12),
        ("a square case, C = H = 6", (3, 6), 6),
        ("a single position, (1, 3), hidden width 7", (1, 3), 7),
        ("x of shape (2, 9, 16), hidden width 40 (≈ 8C/3, LLaMA's ratio)", (2, 9, 16), 40),
        ("large inputs (values of ±50)", (3, 4), 5),
    ]
    hint = (
        "Shapes: x is (..., C), w_gate and w_up are (C, H), w_down is (H, C): x @ w_gate is (..., H), and "
        "(...) @ w_down is (..., C). A shape error means a matrix is used the wrong way round."
    )
    for what, shape, H in cases:
        C = shape[-1]
        scale = 50.0 if "large" in what else 1.0
        x = scale * torch.randn(shape, generator=g)
        w_gate, w_up = torch.randn(C, H, generator=g) / math.sqrt(C), torch.randn(C, H, generator=g) / math.sqrt(C)
        w_down = torch.randn(H, C, generator=g) / math.sqrt(H)
        before = [t.clone() for t in (x, w_gate, w_up, w_down)]
        out = call(swiglu_mlp, "swiglu_mlp", x, w_gate, w_up, w_down, hint=hint, forbidden=[NO_LIBRARY_ACTIVATION])
        if isinstance(out, torch.Tensor) and out.shape[:-1] == x.shape[:-1] and out.shape[-1] == H and H != C:
            raise AssertionError(
                f"`swiglu_mlp` returned shape {tuple(out.shape)}, the hidden width H = {H}: finish with "
                f"@ w_down to come back to C = {C} channels."
            )
        actual = expect_tensor(out, "swiglu_mlp", tuple(x.shape))
        for argument, old, new in zip(("x", "w_gate", "w_up", "w_down"), before, (x, w_gate, w_up, w_down)):
            expect_unchanged(old, new, "swiglu_mlp", argument)
        xd, gd, ud, dd = (t.double() for t in (x, w_gate, w_up, w_down))
        expected = (F.silu(xd @ gd) * (xd @ ud)) @ dd
        if not torch.isfinite(actual).all():
            raise AssertionError(
                f"`swiglu_mlp` returned inf or NaN on {what}: compute silu as z * torch.sigmoid(z) (sigmoid is "
                "stable for large |z|), not z / (1 + exp(-z)) with an exp that overflows."
            )
        compare(
            actual,
            expected,
            _swiglu_mistakes(xd, gd, ud, dd),
            f"`swiglu_mlp` is wrong on {what}: (silu(x @ w_gate) * (x @ w_up)) @ w_down, silu(z) = z · sigmoid(z).",
            atol=1e-4 * scale,
            rtol=1e-4,
        )
    passed("swiglu_mlp", len(cases))


# --------------------------------------------------------------------------- Exercise 4.4: counting a LLaMA-style GPT

LLAMA_PARTS = ("embeddings", "attention", "mlp", "norms", "head", "total")

NO_MODEL_TO_COUNT = Forbidden(
    what="a model built to count it (lal.model.GPT, nn.Linear, any nn.Module, or lal's counters)",
    why="the exercise asks for the count from the config alone, by arithmetic (a 7-billion-parameter "
    "model would not even fit in memory)",
    python_functions=(GPT, nn.Module.__init__, count_parameters, expected_parameters),
)


def llama_reference(config: GPTConfig, mlp_hidden: int) -> dict[str, int]:
    """The parameters of a LLaMA-style GPT by part, by arithmetic (tests compare it with real modules)."""
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    parts = {
        "embeddings": V * C,  # tokens only: rotary positions have no parameters
        "attention": L * 4 * C * C,  # q, k, v, o: C × C each, no biases
        "mlp": L * 3 * C * mlp_hidden,  # gate and up (C × H), down (H × C)
        "norms": (2 * L + 1) * C,  # RMSNorm: a gain, no shift
        "head": V * C,  # untied: its own V × C matrix
    }
    parts["total"] = sum(parts.values())
    return parts


def _llama_hints(config: GPTConfig, mlp_hidden: int, part: str, got: int, expected: int) -> str:
    V, C, L, T = config.vocab_size, config.n_embd, config.n_layer, config.block_size
    known = {
        "embeddings": [
            (expected + T * C, "There are no position embeddings: rotary embeddings (RoPE) rotate q and k by "
             "their position and have no parameters, so block_size adds nothing."),
            (0, "The token embedding is a V × C table."),
        ],
        "attention": [
            (expected + L * 4 * C, "No biases anywhere in this model: q, k, v and o are C × C matrices only."),
            (expected * 3 // 4, "Four C × C matrices per block: q, k, v AND the output projection o."),
            (expected // L, f"Multiply by the number of blocks, n_layer = {L}."),
        ],
        "mlp": [
            (L * 2 * C * mlp_hidden, "SwiGLU has THREE matrices: gate and up (C × hidden each) and down (hidden × C)."),
            (L * 3 * C * 4 * C, f"The hidden width is the `mlp_hidden` argument ({mlp_hidden}), not 4·C."),
            (L * 2 * C * 4 * C, f"SwiGLU has three matrices, and its hidden width is `mlp_hidden` ({mlp_hidden}), not 4·C."),
            (expected + L * (2 * mlp_hidden + C), "No biases anywhere in this model: the three MLP matrices only."),
            (expected // L, f"Multiply by the number of blocks, n_layer = {L}."),
        ],
        "norms": [
            (2 * expected, "RMSNorm has a gain but no shift: C parameters per norm, not 2C."),
            (2 * L * C, "Don't forget the final norm before the head: 2 per block, plus one."),
            (2 * (2 * L) * C, "RMSNorm has a gain but no shift (C per norm), and there is a final norm too."),
        ],
        "head": [(0, "The head is NOT tied here: it is its own C → V matrix, V × C parameters.")],
    }
    for wrong, hint in known.get(part, []):
        if got == wrong and wrong != expected:
            return " " + hint
    return ""


def _describe_config(config: GPTConfig, mlp_hidden: int) -> str:
    return (f"vocab_size={config.vocab_size}, n_layer={config.n_layer}, n_head={config.n_head}, "
            f"n_embd={config.n_embd}, block_size={config.block_size}, mlp_hidden={mlp_hidden}")


def check_count_llama_parameters(count_llama_parameters: Callable[[GPTConfig, int], Mapping[str, int]]) -> None:
    """Exercise 4.4: ``count_llama_parameters(config, mlp_hidden)``: the parameters of a LLaMA-style GPT, by part."""
    cases = [
        (GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=4), 10),
        (GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=240), 640),
        (GPTConfig(vocab_size=1000, block_size=64, n_layer=3, n_head=4, n_embd=64, bias=False), 171),
        (GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096, bias=False), 11008),  # LLaMA-7B
    ]
    for config, mlp_hidden in cases:
        out = call(count_llama_parameters, "count_llama_parameters", config, mlp_hidden, forbidden=[NO_MODEL_TO_COUNT])
        if not isinstance(out, Mapping):
            raise AssertionError(f"`count_llama_parameters` should return a dict with keys {LLAMA_PARTS}, got {type(out).__name__}.")
        missing = [part for part in LLAMA_PARTS if part not in out]
        if missing:
            raise AssertionError(f"`count_llama_parameters` returned no {missing}: return a dict with keys {LLAMA_PARTS}.")
        expected = llama_reference(config, mlp_hidden)
        for part in LLAMA_PARTS:
            got = out[part]
            if isinstance(got, bool) or not isinstance(got, numbers.Integral):
                raise AssertionError(f"`count_llama_parameters` returned {got!r} for {part!r}: counts are ints.")
            got = int(got)
            if got != expected[part]:
                hint = _llama_hints(config, mlp_hidden, part, got, expected[part])
                if part == "total" and not hint:
                    summed = sum(int(out[p]) for p in LLAMA_PARTS if p != "total")
                    hint = " The total must be the sum of the five parts." if got != summed else ""
                raise AssertionError(
                    f"`count_llama_parameters` counts {got:,} for {part!r} with {_describe_config(config, mlp_hidden)}; "
                    f"the model has {expected[part]:,} (off by {got - expected[part]:+,}).{hint}"
                )
    passed("count_llama_parameters", len(cases))
