"""Checks for chapter 8's exercises: training memory per GPU, the MFU of generation, gradient accumulation.

Each check compares the learner's function with a reference computed here from ``lal``'s model on
configurations and numbers a learner would not hard-code (other dtypes and optimisers, state
sharded over GPUs, prompts of other lengths, batches split unevenly). When an answer is wrong, the
check computes what the classic mistakes give (one Adam moment, weights sharded too, training FLOPs
for generation, a cache counted full, micro-batch losses summed, gradients reset between
micro-batches, …) and names the one the answer matches.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lal.checks.common import Forbidden, call, first_mistake, passed
from lal.model import GPT, GPTConfig, expected_parameters, preset_config
from lal.plan import estimate_memory
from lal.train import forward_backward

MEMORY_PARTS = ("weights", "gradients", "optimizer", "total")

#: Numbers of optimiser state per parameter: AdamW's two moments, SGD's momentum buffer, plain SGD's none.
OPTIMIZER_STATES = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}

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
_NO_ACCUMULATION = Forbidden(
    what="lal.train.forward_backward",
    why="that is lal's own gradient accumulation, the loop this exercise asks you to write",
    python_functions=(forward_backward,),
)


def _describe(config: GPTConfig) -> str:
    return (f"{config.n_layer} layers × width {config.n_embd}, context {config.block_size}, vocabulary "
            f"{config.vocab_size:,}" + ("" if config.bias else ", no biases"))


def _as_number(value: Any, name: str, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise AssertionError(f"`{name}` should give {what} as a finite number, got {value!r:.40}.")
    return float(value)


def _bytes_per_number(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- Exercise 8.1: memory


def _memory(config: GPTConfig, dtype: torch.dtype, optimizer: str, shards: int, *, states: int | None = None,
            shard_all: bool = False, shard_state: bool = True, n_params: int | None = None,
            size: int | None = None) -> dict[str, int]:
    """The bytes one GPU holds; the keyword arguments reproduce the classic mistakes."""
    n = expected_parameters(config)["total"] if n_params is None else n_params
    size = _bytes_per_number(dtype) if size is None else size
    states = OPTIMIZER_STATES[optimizer] if states is None else states
    per_gpu = math.ceil(n / shards) if shard_state else n
    weights = (math.ceil(n / shards) if shard_all else n) * size
    parts = {"weights": weights, "gradients": weights, "optimizer": states * per_gpu * size}
    parts["total"] = sum(parts.values())
    return parts


def _memory_mistakes(config: GPTConfig, dtype: torch.dtype, optimizer: str, shards: int) -> list[tuple[str, dict]]:
    n = expected_parameters(config)["total"]
    size = _bytes_per_number(dtype)
    states = OPTIMIZER_STATES[optimizer]
    right = _memory(config, dtype, optimizer, shards)
    mistakes = [
        ("the optimiser state is sharded, not the weights or gradients: with ZeRO stage 1 every GPU still holds "
         "all the weights and all their gradients, and only 1/shards of the optimiser's state.",
         _memory(config, dtype, optimizer, shards, shard_all=True)),
        ("each of the `shards` GPUs keeps the state of only its share of the parameters: divide the optimiser "
         "state by shards (rounding up).", _memory(config, dtype, optimizer, shards, shard_state=False)),
        (f"you counted 4 bytes per number, but {dtype} takes {size}: torch.empty((), dtype=dtype).element_size().",
         _memory(config, dtype, optimizer, shards, size=4)),
        ("the output head is tied to the token embedding (one tensor, stored once): count vocab_size × n_embd "
         "once.", _memory(config, dtype, optimizer, shards, n_params=n + config.vocab_size * config.n_embd)),
        ("the position embeddings (block_size × n_embd) are parameters too.",
         _memory(config, dtype, optimizer, shards, n_params=n - config.block_size * config.n_embd)),
        ("return bytes, not megabytes or gigabytes (the table formats them).",
         {part: value / 2**20 for part, value in right.items()}),
    ]
    if optimizer == "adamw":
        mistakes.insert(0, ("AdamW keeps two numbers per parameter, the running mean of the gradients (exp_avg) "
                            "and of their squares (exp_avg_sq).",
                            _memory(config, dtype, optimizer, shards, states=1)))
    elif optimizer == "sgd-momentum":
        mistakes.insert(0, ("SGD with momentum keeps one number per parameter (its momentum_buffer), not AdamW's "
                            "two: look at optimizer.state after one step.",
                            _memory(config, dtype, optimizer, shards, states=2)))
    else:
        mistakes.insert(0, ("plain SGD (momentum=0) keeps no state at all: the update is −lr × gradient, "
                            "computed from nothing but the gradient.",
                            _memory(config, dtype, optimizer, shards, states=1)))
    mistakes.append(("backward() stores one gradient per parameter, as large as the weights.",
                     {**right, "gradients": 0, "total": right["total"] - right["gradients"]}))
    return mistakes


def _same_memory(got: Mapping[str, float], want: Mapping[str, float], slack: float) -> bool:
    return all(abs(got[part] - want[part]) <= slack for part in MEMORY_PARTS)


def check_training_memory(training_memory: Callable[..., Mapping[str, int]]) -> None:
    """Exercise 8.1: ``training_memory(config, dtype, optimizer, shards)``: bytes one GPU holds before activations."""
    cases = [  # config, dtype, optimiser, GPUs sharing the optimiser state
        (preset_config("char-tiny", vocab_size=65), torch.float32, "adamw", 1),
        (preset_config("lal", vocab_size=50257), torch.bfloat16, "sgd-momentum", 1),
        (preset_config("char-medium", vocab_size=65), torch.float32, "sgd", 1),
        (preset_config("lal", vocab_size=50257), torch.float32, "adamw", 8),
        (GPTConfig(vocab_size=1000, block_size=48, n_layer=3, n_head=3, n_embd=24, bias=False), torch.float16,
         "sgd-momentum", 7),  # a parameter count 7 does not divide
    ]
    for config, dtype, optimizer, shards in cases:
        result = call(training_memory, "training_memory", config, dtype, optimizer, shards,
                      forbidden=[_NO_MODEL, _NO_PLAN])
        if not isinstance(result, Mapping) or any(part not in result for part in MEMORY_PARTS):
            raise AssertionError(f"`training_memory` should return a dict with the keys {list(MEMORY_PARTS)}, "
                                 f"got {result!r:.80}.")
        got = {part: _as_number(result[part], "training_memory", f"'{part}'") for part in MEMORY_PARTS}
        want = _memory(config, dtype, optimizer, shards)
        slack = OPTIMIZER_STATES[optimizer] * _bytes_per_number(dtype)  # ⌈N / shards⌉ or N / shards: both fine
        if _same_memory(got, want, slack):
            continue
        part = next(part for part in MEMORY_PARTS if abs(got[part] - want[part]) > slack)
        hint = (first_mistake(got, _memory_mistakes(config, dtype, optimizer, shards),
                              lambda answer, value: _same_memory(answer, value, slack))
                or "weights and gradients are (parameters) × (bytes per number); the optimiser state is "
                    "(numbers per parameter) × that, divided by shards; total is their sum.")
        setting = f"{optimizer} with its state over {shards} GPU{'s' if shards > 1 else ''}"
        raise AssertionError(
            f"For {_describe(config)} in {dtype}, {setting}: '{part}' is {got[part]:,.0f} bytes but one GPU holds "
            f"{want[part]:,}: {hint}")
    passed("training_memory", len(cases))


# --------------------------------------------------------------------------- Exercise 8.2: MFU of generation


def _generation_flops(config: GPTConfig, prompt_length: int, new_tokens: int, *, per_param: int = 2,
                      attention: int = 4, offset: int = 1, matmul_params: int | None = None,
                      full_context: bool = False, layers: bool = True) -> float:
    """Mean FLOPs per generated token with a KV cache; the keywords reproduce the classic mistakes."""
    if matmul_params is None:
        matmul_params = expected_parameters(config)["total"] - config.block_size * config.n_embd
    positions = range(prompt_length, prompt_length + new_tokens)
    keys = [config.block_size if full_context else t + offset for t in positions]  # positions each new token sees
    mean_keys = sum(keys) / new_tokens
    return per_param * matmul_params + attention * (config.n_layer if layers else 1) * config.n_embd * mean_keys


def _generation_mistakes(tokens_per_s: float, config: GPTConfig, peak: float, prompt: int,
                         new: int) -> list[tuple[str, float]]:
    total = expected_parameters(config)["total"]
    right = tokens_per_s * _generation_flops(config, prompt, new) / peak

    def mfu(**options: Any) -> float:
        return tokens_per_s * _generation_flops(config, prompt, new, **options) / peak

    T = config.block_size
    return [
        ("you returned a percentage; return the fraction (0.0042, not 0.42).", 100 * right),
        ("you counted a training step (6 FLOPs per parameter, 12·L·C·T): generating runs the forward pass only, "
         "2 FLOPs per parameter and 4·L·C per position attended.",
         tokens_per_s * (6 * (total - T * config.n_embd) + 12 * config.n_layer * config.n_embd * T) / peak),
        ("you counted 6 FLOPs per parameter, a training step's: generating has no backward pass, so 2.",
         mfu(per_param=6)),
        ("attention costs 4·C FLOPs per layer and per position attended in the forward pass (2·C for q·k, "
         "2·C for the weighted sum of v), not 12·C: that is forward + backward.", mfu(attention=12)),
        ("with a KV cache the token at position t attends to the t + 1 positions so far, not to a full "
         "block_size context.", mfu(full_context=True)),
        ("the token at position t attends to t + 1 positions: the t before it and itself.", mfu(offset=0)),
        ("the attention term is missing: q·kᵀ and the weighted sum of v over the cached positions are matmuls "
         "without parameters.", mfu(attention=0)),
        ("the position table takes part in no matmul (it is looked up, then added): leave block_size × "
         "n_embd out of N.", mfu(matmul_params=total)),
        ("attention runs in every layer: multiply by n_layer.", mfu(layers=False)),
        ("the tokens see different numbers of positions: average the FLOPs over all new tokens, not only the "
         "last one's.", tokens_per_s * _generation_flops(config, prompt + new - 1, 1) / peak),
        ("the tokens see different numbers of positions: average the FLOPs over all new tokens, not only the "
         "first one's.", tokens_per_s * _generation_flops(config, prompt, 1) / peak),
    ]


def check_generation_mfu(generation_mfu: Callable[..., float]) -> None:
    """Exercise 8.2: ``generation_mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens)``."""
    cases = [  # generated tokens/s, config, peak FLOP/s, prompt length, new tokens
        (520.0, preset_config("char-tiny", vocab_size=65), 0.15e12, 10, 40),
        (95.0, preset_config("lal", vocab_size=50257), 65e12, 300, 500),  # a T4's fp16
        (1800.0, preset_config("char-medium", vocab_size=65), 989e12, 1, 1),  # one token after a one-token prompt
        (240.0, GPTConfig(vocab_size=4096, block_size=512, n_layer=5, n_head=5, n_embd=320), 312e12, 0, 512),
    ]
    for tokens_per_s, config, peak, prompt, new in cases:
        got = _as_number(call(generation_mfu, "generation_mfu", tokens_per_s, config, peak, prompt, new,
                              forbidden=[_NO_MODEL]), "generation_mfu", "the MFU")
        want = tokens_per_s * _generation_flops(config, prompt, new) / peak
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        hint = (first_mistake(got, _generation_mistakes(tokens_per_s, config, peak, prompt, new),
                              lambda answer, value: math.isclose(answer, value, rel_tol=1e-6))
                or "FLOPs of the token at position t are 2·N + 4·n_layer·n_embd·(t + 1); average them over the "
                    "new tokens, then MFU = tokens/s × FLOPs per token / peak.")
        raise AssertionError(
            f"For {_describe(config)} generating {new} tokens after a {prompt}-token prompt at {tokens_per_s:,.0f} "
            f"tokens/s on a {peak / 1e12:g} TFLOP/s peak, the MFU is {want:.4g} but you returned {got:.4g}: {hint}")
    passed("generation_mfu", len(cases))


# --------------------------------------------------------------------------- Exercise 8.3: accumulation


def _reference_gradients(model: GPT, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    gradients = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return gradients


def _accumulation_mistakes(model: GPT, x: torch.Tensor, y: torch.Tensor, k: int,
                           stale: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    full = _reference_gradients(model, x, y)
    last = _reference_gradients(model, x[-(len(x) // k):], y[-(len(x) // k):])
    windows = len(x) // k
    return [
        ("you added the micro-batch losses without dividing: each micro-batch's loss is a mean over its own "
         "windows, so divide it by the number of micro-batches before backward() (the gradients are "
         f"{k}× too large).", {n: k * g for n, g in full.items()}),
        (".grad was reset between micro-batches (zero_grad inside the loop): only the last micro-batch's "
         "gradient is left. Zero once, before the first micro-batch; backward() adds into .grad.",
         {n: g / k for n, g in last.items()}),
        ("only the last micro-batch's gradient is left, at full size: backward() must add into .grad across "
         "micro-batches, each loss divided by their number.", last),
        (f"you divided each loss by the windows per micro-batch ({windows}) as well: cross-entropy already "
         "averages over them; divide by the number of micro-batches only.",
         {n: g / windows for n, g in full.items()}),
        ("the gradients left in .grad by an earlier step were added to yours: start with "
         "model.zero_grad() (backward() adds into whatever .grad holds).",
         {n: g + stale[n] for n, g in full.items()}),
    ]


def _count_windows(seen: list[int]) -> Callable[..., None]:
    """A forward pre-hook that notes how many windows each call of the model receives."""
    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else next(iter(kwargs.values()), None)
        seen.append(ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() == 2 else -1)
    return hook


def _close(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> bool:
    return all(torch.allclose(got[n].double(), want[n].double(), atol=1e-6, rtol=1e-4) for n in want)


def check_accumulated_gradients(accumulated_gradients: Callable[..., Mapping[str, torch.Tensor]]) -> None:
    """Exercise 8.3: ``accumulated_gradients(model, x, y, micro_batches)`` equals the whole batch's gradient."""
    cases = [  # config, windows, micro-batches
        (GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16), 8, 4),
        (GPTConfig(vocab_size=31, block_size=9, n_layer=1, n_head=3, n_embd=12, bias=False), 12, 3),
        (GPTConfig(vocab_size=17, block_size=6, n_layer=2, n_head=1, n_embd=8), 6, 6),  # one window each
        (GPTConfig(vocab_size=17, block_size=6, n_layer=1, n_head=2, n_embd=8), 5, 1),  # no accumulation
    ]
    generator = torch.Generator().manual_seed(803)
    for config, windows, k in cases:
        with torch.random.fork_rng():  # the learner's global random state is left as it was
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            model = GPT(config).train()  # dropout 0: train mode changes nothing but is what a run uses
        x = torch.randint(0, config.vocab_size, (windows, config.block_size), generator=generator)
        y = torch.randint(0, config.vocab_size, (windows, config.block_size), generator=generator)
        stale = {name: torch.randn(param.shape, generator=generator) for name, param in model.named_parameters()}
        reference = copy.deepcopy(model)
        for name, param in model.named_parameters():  # what an earlier optimiser step leaves behind
            param.grad = stale[name].clone()
        seen: list[int] = []
        hook = model.register_forward_pre_hook(_count_windows(seen), with_kwargs=True)
        try:
            result = call(accumulated_gradients, "accumulated_gradients", model, x, y, k, forbidden=[_NO_ACCUMULATION])
        finally:
            hook.remove()
        if seen != [windows // k] * k:
            raise AssertionError(
                f"`accumulated_gradients` ran the model on batches of {seen} windows; with {windows} windows in "
                f"{k} micro-batches it should run it {k} times on {windows // k} windows each (x[i*m:(i+1)*m]): "
                "the point of accumulation is that the whole batch never goes through the model at once.")
        names = [name for name, _ in reference.named_parameters()]
        if not isinstance(result, Mapping) or any(name not in result for name in names) or not all(
                isinstance(result[name], torch.Tensor) and result[name].shape == stale[name].shape
                for name in names):
            raise AssertionError("`accumulated_gradients` should return {name: gradient} for every name of "
                                 "model.named_parameters(), each the shape of its parameter (param.grad).")
        got = {name: result[name].detach() for name in names}
        want = _reference_gradients(reference, x, y)
        if _close(got, want):
            continue
        hint = (first_mistake(got, _accumulation_mistakes(reference, x, y, k, stale), _close)
                or "zero the gradients, then for each micro-batch: loss = model(xb, yb)[1] / micro_batches, "
                    "loss.backward(); return each parameter's .grad.")
        raise AssertionError(f"With {windows} windows in {k} micro-batches ({_describe(config)}) the gradients "
                             f"differ from those of the whole batch: {hint}")
    passed("accumulated_gradients", len(cases))
