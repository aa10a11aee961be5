"""``lal bench --backend mlx``: the training throughput of the MLX backend, measured as ``lal.bench`` does.

The same preset, batch, context and random tokens as ``lal.bench.benchmark``, the same initial
weights (built by ``lal.model.GPT`` with seed 0 and converted), the same untimed warm-up steps and
the same :class:`lal.bench.BenchResult`, so the two backends' figures compare line by line. What
is timed is :meth:`lal.mlx.train.Trainer.train_step`, which ends in ``mx.eval``: MLX's lazy graph
has been computed when the clock stops, with nothing left in flight.
"""

from __future__ import annotations

import resource
import sys
import time

import mlx.core as mx
import torch

from lal.bench import BenchResult, _apple_chip_name, device_name, time_train_steps
from lal.mlx.convert import from_torch
from lal.mlx.train import Trainer, device_label, mlx_device
from lal.model import GPT as TorchGPT
from lal.model import preset_config
from lal.train import TrainConfig


def measured_matmul_tflops(size: int = 1024, min_seconds: float = 0.25) -> float:
    """TFLOP/s of a ``size``² float32 matmul in MLX on the default device: the peak MFU is measured against.

    Repeated until ``min_seconds`` have passed, not a fixed number of times: MLX's Linux CPU build
    multiplies with the reference BLAS, a hundred times slower than a GPU, and ten repeats there
    would take longer than the benchmark itself.
    """
    a, b = mx.random.normal((size, size)), mx.random.normal((size, size))
    mx.eval(a @ b)  # warm-up
    repeats, start = 0, time.perf_counter()
    while repeats == 0 or time.perf_counter() - start < min_seconds:
        mx.eval(a @ b)
        repeats += 1
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory_mb(device: mx.Device) -> float:
    """MLX's own peak allocation on the GPU; on a CPU the whole process's peak, as ``lal.bench`` reports it."""
    if device == mx.gpu:
        return mx.get_peak_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def benchmark(
    preset: str = "char-tiny",
    vocab_size: int = 65,
    batch_size: int = 16,
    block_size: int | None = None,
    steps: int = 20,
    warmup_steps: int = 3,
    device: str | None = None,
    compile: bool = False,
    grad_accum_steps: int = 1,
) -> BenchResult:
    """Time full MLX training steps of a preset (forward, backward, clipping, AdamW) on random tokens."""
    if steps < 1:
        raise ValueError(f"--steps must be at least 1 (got {steps}): there is nothing to time otherwise.")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size}).")
    where = mlx_device(device)
    mx.set_default_device(where)
    config = preset_config(preset, vocab_size=vocab_size, block_size=block_size)
    torch.manual_seed(0)
    model = from_torch(TorchGPT(config))  # lal.bench's initial weights
    cfg = TrainConfig(batch_size=batch_size, grad_accum_steps=grad_accum_steps, device=device,
                      compile=compile, progress=False, eval_windows=1, max_steps=10**9)
    generator = torch.Generator().manual_seed(0)  # lal.bench.random_token_trainer's tokens
    train_tokens = torch.randint(vocab_size, (64 * config.block_size + 1,), generator=generator)
    val_tokens = torch.randint(vocab_size, (config.block_size + 1,), generator=generator)
    trainer = Trainer(model, train_tokens, val_tokens, cfg)
    seconds = time_train_steps(trainer, steps, warmup_steps)

    tokens_per_s = batch_size * grad_accum_steps * config.block_size / seconds
    achieved = tokens_per_s * model.flops_per_token(config.block_size) / 1e12
    peak = measured_matmul_tflops(1024 if where == mx.gpu else 512)
    label = device_label(where)
    hardware = (_apple_chip_name() or "Apple silicon") if where == mx.gpu else device_name(torch.device("cpu"))
    return BenchResult(
        preset=preset,
        device="mlx-gpu" if where == mx.gpu else "mlx-cpu",
        device_name=f"MLX {mx.__version__}, {label} of {hardware}",
        precision="fp32",
        compiled=compile,
        n_params=model.num_parameters(),
        batch_size=batch_size * grad_accum_steps,
        block_size=config.block_size,
        steps=steps,
        tokens_per_s=tokens_per_s,
        ms_per_step=1000 * seconds,
        achieved_tflops=achieved,
        peak_tflops=peak,
        peak_source=f"measured: {1024 if where == mx.gpu else 512}² fp32 matmul in MLX on this {label}",
        mfu=achieved / peak,
        peak_memory_mb=peak_memory_mb(where),
    )
