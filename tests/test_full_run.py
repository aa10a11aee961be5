"""Chapter 8's full run: the verdict line, the timed throughput, and the per-card estimates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lal.bench import (
    MIN_TIMED_STEPS,
    TARGET_MARGIN,
    expectation_markdown,
    expectation_rows,
    format_duration,
    measure_training_throughput,
    nanogpt_a100_mfu,
    run_verdict,
)
from lal.model import GPT, GPTConfig, preset_config
from lal.train import History, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _history(*rows: tuple[int, float, float]) -> History:
    history = History()
    for step, val_loss, elapsed_s in rows:
        history.append(dict(step=step, val_loss=val_loss, elapsed_s=elapsed_s))
    return history


@pytest.mark.parametrize(("seconds", "text"), [(7.4, "7 s"), (59.6, "1 min"), (161, "2 min 41 s"),
                                               (3725, "1 h 02 min")])
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_run_that_reached_the_target_names_the_first_evaluation_at_or_below_it() -> None:
    history = _history((0, 4.2, 0.5), (3500, 1.4712, 150.2), (3750, 1.4699, 161.4), (4000, 1.462, 172.0))
    assert run_verdict(history, 1.47) == "reached 1.47 at step 3,750 in 2 min 41 s"


def test_a_run_just_above_the_target_is_inside_the_margin_and_gets_a_retry_not_an_error() -> None:
    history = _history((0, 4.2, 0.5), (5000, 1.481, 300.0))
    assert TARGET_MARGIN == 0.02
    assert run_verdict(history, 1.47) == (
        "stopped at 1.481 after 5,000 steps: 0.011 above 1.47, inside the ±0.02 that runs move from seed to seed; "
        "run it again with another seed (seed=1) or 1,000 more steps (max_steps=6,000)")


def test_a_run_that_missed_says_by_how_much_and_what_to_try() -> None:
    history = _history((0, 4.2, 0.5), (2500, 1.55, 150.0), (5000, 1.503, 300.0))
    assert run_verdict(history, 1.47) == (
        "stopped at 1.503 after 5,000 steps: 0.033 above 1.47; see what to try: twice the steps "
        "(max_steps=10,000), a learning rate 2× lower if the curve is noisy or rose, or a larger batch with "
        "gradient accumulation if the plan had to shrink it")


def test_the_cpu_target_reads_the_same_way() -> None:
    history = _history((0, 4.27, 0.3), (600, 1.901, 21.0), (700, 1.879, 24.6), (1000, 1.836, 35.0))
    assert run_verdict(history, 1.886) == "reached 1.886 at step 700 in 25 s"


def test_training_throughput_is_timed_over_at_least_fifty_steps_and_gives_tokens_and_mfu() -> None:
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(batch_size=4, grad_accum_steps=2, device="cpu", progress=False)
    with pytest.raises(ValueError, match="at least 50 steps"):
        measure_training_throughput(model, cfg, data[:400], data[400:], steps=MIN_TIMED_STEPS - 1)
    throughput = measure_training_throughput(model, cfg, data[:400], data[400:])
    assert throughput.steps == 50 and throughput.tokens_per_step == 4 * 2 * 8
    assert throughput.tokens_per_s == pytest.approx(64 / throughput.step_s)
    assert throughput.flops_per_token == model.flops_per_token(8)
    assert throughput.mfu == pytest.approx(throughput.tokens_per_s * throughput.flops_per_token
                                           / (throughput.peak_tflops * 1e12))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # untouched


def test_the_estimates_use_nanogpts_own_a100_mfu_and_the_datasheet_peaks() -> None:
    config = preset_config("char-medium", vocab_size=65)
    flops = GPT(config).flops_per_token(256)
    tokens_per_s = 5000 * 64 * 256 / 180  # nanoGPT's README: 5,000 steps of 64 × 256 in about 3 minutes
    assert nanogpt_a100_mfu(config) == pytest.approx(tokens_per_s * flops / 312e12)
    t4, h200 = expectation_rows(config)
    assert (t4.card, t4.precision, t4.peak_tflops, h200.precision, h200.peak_tflops) == (
        "Tesla T4", "fp16", 65.0, "bf16", 989.0)
    assert t4.tokens_per_s == pytest.approx(tokens_per_s * 65 / 312)  # the same MFU on a 65 TFLOP/s card
    assert t4.seconds == pytest.approx(5000 * 64 * 256 / t4.tokens_per_s)
    assert math.isclose(h200.seconds * 989, t4.seconds * 65)


def test_chapter_8_and_the_instructors_guide_show_the_computed_estimates() -> None:
    rows = expectation_markdown(preset_config("char-medium", vocab_size=65))
    notebook = json.loads((ROOT / "notebooks" / "08_the_full_run.ipynb").read_text(encoding="utf-8"))
    markdown = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    assert rows in markdown
    assert rows in (ROOT / "INSTRUCTORS.md").read_text(encoding="utf-8")
