"""Checks for chapter 4's exercises: GELU, LayerNorm, the pre-LN block and the parameter count.

Each check compares the learner's function with PyTorch or ``lal`` on ordinary and edge cases.
When the answer is wrong, it also computes the answers that the classic mistakes give (unbiased
variance, eps outside the square root, post-LN order, a tied head counted twice, …) and names
the one the learner's output matches, so the message says what to fix, not only that something
is off. All randomness comes from local generators: a check never moves the learner's global RNG.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lal.checks.common import Mistakes, call, compare, expect_tensor, expect_unchanged, passed
from lal.model import GPT, Block, GPTConfig, count_parameters, preset_config

PARTS = ("embeddings", "attention", "mlp", "norms", "total")












# --------------------------------------------------------------------------- Exercise 4.1: GELU

_GELU_ATOL, _GELU_RTOL = 2e-6, 2e-5


def _gelu_mistakes(x: torch.Tensor) -> Mistakes:
    c = math.sqrt(2.0 / math.pi)
    return [
        (
            "You computed the exact GELU, x·Φ(x) with erf. This exercise asks for the tanh approximation "
            "that GPT-2 uses: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).",
            F.gelu(x),
        ),
        (
            "You used the sigmoid approximation x·σ(1.702·x). Use the tanh formula from the task.",
            x * torch.sigmoid(1.702 * x),
        ),
        ("Your output equals ReLU: GELU is smooth and slightly negative for x < 0.", torch.relu(x)),
        (
            "The cubic term is missing: the tanh's argument is √(2/π)·(x + 0.044715·x³).",
            0.5 * x * (1 + torch.tanh(c * x)),
        ),
        (
            "The constant should be √(2/π) ≈ 0.798, not 2/π ≈ 0.637.",
            0.5 * x * (1 + torch.tanh(2.0 / math.pi * (x + 0.044715 * x**3))),
        ),
        (
            "Your result is twice the reference: the formula starts with 0.5·x.",
            x * (1 + torch.tanh(c * (x + 0.044715 * x**3))),
        ),
    ]


def check_gelu(gelu: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 4.1: ``gelu(x)`` must equal ``F.gelu(x, approximate="tanh")`` elementwise."""
    generator = torch.Generator().manual_seed(41)
    cases = [
        ("values from -6 to 6", torch.linspace(-6.0, 6.0, 241)),
        ("a (2, 3, 7) batch", 3 * torch.randn(2, 3, 7, generator=generator)),
        ("float64 values", torch.randn(5, 4, generator=generator, dtype=torch.float64)),
        ("large inputs ±10, ±30, ±100", torch.tensor([-100.0, -30.0, -10.0, 0.0, 10.0, 30.0, 100.0])),
    ]
    for what, x in cases:
        before = x.clone()
        actual = expect_tensor(call(gelu, "gelu", x), "gelu", tuple(x.shape))
        expect_unchanged(before, x, "gelu")
        if actual.dtype != x.dtype:
            raise AssertionError(
                f"`gelu` returned {actual.dtype} for {x.dtype} input ({what}): keep the input's dtype."
            )
        expected = F.gelu(x, approximate="tanh")
        otherwise = f"`gelu` is wrong on {what}."
        if what.startswith("large"):
            otherwise += (
                " Large inputs should give ≈ x (positive) or ≈ 0 (negative). If you wrote tanh with exp(), "
                "exp overflows to inf and inf/inf is NaN: use torch.tanh."
            )
        compare(actual, expected, _gelu_mistakes(x), otherwise, atol=_GELU_ATOL, rtol=_GELU_RTOL)
    passed("gelu", len(cases))


# --------------------------------------------------------------------------- Exercise 4.2: LayerNorm

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
    """Exercise 4.2: ``layer_norm(x, weight, bias, eps)`` must equal ``F.layer_norm`` over the last dim."""
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
        out = call(layer_norm, "layer_norm", x, weight, bias, hint=shape_hint, **kwargs)
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


# --------------------------------------------------------------------------- Exercise 4.3: the block

_BLOCK_ATOL, _BLOCK_RTOL = 1e-5, 1e-4


