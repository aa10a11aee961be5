"""Training throughput: tokens per second, model FLOPs utilisation (MFU) and peak memory.

MFU is the fraction of the hardware's peak arithmetic that training turns into useful model
FLOPs (PaLM, appendix B). It needs the peak *for the precision training computes in*: a T4 does
65 TFLOP/s in float16 but has no bfloat16 units at all, an H100 PCIe card is slower than the SXM
one, an L40S is three times an L4. So the peak comes from a table of dense datasheet figures
matched on the exact device name and the dtype; a device or dtype that is not in the table gets
its peak *measured* as the speed of one large matrix multiplication in that dtype (and the
result says so), so the number is never a guess and never "0 %".

What is timed is the training step itself (:meth:`lal.train.Trainer.train_step`): the same
backends (TF32), autocast, gradient scaling, clipping, fused AdamW and accumulation as
``lal train``, on random tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lal.device import autocast_dtype, pick_device, precision_name
from lal.model import GPT, GPTConfig, preset_config
from lal.train import History, Trainer, TrainConfig

#: Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by device and by the precision
#: training computes in ("fp32" on a CUDA GPU means TF32 tensor cores, which lal turns on).
#: Patterns are matched against the whole device name with word boundaries, so "L4" never
#: matches "NVIDIA L40S" and "H100" alone is the SXM card (PCIe and NVL are their own rows).
#: Laptop GPUs share names with desktop cards but not their clocks: they get a measured peak.
#: GeForce cards are listed with float32 accumulation, which is what PyTorch uses.
GPU_PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    # pattern,            label,                  {dtype: dense TFLOP/s}
    (r"B200", "B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 1100.0}),
    (r"H200 NVL", "H200 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 417.0}),
    (r"GH200|H200", "H200 SXM", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    (r"H100 NVL", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 417.0}),
    (r"H100 PCIE", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    (r"H100", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    (r"A100", "A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    (r"A10G", "A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0}),
    (r"A10", "A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),
    (r"L40S", "L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0}),
    (r"L40", "L40", {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),
    (r"L4", "L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    (r"T4", "T4", {"fp16": 65.0, "fp32": 8.1}),  # Turing: no bfloat16 units
    (r"V100 PCIE", "V100 PCIe", {"fp16": 112.0, "fp32": 14.0}),
    (r"V100", "V100 SXM", {"fp16": 125.0, "fp32": 15.7}),
    (r"RTX 5090", "RTX 5090", {"bf16": 209.5, "fp16": 209.5, "fp32": 104.8}),
    (r"RTX 5080", "RTX 5080", {"bf16": 112.6, "fp16": 112.6, "fp32": 56.3}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    (r"RTX 4080", "RTX 4080", {"bf16": 97.5, "fp16": 97.5, "fp32": 48.7}),
    (r"RTX 3090 TI", "RTX 3090 Ti", {"bf16": 80.0, "fp16": 80.0, "fp32": 40.0}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    (r"RTX 3080", "RTX 3080", {"bf16": 59.5, "fp16": 59.5, "fp32": 29.8}),
    (r"RTX 3070", "RTX 3070", {"bf16": 40.6, "fp16": 40.6, "fp32": 20.3}),
)

#: Apple silicon GPUs (MPS; lal trains there in float32): Apple's figure for the chip's largest GPU
#: configuration, so a chip with fewer GPU cores shows a somewhat lower MFU than it really has.
APPLE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"M1 ULTRA", 21.0), (r"M1 MAX", 10.4), (r"M1 PRO", 5.2), (r"M1", 2.6),
    (r"M2 ULTRA", 27.2), (r"M2 MAX", 13.6), (r"M2 PRO", 6.8), (r"M2", 3.6),
    (r"M3 MAX", 16.4), (r"M3", 4.1),
)


@dataclass
class BenchResult:
    preset: str
    device: str
    device_name: str
    precision: str
    compiled: bool
    n_params: int
    batch_size: int
    block_size: int
    steps: int
    tokens_per_s: float
    ms_per_step: float
    achieved_tflops: float
    peak_tflops: float
    peak_source: str
    mfu: float
    peak_memory_mb: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.preset} ({self.n_params / 1e6:.2f}M parameters) on {self.device_name}, {self.precision}"
            f"{', compiled' if self.compiled else ''}, batch {self.batch_size} × context {self.block_size}\n"
            f"  throughput   {self.tokens_per_s:,.0f} tokens/s ({self.ms_per_step:.1f} ms/step)\n"
            f"  MFU          {format_mfu(self.mfu)} of {self.peak_tflops:.3g} TFLOP/s ({self.peak_source})\n"
            f"  peak memory  {self.peak_memory_mb:,.0f} MB"
        )


def format_mfu(mfu: float) -> str:
    """MFU as a percentage with two significant digits, so a small one never reads "0.0 %"."""
    return f"{100 * mfu:.2g} %" if mfu < 0.1 else f"{100 * mfu:.1f} %"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measured_matmul_tflops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 10
) -> float:
    """TFLOP/s of a ``size``² matmul in ``dtype``: the practical peak of this device in that dtype."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):  # warm-up: kernel selection, clocks
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def device_name(device: torch.device) -> str:
    """The name a person would recognise: "NVIDIA H100 PCIe", "Apple M2 Pro", the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return _apple_chip_name() or "Apple GPU (MPS)"
    return _cpu_name()


def table_peak_tflops(name: str, precision: str) -> tuple[float, str] | None:
    """The datasheet peak of the GPU called ``name`` in ``precision`` ("bf16", "fp16", "fp32"), or None.

    None when the device is not in :data:`GPU_PEAK_TFLOPS` / :data:`APPLE_PEAK_TFLOPS`, is a laptop
    part, or has no hardware for ``precision`` (a T4 in bf16).
    """
    normalised = " " + re.sub(r"[-_\s]+", " ", name.upper()) + " "
    if "LAPTOP" in normalised or "MOBILE" in normalised or " MAX Q " in normalised:
        return None
    if normalised.strip().startswith("APPLE"):
        for pattern, tflops in APPLE_PEAK_TFLOPS:
            if precision == "fp32" and _matches(pattern, normalised):
                return tflops, f"Apple's fp32 GPU figure for the largest {pattern.title()}"
        return None
    for pattern, label, peaks in GPU_PEAK_TFLOPS:
        if _matches(pattern, normalised):
            if precision not in peaks:
                return None
            kind = "TF32" if precision == "fp32" else precision
            return peaks[precision], f"{label} datasheet, dense {kind}"
    return None


def _matches(pattern: str, normalised_name: str) -> bool:
    return re.search(rf"(?<![A-Z0-9])(?:{pattern})(?![A-Z0-9])", normalised_name) is not None


@functools.lru_cache(maxsize=None)
def _measured_peak(device_str: str, precision: str) -> float:
    device = torch.device(device_str)
    dtype = autocast_dtype(device, precision) or torch.float32
    size = 4096 if device.type in ("cuda", "mps") else 1024
    return measured_matmul_tflops(device, dtype, size=size)


def peak_tflops(device: torch.device, precision: str | None = None) -> tuple[float, str]:
    """The peak to measure MFU against on ``device`` in ``precision``, and where the figure comes from.

    ``precision`` defaults to what training picks there (:func:`lal.device.precision_name`).
    """
    device = torch.device(device)
    precision = precision or precision_name(device)
    name = device_name(device)
    known = table_peak_tflops(name, precision) if device.type in ("cuda", "mps") else None
    if known is not None:
        return known
    size = 4096 if device.type in ("cuda", "mps") else 1024
    tflops = _measured_peak(str(device), precision)
    why = "" if device.type == "cpu" else f"; {name} is not in lal's table of datasheet peaks"
    return tflops, f"measured: {size}² {precision} matmul on this {device.type}{why}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run so far: the GPU's allocations, or the whole process on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    # ru_maxrss is in kilobytes on Linux and bytes on macOS: the whole process's peak.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def time_train_steps(trainer: Trainer, steps: int, warmup_steps: int = 3) -> float:
    """Seconds per optimiser step of ``trainer``, after ``warmup_steps`` untimed ones.

    The first steps pay for memory allocation, cuDNN/cuBLAS heuristics and, with ``compile``,
    compilation; they are run first and not counted.
    """
    if steps < 1:
        raise ValueError(f"Time at least one step (got steps={steps}).")
    for _ in range(warmup_steps):
        trainer.train_step()
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    synchronize(trainer.device)
    return (time.perf_counter() - start) / steps


def random_token_trainer(model: GPT, cfg: TrainConfig, n_windows: int = 64) -> Trainer:
    """A :class:`~lal.train.Trainer` of ``model`` on random token ids: for timing, not for learning."""
    block_size = cfg.block_size or model.config.block_size
    generator = torch.Generator().manual_seed(0)
    n_tokens = n_windows * block_size + 1
    train_tokens = torch.randint(model.config.vocab_size, (n_tokens,), generator=generator)
    val_tokens = torch.randint(model.config.vocab_size, (block_size + 1,), generator=generator)
    return Trainer(model, train_tokens, val_tokens, cfg)


def benchmark(
    preset: str = "char-tiny",
    vocab_size: int = 65,
    batch_size: int = 16,
    block_size: int | None = None,
    steps: int = 20,
    warmup_steps: int = 3,
    device: str | None = None,
    compile: bool = False,
    precision: str = "auto",
    grad_accum_steps: int = 1,
) -> BenchResult:
    """Time full training steps of a preset (forward, backward, scaling, clipping, AdamW) on random tokens."""
    if steps < 1:
        raise ValueError(f"--steps must be at least 1 (got {steps}): there is nothing to time otherwise.")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size}).")
    torch_device = pick_device(device)
    config = preset_config(preset, vocab_size=vocab_size, block_size=block_size)
    torch.manual_seed(0)
    model = GPT(config)
    cfg = TrainConfig(batch_size=batch_size, grad_accum_steps=grad_accum_steps, device=str(torch_device),
                      compile=compile, precision=precision, progress=False, eval_windows=1, max_steps=10**9)
    trainer = random_token_trainer(model, cfg)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    seconds = time_train_steps(trainer, steps, warmup_steps)

    tokens_per_step = batch_size * grad_accum_steps * config.block_size
    tokens_per_s = tokens_per_step / seconds
    achieved = tokens_per_s * model.flops_per_token(config.block_size) / 1e12
    dtype_name = precision_name(torch_device, precision)
    peak, source = peak_tflops(torch_device, dtype_name)
    return BenchResult(
        preset=preset,
        device=str(torch_device),
        device_name=device_name(torch_device),
        precision=dtype_name,
        compiled=compile,
        n_params=model.num_parameters(),
        batch_size=batch_size * grad_accum_steps,
        block_size=config.block_size,
        steps=steps,
        tokens_per_s=tokens_per_s,
        ms_per_step=1000 * seconds,
        achieved_tflops=achieved,
        peak_tflops=peak,
        peak_source=source,
        mfu=achieved / peak,
        peak_memory_mb=peak_memory_mb(torch_device),
    )


def _apple_chip_name() -> str | None:
    if sys.platform != "darwin":
        return None
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _apple_chip_name() or platform.processor() or "CPU"


# --------------------------------------------------------------------------- a run's throughput and verdict

#: The fewest training steps a throughput figure is timed over: a handful of steps catches the
#: first allocations and thread wake-ups, and read lower than the whole run that includes them.
MIN_TIMED_STEPS = 50

#: How far above a target validation loss a run may stop and still be called "inside the noise".
#: Two seeds of one recipe end about ±0.01 apart on lal's fixed validation windows
#: (benchmarks/README.md), and published figures such as nanoGPT's 1.4697 were measured on other,
#: randomly drawn windows: a run that stops 0.02 above them has not shown that it is worse.
TARGET_MARGIN = 0.02


@dataclass(frozen=True)
class Throughput:
    """Training steps timed on their own (no evaluation, no checkpoint), and what they make of the hardware."""

    steps: int
    step_s: float
    tokens_per_step: int
    flops_per_token: float
    peak_tflops: float
    peak_source: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def mfu(self) -> float:
        return self.tokens_per_s * self.flops_per_token / (self.peak_tflops * 1e12)


def measure_training_throughput(
    model: GPT,
    cfg: TrainConfig,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    steps: int = MIN_TIMED_STEPS,
    warmup_steps: int = 3,
) -> Throughput:
    """Time ``steps`` optimiser steps of a fresh copy of ``model`` with ``cfg`` on the run's own data.

    The steps are exactly :func:`lal.train.train`'s (same batches, precision, accumulation, clipping,
    fused AdamW), without the evaluations and checkpoint writes a whole run also pays for, so the
    figure is what the hardware does per training step; ``model`` itself is not touched.
    """
    if steps < MIN_TIMED_STEPS:
        raise ValueError(f"Time at least {MIN_TIMED_STEPS} steps (got steps={steps}): fewer read the start-up "
                         "costs of the first steps as if they were the run's speed.")
    timed_cfg = dataclasses.replace(cfg, out_dir=None, progress=False, save_checkpoints=False, max_steps=10**9)
    trainer = Trainer(GPT(model.config), train_data, val_data, timed_cfg)
    step_s = time_train_steps(trainer, steps, warmup_steps)
    block_size = cfg.block_size or model.config.block_size
    precision = precision_name(trainer.device, cfg.precision)
    peak, source = peak_tflops(trainer.device, precision)
    world_size = trainer.dist.world_size
    return Throughput(steps=steps, step_s=step_s,
                      tokens_per_step=cfg.batch_size * cfg.grad_accum_steps * world_size * block_size,
                      flops_per_token=model.flops_per_token(block_size), peak_tflops=peak, peak_source=source)


def format_duration(seconds: float) -> str:
    """``41 s``, ``2 min 41 s``, ``1 h 05 min``: a run's time as a person says it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_verdict(history: History, target: float, margin: float = TARGET_MARGIN) -> str:
    """One line on whether a run reached ``target``, and what to try when it did not.

    A run that misses a target by bad luck (another seed, other validation windows) is not an
    error: it gets a line that says so, never an exception. ``margin`` is :data:`TARGET_MARGIN`.
    """
    if not history.step:
        return "no evaluation was recorded: the run stopped before its first step"
    for step, loss, elapsed in zip(history.step, history.val_loss, history.elapsed_s):
        if loss <= target:
            return f"reached {target:g} at step {step:,} in {format_duration(elapsed)}"
    best, steps = history.best_val_loss, history.step[-1]
    stopped = f"stopped at {best:.3f} after {steps:,} steps"
    if best <= target + margin:
        return (f"{stopped}: {best - target:.3f} above {target:g}, inside the ±{margin:g} that runs move from seed to "
                f"seed; run it again with another seed (seed=1) or {steps // 5:,} more steps "
                f"(max_steps={steps + steps // 5:,})")
    return (f"{stopped}: {best - target:.3f} above {target:g}; see what to try: twice the steps "
            f"(max_steps={2 * steps:,}), a learning rate 2× lower if the curve is noisy or rose, or a larger "
            "batch with gradient accumulation if the plan had to shrink it")


