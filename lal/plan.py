"""A plan before the run: will it fit in memory, with which batch, and how long will it take?

``lal train --dry-run`` and :func:`plan_run` answer before any real training starts:

* **memory per step**, in four parts: the float32 weights, their gradients, AdamW's two moment
  estimates (4 + 4 + 8 bytes per parameter), and the activations one micro-batch keeps for the
  backward pass (which grow with batch × context, and are most of it for small models with long
  contexts); against the memory the device has free;
* **the batch it will use**: when the estimate does not fit, the micro-batch is split (its
  divisors, largest first) and gradient accumulation takes up the rest, so the global batch and
  therefore the training itself stay the same;
* **time**: a few real training steps and one evaluation are timed on a fresh copy of the model
  (the warm-up steps, which pay for allocation and compilation, separately), and the run's time
  is extrapolated from them.

The activation estimate follows Korthikanti et al. (2022), "Reducing Activation Recomputation in
Large Transformer Models": about 34 bytes per token per width per layer in 16-bit precision with
fused attention (the T×T attention matrix is never stored), twice that in float32, plus the
logits of the output layer. On a GPU the timed steps also *measure* the peak memory, shown
beside the estimate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from lal.bench import device_name, random_token_trainer, synchronize, time_train_steps
from lal.device import pick_device, precision_name
from lal.distributed import current_context
from lal.model import GPT, GPTConfig, expected_parameters
from lal.train import Trainer, TrainConfig, out_of_memory_advice

#: Plan to use at most this share of the free memory: allocator fragmentation and temporary
#: buffers (cuBLAS workspaces, the loss) need the rest.
MEMORY_HEADROOM = 0.85

GIB = 2**30


@dataclass
class MemoryEstimate:
    """Bytes one training step needs, by part (activations for one micro-batch)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class RunPlan:
    """What :func:`plan_run` found: sizes, memory, the batch to use and the expected time."""

    n_params: int
    device: str
    device_name: str
    precision: str
    compiled: bool
    batch_size: int  # windows per micro-batch
    grad_accum_steps: int
    world_size: int
    block_size: int
    memory: MemoryEstimate
    free_memory: int | None  # bytes free on the device (None: unknown)
    measured_peak_memory: int | None  # bytes, measured during the timed steps (CUDA only)
    fits: bool
    warmup_s: float  # the untimed first steps: allocation, kernel selection, compilation
    step_s: float
    eval_s: float
    max_steps: int
    eval_interval: int
    config: TrainConfig  # the training config to use (batch and accumulation as planned)
    notes: list[str] = field(default_factory=list)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.block_size

    @property
    def n_evals(self) -> int:
        return self.max_steps // self.eval_interval + 1 + (self.max_steps % self.eval_interval > 0)  # and at the end

    @property
    def estimated_s(self) -> float:
        """Seconds for the whole run: warm-up, every step, every evaluation (checkpoints not counted)."""
        return self.warmup_s + self.max_steps * self.step_s + self.n_evals * self.eval_s

    def summary(self) -> str:
        memory = self.memory
        free = "unknown" if self.free_memory is None else _gib(self.free_memory)
        lines = [
            f"Plan: {self.n_params / 1e6:.2f}M parameters on {self.device_name} ({self.device}), {self.precision}"
            f"{', compiled' if self.compiled else ''}",
            f"  batch        {self.batch_size} windows × {self.block_size} tokens"
            f" × {self.grad_accum_steps} accumulation step(s) × {self.world_size} process(es)"
            f" = {self.global_batch_size} windows, {self.tokens_per_step:,} tokens per optimiser step",
            f"  memory/step  weights {_gib(memory.weights)} + gradients {_gib(memory.gradients)}"
            f" + AdamW state {_gib(memory.optimizer)} + activations {_gib(memory.activations)}"
            f" = {_gib(memory.total)} estimated",
        ]
        if self.measured_peak_memory is not None:
            lines.append(f"               {_gib(self.measured_peak_memory)} measured in the timed steps")
        lines.append(f"  free memory  {free} on the device: {'fits' if self.fits else 'does NOT fit'}")
        lines.append(
            f"  time         {1000 * self.step_s:.1f} ms/step, {self.eval_s:.2f} s per evaluation, "
            f"{self.warmup_s:.1f} s warm-up → about {_duration(self.estimated_s)} for {self.max_steps:,} steps "
            f"and {self.n_evals} evaluations"
        )
        lines += [f"  note         {note}" for note in self.notes]
        return "\n".join(lines)