def _random_block(seed: int, n_embd: int = 12, n_head: int = 2) -> Block:
    """A Block with random weights and *different*, non-trivial LayerNorm gains and shifts."""
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=n_head, n_embd=n_embd)
    with torch.random.fork_rng(devices=[]):  # leave the learner's global RNG where it was
        torch.manual_seed(seed)
        block = Block(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in (block.ln_1, block.ln_2):
            norm.weight.copy_(1.0 + 0.5 * torch.randn(n_embd, generator=g))
            norm.bias.copy_(0.5 * torch.randn(n_embd, generator=g))
    return block


def _block_mistakes(x: torch.Tensor, ln_1, attn, ln_2, mlp) -> Mistakes:
    h = x + attn(ln_1(x))
    post = ln_1(x + attn(x))
    stream = ln_1(x)
    stream = ln_2(stream + attn(stream))
    mlp_first = x + mlp(ln_2(x))
    swapped = x + attn(ln_2(x))
    return [
        (
            "This is post-LN (the original Transformer): LayerNorm applied to x + sublayer(x). GPT-2 is "
            "pre-LN: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)); the norms sit inside the branches and "
            "the stream itself is never normalised.",
            ln_2(post + mlp(post)),
        ),
        (
            "The attention branch has no residual: write x = x + attn(ln_1(x)), not x = attn(ln_1(x)).",
            attn(ln_1(x)) + mlp(ln_2(attn(ln_1(x)))),
        ),
        ("The MLP branch has no residual: write x = x + mlp(ln_2(x)), not x = mlp(ln_2(x)).", mlp(ln_2(h))),
        (
            "Neither branch has a residual: each sublayer's output must be added to its input (x = x + ...).",
            mlp(ln_2(attn(ln_1(x)))),
        ),
        (
            "One residual around the whole block is not enough: each branch adds to the stream, "
            "x = x + attn(ln_1(x)) and then x = x + mlp(ln_2(x)).",
            x + mlp(ln_2(attn(ln_1(x)))),
        ),
        ("The norms are swapped: ln_1 goes before attention, ln_2 before the MLP.", swapped + mlp(ln_1(swapped))),
        ("Both branches use ln_1: the MLP branch has its own norm, ln_2.", h + mlp(ln_1(h))),
        (
            "The MLP read the block's input x instead of the stream after attention (a 'parallel' block). "
            "In GPT-2 the MLP sees x + attn(ln_1(x)).",
            x + attn(ln_1(x)) + mlp(ln_2(x)),
        ),
        (
            "You normalised the stream itself (x = ln_1(x), then x = x + attn(x)): the residual must carry "
            "the un-normalised x. Normalise only the branch's input: x = x + attn(ln_1(x)).",
            stream + mlp(stream),
        ),
        (
            "The MLP ran before attention: attention comes first, x = x + attn(ln_1(x)), then the MLP.",
            mlp_first + attn(ln_1(mlp_first)),
        ),
    ]


def check_block_forward(block_forward: Callable[..., torch.Tensor]) -> None:
    """Exercise 4.3: ``block_forward(x, ln_1, attn, ln_2, mlp)`` must equal ``lal.model.Block``."""
    cases = [  # (what, shape of x, seed)
        ("x of shape (2, 5, 12)", (2, 5, 12), 0),
        ("one position, (1, 1, 12)", (1, 1, 12), 1),
        ("x of shape (3, 16, 12)", (3, 16, 12), 2),
    ]
    for what, shape, seed in cases:
        block = _random_block(seed)

        def attn(h: torch.Tensor, block: Block = block) -> torch.Tensor:
            return block.attn(h)[0]  # lal's attention also returns weights; the exercise gets the output only

        x = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed))
        before = x.clone()
        with torch.no_grad():
            out = call(block_forward, "block_forward", x, block.ln_1, attn, block.ln_2, block.mlp)
            actual = expect_tensor(out, "block_forward", shape)
            expect_unchanged(before, x, "block_forward")
            expected, _ = block(x)
            mistakes = _block_mistakes(x, block.ln_1, attn, block.ln_2, block.mlp)
        compare(
            actual,
            expected,
            mistakes,
            f"`block_forward` is wrong for {what}. A GPT-2 block is two lines: "
            "x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)).",
            atol=_BLOCK_ATOL,
            rtol=_BLOCK_RTOL,
        )
    passed("block_forward", len(cases))


# --------------------------------------------------------------------------- Exercise 4.4: counting