# --------------------------------------------------------------------------- what a run costs on other hardware


@dataclass(frozen=True)
class RunEstimate:
    """A run's throughput and time on a card it has not run on: FLOPs per token, the card's peak and an MFU."""

    card: str
    precision: str
    peak_tflops: float
    mfu: float
    tokens_per_s: float
    tokens: int
    seconds: float


def flops_per_token_of(config: GPTConfig, context_length: int | None = None) -> float:
    """:meth:`lal.model.GPT.flops_per_token` of ``GPT(config)``, built once per config (the caller's random
    state is left as it was)."""
    return _flops_per_token(tuple(sorted(dataclasses.asdict(config).items())), context_length)


@functools.lru_cache(maxsize=16)
def _flops_per_token(config_items: tuple[tuple[str, Any], ...], context_length: int | None) -> float:
    with torch.random.fork_rng():
        return GPT(GPTConfig(**dict(config_items))).flops_per_token(context_length)


def mfu_of(tokens_per_s: float, config: GPTConfig, peak_tflops: float, context_length: int | None = None) -> float:
    """The MFU a throughput means for ``config`` on a ``peak_tflops`` card (lal's FLOPs per token)."""
    return tokens_per_s * flops_per_token_of(config, context_length) / (peak_tflops * 1e12)