def estimate_memory(config: GPTConfig, batch_size: int, block_size: int, precision: str) -> MemoryEstimate:
    """Bytes a training step of a model shaped ``config`` needs, with micro-batches of ``batch_size``.

    Weights stay float32 under autocast (4 bytes), and so do their gradients (4) and AdamW's two
    moments (8). Activations: ≈ 34 bytes × tokens × width per layer in 16-bit precision, twice
    that in float32; the explicit attention path also stores the T×T scores (5 bytes × heads × T
    per token); the output layer keeps its logits and their float32 copy for the loss.
    """
    n_params = expected_parameters(config)["total"]
    tokens = batch_size * block_size
    bytes_per_activation = 2 if precision in ("bf16", "fp16") else 4
    per_layer = 17 * bytes_per_activation * tokens * config.n_embd  # 34 bytes per element in 16-bit
    if config.attn_impl == "explicit":
        per_layer += 5 * (bytes_per_activation // 2) * config.n_head * block_size * tokens
    logits = (bytes_per_activation + 8) * tokens * config.vocab_size  # logits, float32 copy, its gradient
    embeddings = 4 * tokens * config.n_embd
    return MemoryEstimate(
        weights=4 * n_params,
        gradients=4 * n_params,
        optimizer=8 * n_params,
        activations=config.n_layer * per_layer + logits + embeddings,
    )


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes free for this process on ``device``: the GPU's free memory, or the RAM available."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_run(
    model: GPT,
    cfg: TrainConfig,
    train_data: torch.Tensor | None = None,
    val_data: torch.Tensor | None = None,
    time_steps: int = 5,
    warmup_steps: int = 2,
) -> RunPlan:
    """Plan training ``model`` with ``cfg``: memory, the batch that fits, and the expected time.

    Nothing of ``model`` changes: the timed steps train a fresh model of the same shape, on
    ``train_data`` / ``val_data`` when given (else random tokens). ``plan.config`` is ``cfg``
    with the micro-batch and accumulation to use; pass it to :func:`lal.train.train`.
    """
    device = pick_device(cfg.device)
    precision = precision_name(device, cfg.precision)
    config = model.config
    block_size = cfg.block_size or config.block_size
    world_size = current_context().world_size
    free = free_memory_bytes(device)
    notes: list[str] = []

    batch_size, grad_accum = _batch_that_fits(config, cfg.batch_size, cfg.grad_accum_steps, block_size, precision, free)
    if batch_size != cfg.batch_size:
        notes.append(
            f"batch {cfg.batch_size} does not fit: micro-batches of {batch_size} with {grad_accum} accumulation "
            f"steps train the same global batch (--batch-size {batch_size} --grad-accum-steps {grad_accum})."
        )
    if free is None:
        notes.append("this system does not report free memory: the memory check was skipped.")

    while True:
        planned = dataclasses.replace(cfg, batch_size=batch_size, grad_accum_steps=grad_accum, out_dir=None,
                                      progress=False, save_checkpoints=False, max_steps=10**9)
        try:
            timing = _time_steps(model, planned, train_data, val_data, time_steps, warmup_steps, device)
            break
        except torch.OutOfMemoryError:
            _release(device)
            if batch_size == 1:
                raise MemoryError(out_of_memory_advice(cfg, block_size, device)) from None
            batch_size, grad_accum = _split(batch_size, grad_accum)
            notes.append(f"out of memory in the timed steps: retried with micro-batches of {batch_size}.")

    memory = estimate_memory(config, batch_size, block_size, precision)
    fits = free is None or max(memory.total, timing["peak"] or 0) <= MEMORY_HEADROOM * free
    if not fits:
        notes.append(out_of_memory_advice(cfg, block_size, device))
    return RunPlan(
        n_params=model.num_parameters(),
        device=str(device),
        device_name=device_name(device),
        precision=precision,
        compiled=cfg.compile,
        batch_size=batch_size,
        grad_accum_steps=grad_accum,
        world_size=world_size,
        block_size=block_size,
        memory=memory,
        free_memory=free,
        measured_peak_memory=timing["peak"],
        fits=fits,
        warmup_s=timing["warmup_s"],
        step_s=timing["step_s"],
        eval_s=timing["eval_s"],
        max_steps=cfg.max_steps,
        eval_interval=cfg.eval_interval,
        config=dataclasses.replace(cfg, batch_size=batch_size, grad_accum_steps=grad_accum),
        notes=notes,
    )


def _batch_that_fits(
    config: GPTConfig, batch_size: int, grad_accum: int, block_size: int, precision: str, free: int | None
) -> tuple[int, int]:
    """The largest divisor of ``batch_size`` whose step fits in ``free`` memory, and the accumulation."""
    if free is None:
        return batch_size, grad_accum
    for micro in sorted((d for d in range(1, batch_size + 1) if batch_size % d == 0), reverse=True):
        if estimate_memory(config, micro, block_size, precision).total <= MEMORY_HEADROOM * free:
            return micro, grad_accum * (batch_size // micro)
    return 1, grad_accum * batch_size


def _split(batch_size: int, grad_accum: int) -> tuple[int, int]:
    for micro in range(batch_size // 2, 0, -1):
        if batch_size % micro == 0:
            return micro, grad_accum * (batch_size // micro)
    return 1, grad_accum * batch_size


def _time_steps(
    model: GPT,
    cfg: TrainConfig,
    train_data: torch.Tensor | None,
    val_data: torch.Tensor | None,
    time_steps: int,
    warmup_steps: int,
    device: torch.device,
) -> dict[str, float | int | None]:
    fresh = GPT(model.config)  # the caller's model stays untouched
    if train_data is None or val_data is None:
        trainer = random_token_trainer(fresh, cfg)
    else:
        trainer = Trainer(fresh, train_data, val_data, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup_steps):
        trainer.train_step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    step_s = time_train_steps(trainer, time_steps, warmup_steps=0)
    start = time.perf_counter()
    trainer._validation_loss()  # the first evaluation pays its own warm-up (a new graph when compiled)
    synchronize(device)
    first_eval_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer._validation_loss()
    eval_s = time.perf_counter() - start
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    del trainer, fresh
    _release(device)
    return {"warmup_s": warmup_s + first_eval_s - eval_s, "step_s": step_s, "eval_s": eval_s, "peak": peak}


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gib(n_bytes: int) -> str:
    if n_bytes >= GIB:
        return f"{n_bytes / GIB:.2f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
