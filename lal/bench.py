"""Training throughput: tokens per second, model FLOPs utilisation (MFU) and peak memory.

MFU is the fraction of the hardware's peak arithmetic that training turns into useful model
FLOPs (PaLM, appendix B). It needs the peak: for known GPUs it comes from a table of dense bf16
(or fp16) figures; for any other device, including CPUs, it is *measured* here as the speed of
one large matrix multiplication, so the number says how close training gets to what this
machine's matmul can do.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

from lal.device import autocast, pick_device
from lal.model import GPT, preset_config
from lal.train import TrainConfig, make_optimizer

#: Dense peak TFLOP/s in the precision training uses (bf16, or fp16 where bf16 is missing).
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


@dataclass
class BenchResult:
    preset: str
    device: str
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
            f"{self.preset} ({self.n_params / 1e6:.2f}M parameters) on {self.device}, "
            f"batch {self.batch_size} × context {self.block_size}\n"
            f"  throughput   {self.tokens_per_s:,.0f} tokens/s ({self.ms_per_step:.1f} ms/step)\n"
            f"  MFU          {self.mfu:.1%} of {self.peak_tflops:.3g} TFLOP/s ({self.peak_source})\n"
            f"  peak memory  {self.peak_memory_mb:,.0f} MB"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def measured_matmul_tflops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """TFLOP/s of a square matmul in the training dtype: the practical peak of this device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_tflops(device: torch.device) -> tuple[float, str]:
    """The peak to measure MFU against, and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops, f"{name} datasheet"
        return measured_matmul_tflops(device, size=4096), f"measured 4096² bf16 matmul on {name}"
    return measured_matmul_tflops(device), f"measured 1024² fp32 matmul on {device.type}"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in kilobytes on Linux and bytes on macOS: the whole process's peak.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def benchmark(
    preset: str = "char-tiny",
    vocab_size: int = 65,
    batch_size: int = 32,
    block_size: int | None = None,
    steps: int = 20,
    warmup_steps: int = 3,
    device: str | None = None,
    compile: bool = False,
) -> BenchResult:
    """Time full training steps (forward, backward, optimizer) of a preset on random tokens."""
    torch_device = pick_device(device)
    config = preset_config(preset, vocab_size=vocab_size, block_size=block_size)
    torch.manual_seed(0)
    model = GPT(config).to(torch_device)
    optimizer = make_optimizer(model, TrainConfig(device=torch_device.type))
    step_model = torch.compile(model) if compile else model
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, config.block_size), generator=generator).to(torch_device)
    y = torch.randint(0, vocab_size, (batch_size, config.block_size), generator=generator).to(torch_device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)

    def train_step() -> None:
        with autocast(torch_device):
            _, loss = step_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup_steps):  # the first steps pay for allocation and compilation
        train_step()
    _synchronize(torch_device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    _synchronize(torch_device)
    seconds = time.perf_counter() - start

    tokens_per_s = steps * batch_size * config.block_size / seconds
    achieved = tokens_per_s * model.flops_per_token(config.block_size) / 1e12
    peak, source = peak_tflops(torch_device)
    return BenchResult(
        preset=preset,
        device=str(torch_device),
        n_params=model.num_parameters(),
        batch_size=batch_size,
        block_size=config.block_size,
        steps=steps,
        tokens_per_s=tokens_per_s,
        ms_per_step=1000 * seconds / steps,
        achieved_tflops=achieved,
        peak_tflops=peak,
        peak_source=source,
        mfu=achieved / peak,
        peak_memory_mb=peak_memory_mb(torch_device),
    )