def estimate_run(config: GPTConfig, tokens: int, card: str, precision: str, mfu: float,
                 context_length: int | None = None) -> RunEstimate:
    """How long ``tokens`` training tokens of ``config`` take on ``card`` at an assumed ``mfu``.

    The peak is the datasheet figure of :func:`table_peak_tflops`; evaluations are not counted.
    """
    known = table_peak_tflops(card, precision)
    if known is None:
        raise ValueError(f"No datasheet peak for {card!r} in {precision}: lal.bench.GPU_PEAK_TFLOPS lists the cards.")
    peak = known[0]
    tokens_per_s = mfu * peak * 1e12 / flops_per_token_of(config, context_length)
    return RunEstimate(card=card, precision=precision, peak_tflops=peak, mfu=mfu, tokens_per_s=tokens_per_s,
                       tokens=tokens, seconds=tokens / tokens_per_s)


#: nanoGPT's published run of this recipe (its README): 5,000 steps of 64 windows × 256 characters,
#: best validation loss 1.4697, "about 3 minutes" on one A100, evaluations included.
NANOGPT_A100_RUN = dict(steps=5000, batch_size=64, block_size=256, seconds=180.0, card="NVIDIA A100", precision="bf16")


def nanogpt_a100_mfu(config: GPTConfig) -> float:
    """The MFU nanoGPT's own A100 run of ``config`` reached, from its published steps, batch and time."""
    run = NANOGPT_A100_RUN
    tokens_per_s = run["steps"] * run["batch_size"] * run["block_size"] / run["seconds"]
    return mfu_of(tokens_per_s, config, table_peak_tflops(run["card"], run["precision"])[0], run["block_size"])