def _reference_counts(config: GPTConfig) -> dict[str, int]:
    """Count a real model's parameters; on the meta device nothing is allocated, even for `lal`."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = GPT(config)
    return count_parameters(model)


def _as_int(value: Any, part: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise AssertionError(f"`count_gpt_parameters(...)['{part}']` should be an int, got {value!r}.")
    return int(value)


def _count_hints(config: GPTConfig, part: str, difference: int) -> str | None:
    """Why a part is off by ``difference`` (yours − reference), for the classic counting mistakes."""
    V, T, C, L, b = config.vocab_size, config.block_size, config.n_embd, config.n_layer, int(config.bias)
    ln = C + b * C
    no_bias = "this config has bias=False: its Linear layers have no biases."
    hints: dict[str, dict[int, str]] = {
        "embeddings": {
            V * C: "you counted the output head too. It IS the token embedding (weight tying: "
            "lm_head.weight is transformer.wte.weight), so its V·C parameters count once.",
            -T * C: "the position embeddings are missing: block_size × n_embd learned vectors (wpe).",
            -V * C: "the token embedding table is missing: vocab_size × n_embd (wte).",
        },
        "attention": {-L * (C * C + b * C): "the output projection c_proj (C × C, plus its bias) is missing."},
        "mlp": {-L * (6 * C * C + 3 * b * C): "the MLP widens to 4·n_embd: c_fc is C × 4C and c_proj is 4C × C."},
        "norms": {
            -ln: "the final LayerNorm (ln_f, after the last block) is missing.",
            -2 * L * ln: "count two LayerNorms per block (ln_1 and ln_2) and the final ln_f.",
            -L * ln: "each block has two LayerNorms, ln_1 and ln_2.",
        },
        "total": {
            V * C: "the total counts the tied output head. It shares the token embedding's tensor, so "
            "it adds no parameters.",
        },
    }
    if config.bias:
        hints["attention"] |= {
            -L * 4 * C: "the attention biases are missing: 3·C for c_attn (q, k, v) and C for c_proj, per layer.",
            -L * 3 * C: "the c_attn biases (3·C per layer: one for each of q, k, v) are missing.",
            -L * C: "the c_proj bias (C per layer) is missing.",
        }
        hints["mlp"][-L * 5 * C] = "the MLP biases are missing: 4·C for c_fc and C for c_proj, per layer."
        hints["norms"][-(2 * L + 1) * C] = "a LayerNorm has a gain AND a shift: 2·C parameters when bias=True."
    else:
        hints["attention"][L * 4 * C] = no_bias
        hints["mlp"][L * 5 * C] = no_bias
        hints["norms"][(2 * L + 1) * C] = "with bias=False a LayerNorm has a gain but no shift: C parameters each."
    return hints[part].get(difference)


def _describe(config: GPTConfig) -> str:
    return (
        f"GPTConfig(vocab_size={config.vocab_size}, block_size={config.block_size}, n_layer={config.n_layer}, "
        f"n_head={config.n_head}, n_embd={config.n_embd}, bias={config.bias})"
    )


def check_count_gpt_parameters(count_gpt_parameters: Callable[[GPTConfig], Mapping[str, int]]) -> None:
    """Exercise 4.4: ``count_gpt_parameters(config)`` must match ``lal.model.count_parameters``."""
    configs = [
        GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=16),
        preset_config("char-tiny", vocab_size=65),
        GPTConfig(vocab_size=1000, block_size=7, n_layer=3, n_head=3, n_embd=24, bias=False),
        GPTConfig(vocab_size=300, block_size=64, n_layer=5, n_head=1, n_embd=40),
        preset_config("lal", vocab_size=50257),
    ]
    for config in configs:
        result = call(count_gpt_parameters, "count_gpt_parameters", config)
        if not isinstance(result, Mapping):
            raise AssertionError(
                f"`count_gpt_parameters` should return a dict with keys {list(PARTS)}, got {type(result).__name__}."
            )
        missing = [part for part in PARTS if part not in result]
        if missing:
            raise AssertionError(
                f"The dict from `count_gpt_parameters` lacks the keys {missing}; it needs {list(PARTS)}."
            )
        got = {part: _as_int(result[part], part) for part in PARTS}
        want = _reference_counts(config)
        for part in PARTS:
            if got[part] == want[part]:
                continue
            difference = got[part] - want[part]
            why = _count_hints(config, part, difference)
            if why is None and part == "total" and got["total"] != sum(got[p] for p in PARTS[:-1]):
                why = "the total should be the sum of the four parts."
            why = why or "compare with the formulas, layer by layer."
            raise AssertionError(
                f"For {_describe(config)}, '{part}' is {got[part]:,} but the model has {want[part]:,} "
                f"({difference:+,}): {why}"
            )
    passed("count_gpt_parameters", len(configs))
