"""Checks for chapter 8's exercises: training memory, MFU from a throughput, GPT-2's weights in lal.

Each check compares the learner's function with a reference computed here from ``lal``'s model on
configurations and numbers a learner would not hard-code (other dtypes, no biases, a context
shorter than the model's, GPUs of other peaks). When an answer is wrong, the check computes what
the classic mistakes give (a tied head counted twice, forward-only FLOPs, one Adam moment, a
Conv1D weight left untransposed, …) and names the one the answer matches.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lal.checks.common import Forbidden, call, expect_close, first_mistake, passed
from lal.model import GPT, GPTConfig, expected_parameters, preset_config
from lal.plan import estimate_memory
from lal.pretrained import convert_gpt2_state_dict, gpt2_state_dict, load_gpt2, load_gpt2_folder

MEMORY_PARTS = ("weights", "gradients", "optimizer", "total")

_NO_MODEL = Forbidden(
    what="lal's GPT (building the model)",
    why="the point is to know the answer before a single byte is allocated (for the 'lal' preset that "
    "would be 124M parameters), from the config alone",
    python_functions=(GPT, GPT.flops_per_token),
)

_NO_PLAN = Forbidden(
    what="lal.plan.estimate_memory",
    why="that is the plan's own memory estimate, the function this exercise asks you to write",
    python_functions=(estimate_memory,),
)


def _describe(config: GPTConfig) -> str:
    return (f"{config.n_layer} layers × width {config.n_embd}, context {config.block_size}, vocabulary "
            f"{config.vocab_size:,}" + ("" if config.bias else ", no biases"))


def _as_number(value: Any, name: str, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise AssertionError(f"`{name}` should give {what} as a number, got {type(value).__name__}.")
    return float(value)


def _bytes_per_number(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- Exercise 8.1: memory


def _reference_memory(config: GPTConfig, dtype: torch.dtype) -> dict[str, int]:
    per_tensor = expected_parameters(config)["total"] * _bytes_per_number(dtype)
    parts = {"weights": per_tensor, "gradients": per_tensor, "optimizer": 2 * per_tensor}
    parts["total"] = sum(parts.values())
    return parts


def _memory_hint(config: GPTConfig, dtype: torch.dtype, part: str, got: float, want: int) -> str:
    n = expected_parameters(config)["total"]
    size = _bytes_per_number(dtype)
    head = config.vocab_size * config.n_embd
    ratio = got / want if want else math.inf
    if part == "optimizer" and math.isclose(ratio, 0.5):
        return ("AdamW keeps two numbers per parameter, the running mean of the gradients (exp_avg) and of "
                "their squares (exp_avg_sq): twice the weights.")
    if part == "gradients" and got == 0:
        return "backward() stores one gradient per parameter, as large as the weights."
    if size != 4 and got == want // size * 4:
        return (f"you counted 4 bytes per number, but {dtype} takes {size}: "
                "torch.empty((), dtype=dtype).element_size() or torch.finfo(dtype).bits // 8.")
    if any(math.isclose(got, want / scale, rel_tol=1e-3) for scale in (2**20, 1e6, 2**30, 1e9)):
        return "return bytes, not megabytes or gigabytes (the table formats them)."
    per = want // n if n else 1
    if got == (n + head) * per:
        return ("the output head is tied to the token embedding (one tensor, stored once): count "
                "vocab_size × n_embd once.")
    if got == (n - config.block_size * config.n_embd) * per:
        return "the position embeddings (block_size × n_embd) are parameters too."
    if part == "total":
        return "the total is weights + gradients + optimizer state."
    return f"each part is (number of parameters) × (bytes per number of {dtype}) × (copies)."


def check_training_memory(training_memory: Callable[[GPTConfig, torch.dtype], Mapping[str, int]]) -> None:
    """Exercise 8.1: ``training_memory(config, dtype)`` in bytes: weights, gradients, AdamW state, total."""
    cases = [
        (preset_config("char-tiny", vocab_size=65), torch.float32),
        (preset_config("lal", vocab_size=50257), torch.bfloat16),
        (GPTConfig(vocab_size=1000, block_size=48, n_layer=3, n_head=3, n_embd=24, bias=False), torch.float16),
        (preset_config("bpe-small", vocab_size=4096), torch.float64),
    ]
    for config, dtype in cases:
        result = call(training_memory, "training_memory", config, dtype, forbidden=[_NO_MODEL, _NO_PLAN])
        if not isinstance(result, Mapping) or any(part not in result for part in MEMORY_PARTS):
            raise AssertionError(f"`training_memory` should return a dict with the keys {list(MEMORY_PARTS)}, "
                                 f"got {result!r:.80}.")
        want = _reference_memory(config, dtype)
        for part in MEMORY_PARTS:
            got = _as_number(result[part], "training_memory", f"'{part}'")
            if got != want[part]:
                raise AssertionError(
                    f"For {_describe(config)} in {dtype}, '{part}' is {got:,.0f} bytes but training needs "
                    f"{want[part]:,} ({got / want[part]:.3g}×): {_memory_hint(config, dtype, part, got, want[part])}"
                )
    passed("training_memory", len(cases))


# --------------------------------------------------------------------------- Exercise 8.2: MFU


def _flops_per_token(config: GPTConfig, context: int, *, matmul_params: int | None = None,
                     per_param: int = 6, attention: int = 12, layers: bool = True) -> float:
    if matmul_params is None:
        matmul_params = expected_parameters(config)["total"] - config.block_size * config.n_embd
    return per_param * matmul_params + attention * (config.n_layer if layers else 1) * config.n_embd * context


def _mfu_mistakes(tokens_per_s: float, config: GPTConfig, peak: float, context: int) -> list[tuple[str, float]]:
    total = expected_parameters(config)["total"]
    matmul = total - config.block_size * config.n_embd
    head = config.vocab_size * config.n_embd
    right = tokens_per_s * _flops_per_token(config, context) / peak

    def mfu(**options: Any) -> float:
        return tokens_per_s * _flops_per_token(config, **{"context": context, **options}) / peak

    return [
        ("you returned a percentage; return the fraction (0.42, not 42).", 100 * right),
        ("you counted the forward pass only (2 FLOPs per parameter): training also runs backward, which "
         "costs twice the forward, so 6 per parameter (and 12·L·C·T for attention).",
         mfu(per_param=2, attention=4)),
        ("the attention term 12·n_layer·n_embd·T is missing: the scores q·kᵀ and the weighted sum of v "
         "are matmuls without parameters.", mfu(attention=0)),
        ("the position table takes part in no matmul (it is looked up, then added): leave block_size × "
         "n_embd out of N.", mfu(matmul_params=total)),
        ("the tied head is the token embedding: it is in N once.", mfu(matmul_params=matmul + head)),
        ("the attention term has one 12·C·T per layer: multiply by n_layer.", mfu(layers=False)),
        ("T in the attention term is the context the model was run with (context_length), not "
         "config.block_size.", mfu(context=config.block_size)),
    ]


def check_mfu(mfu: Callable[..., float]) -> None:
    """Exercise 8.2: ``mfu(tokens_per_second, config, peak_flops, context_length=None)`` as a fraction."""
    cases = [  # tokens/s, config, peak FLOP/s, context (None: the model's)
        (48_500.0, preset_config("char-tiny", vocab_size=65), 0.2e12, None),
        (180_000.0, preset_config("lal", vocab_size=50257), 989e12, None),  # an H100's dense bf16
        (1.3e6, preset_config("char-medium", vocab_size=65), 312e12, 256),  # an A100's bf16
        (2.1e5, GPTConfig(vocab_size=4096, block_size=512, n_layer=5, n_head=5, n_embd=320), 65e12, 96),  # a T4's fp16
    ]
    for tokens_per_s, config, peak, context in cases:
        args = (tokens_per_s, config, peak) if context is None else (tokens_per_s, config, peak, context)
        got = _as_number(call(mfu, "mfu", *args, forbidden=[_NO_MODEL]), "mfu", "the MFU")
        T = context or config.block_size
        want = tokens_per_s * _flops_per_token(config, T) / peak
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        hint = (first_mistake(got, _mfu_mistakes(tokens_per_s, config, peak, T),
                              lambda answer, value: math.isclose(answer, value, rel_tol=1e-6))
                or "FLOPs per token are 6·N + 12·n_layer·n_embd·T, N the parameters used in matmuls.")
        raise AssertionError(
            f"For {_describe(config)} at {tokens_per_s:,.0f} tokens/s on a {peak / 1e12:g} TFLOP/s peak"
            f"{'' if context is None else f' with context {context}'}, the MFU is {want:.4f} but you "
            f"returned {got:.4g}: {hint}"
        )
    passed("mfu", len(cases))


# --------------------------------------------------------------------------- Exercise 8.3: GPT-2's layout

_NO_CONVERTER = Forbidden(
    what="lal.pretrained's loader",
    why="the exercise asks you to write the conversion it does",
    python_functions=(convert_gpt2_state_dict, load_gpt2_folder, load_gpt2),
)


def _load_hint(error: RuntimeError) -> str:
    text = str(error)
    shape = re.search(r"size mismatch for ([\w.]+): copying a param with shape torch.Size\(\[(\d+), (\d+)\]\)"
                      r".*?current model is torch.Size\(\[(\d+), (\d+)\]\)", text)
    if shape:
        name, a, b, c, d = shape.groups()
        if (a, b) == (d, c):
            return (f"{name} arrived as ({a}, {b}) but nn.Linear stores (out_features, in_features) = ({c}, {d}): "
                    "GPT-2's Conv1D layers store the transpose. Transpose c_attn, c_proj and c_fc weights (.t()), "
                    "and only those.")
        return f"{name} has shape ({a}, {b}) but lal's model expects ({c}, {d})."
    if "lm_head.weight" in text and "Missing" in text:
        return ("lal's GPT has an lm_head.weight: GPT-2 ties it to the token embedding, so give it the same "
                "tensor as transformer.wte.weight.")
    if re.search(r"Unexpected key\(s\).*\bh\.\d+\.attn\.bias\b", text):
        return ("h.N.attn.bias are GPT-2's causal-mask buffers, not weights (lal builds its mask on the fly): "
                "drop them.")
    if "Missing" in text and "transformer." in text:
        return "lal's names start with 'transformer.' (transformer.h.0.attn.c_attn.weight, transformer.wte.weight)."
    return "compare your names and shapes with GPT(config).state_dict()."


def check_gpt2_to_lal(gpt2_to_lal: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]) -> None:
    """Exercise 8.3: ``gpt2_to_lal(openai_state)`` is a state dict that makes lal's GPT compute GPT-2's logits."""
    generator = torch.Generator().manual_seed(83)
    configs = [
        GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=3, n_embd=36),
        GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=20),
    ]
    for config in configs:
        with torch.random.fork_rng():  # the learner's global random state is left as it was
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            original = GPT(config).eval()
        with torch.no_grad():  # biases and gains start at 0 and 1: make every one count
            for name, param in original.named_parameters():
                if param.dim() == 1:
                    param.normal_(0.0, 0.1, generator=generator).add_(1.0 if ".ln_" in name and "weight" in name else 0)
        openai_state = gpt2_state_dict(original)
        before = {name: tensor.clone() for name, tensor in openai_state.items()}
        converted = call(gpt2_to_lal, "gpt2_to_lal", openai_state, forbidden=[_NO_CONVERTER])
        if not isinstance(converted, Mapping):
            raise AssertionError(f"`gpt2_to_lal` should return a dict of tensors, got {type(converted).__name__}.")
        if set(openai_state) != set(before) or any(not torch.equal(openai_state[k], before[k]) for k in before):
            raise AssertionError("`gpt2_to_lal` changed the dict it was given (a key removed or a tensor transposed "
                                 "in place): build a new dict; the caller may still need the original.")
        model = GPT(config).eval()
        try:
            model.load_state_dict(dict(converted), strict=True)
        except RuntimeError as error:
            raise AssertionError(f"lal's GPT cannot load what `gpt2_to_lal` returned: {_load_hint(error)}") from None
        ids = torch.randint(0, config.vocab_size, (2, config.block_size), generator=generator)
        with torch.no_grad():
            expect_close(model(ids)[0], original(ids)[0],
                         f"The converted weights load, but the logits differ ({_describe(config)}): a square "
                         "matrix (attn.c_proj is n_embd × n_embd) loads untransposed without complaint. Transpose "
                         "every Conv1D weight: attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj.",
                         atol=1e-5, rtol=1e-4)
    passed("gpt2_to_lal", len(configs))