def expectation_rows(config: GPTConfig) -> list[RunEstimate]:
    """Chapter 8's GPU run (``config`` for nanoGPT's 5,000 × 64 × 256 tokens) on Colab's T4 and an H200.

    Estimated, not measured: both assume the MFU nanoGPT's own A100 run reached (:func:`nanogpt_a100_mfu`).
    The T4 computes in fp16 with a gradient scaler (it has no bf16), the H200 in bf16.
    """
    run = NANOGPT_A100_RUN
    tokens = run["steps"] * run["batch_size"] * run["block_size"]
    mfu = nanogpt_a100_mfu(config)
    return [estimate_run(config, tokens, "Tesla T4", "fp16", mfu, run["block_size"]),
            estimate_run(config, tokens, "NVIDIA H200", "bf16", mfu, run["block_size"])]


def _two_digits(value: float) -> float:
    """``value`` rounded to two significant digits: 94,815 → 95,000."""
    return float(f"{value:.2g}")


def expectation_markdown(config: GPTConfig) -> str:
    """The estimated rows of chapter 8's "what to expect" table (and INSTRUCTORS.md's), as markdown lines.

    Columns: card | precision | time to 1.47 | tokens/s | MFU | where the figures come from.
    """
    lines = []
    for row in expectation_rows(config):
        how = "fp16 with a gradient scaler" if row.precision == "fp16" else "bf16 autocast"
        seconds, tokens_per_s = _two_digits(row.seconds), _two_digits(row.tokens_per_s)  # estimates: no more
        lines.append(f"| {row.card} | {how} | ≈ {format_duration(seconds)} | ≈ {tokens_per_s:,.0f} | "
                     f"{format_mfu(row.mfu)} (assumed) | *estimated from the FLOP count and the card's peak* "
                     f"({row.peak_tflops:g} TFLOP/s) |")
    return "\n".join(lines)
