"""The plan before a run (``lal.plan``): memory per step, the batch that fits, the expected time."""

from __future__ import annotations

import pytest
import torch

from lal import plan as lal_plan
from lal.model import GPT, GPTConfig, expected_parameters
from lal.plan import estimate_memory, plan_run
from lal.train import TrainConfig, out_of_memory_advice

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)


def small_cfg(**overrides) -> TrainConfig:
    values = dict(max_steps=300, batch_size=16, eval_interval=100, eval_windows=8, device="cpu", progress=False)
    return TrainConfig(**{**values, **overrides})


def test_memory_counts_weights_gradients_adamw_and_activations() -> None:
    n_params = expected_parameters(CONFIG)["total"]
    fp32 = estimate_memory(CONFIG, batch_size=8, block_size=32, precision="fp32")
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (4 * n_params, 4 * n_params, 8 * n_params)
    tokens = 8 * 32
    assert fp32.activations == 2 * 68 * tokens * 32 + 12 * tokens * 50 + 4 * tokens * 32
    bf16 = estimate_memory(CONFIG, batch_size=8, block_size=32, precision="bf16")
    assert bf16.activations == 2 * 34 * tokens * 32 + 10 * tokens * 50 + 4 * tokens * 32  # 16-bit: half per layer
    double = estimate_memory(CONFIG, batch_size=16, block_size=32, precision="bf16")
    assert double.activations == 2 * bf16.activations and double.weights == bf16.weights
    explicit = estimate_memory(GPTConfig(**{**CONFIG.to_dict(), "attn_impl": "explicit"}), 8, 32, "bf16")
    assert explicit.activations - bf16.activations == 2 * 5 * 2 * 32 * tokens  # the stored T×T scores per head
    assert fp32.total == fp32.weights + fp32.gradients + fp32.optimizer + fp32.activations


def test_a_batch_that_does_not_fit_is_split_into_accumulation_steps(monkeypatch) -> None:
    fits_four = estimate_memory(CONFIG, 4, 32, "fp32").total / lal_plan.MEMORY_HEADROOM
    monkeypatch.setattr(lal_plan, "free_memory_bytes", lambda device: int(fits_four) + 1)
    model = GPT(CONFIG)
    plan = plan_run(model, small_cfg(batch_size=16, grad_accum_steps=2), time_steps=1, warmup_steps=1)
    assert (plan.batch_size, plan.grad_accum_steps, plan.global_batch_size) == (4, 8, 32)
    assert (plan.config.batch_size, plan.config.grad_accum_steps) == (4, 8)
    assert plan.fits
    assert any("--batch-size 4 --grad-accum-steps 8" in note for note in plan.notes)
    assert "4 windows × 32 tokens × 8 accumulation step(s)" in plan.summary()


def test_out_of_memory_in_the_timed_steps_retries_smaller(monkeypatch) -> None:
    real_time_steps = lal_plan._time_steps
    tried = []

    def oom_above_two(model, cfg, *args):
        tried.append(cfg.batch_size)
        if cfg.batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_time_steps(model, cfg, *args)

    monkeypatch.setattr(lal_plan, "_time_steps", oom_above_two)
    plan = plan_run(GPT(CONFIG), small_cfg(batch_size=8), time_steps=1, warmup_steps=1)
    assert tried == [8, 4, 2]
    assert (plan.batch_size, plan.grad_accum_steps) == (2, 4)
    assert any("out of memory in the timed steps" in note for note in plan.notes)


def test_the_plan_times_steps_without_touching_the_model() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    plan = plan_run(model, small_cfg(max_steps=30), time_steps=2, warmup_steps=1)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert plan.step_s > 0 and plan.eval_s > 0
    assert plan.n_evals == 2  # at step 0 and at the end (30 steps, an evaluation every 100)
    assert plan.estimated_s == pytest.approx(plan.warmup_s + 30 * plan.step_s + 2 * plan.eval_s)
    assert plan.n_params == model.num_parameters() and plan.precision == "fp32"


def test_out_of_memory_advice_names_the_settings_to_lower() -> None:
    advice = out_of_memory_advice(small_cfg(batch_size=64, grad_accum_steps=1), 256, "cuda")
    assert advice.startswith("Out of cuda memory with micro-batches of 64 windows × 256 tokens.")
    assert "--batch-size 32 --grad-accum-steps 2" in advice and "--block-size" in advice and "--dry-run" in advice


def test_running_out_of_memory_in_train_names_the_settings(monkeypatch) -> None:
    from lal import train as lal_train

    def out_of_memory(self) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(lal_train._Trainer, "_train_step", out_of_memory)
    tokens = torch.randint(0, 50, (2000,))
    with pytest.raises(torch.OutOfMemoryError, match=r"micro-batches of 16 windows × 32 tokens.*--batch-size 8 "
                                                     r"--grad-accum-steps 2.*Tried to allocate 2\.00 GiB"):
        lal_train.train(GPT(CONFIG), tokens[:1800], tokens[1800:], small_cfg())
