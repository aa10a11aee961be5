"""float16 with a gradient scaler, on the CPU: resume restores the scaler, skipped steps stay out of the metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lal.checkpoint import load_checkpoint
from lal.model import GPT, GPTConfig
from lal.tokenizers import CharTokenizer
from lal.train import TrainConfig, Trainer, estimate_loss, train
from word_corpus import char_corpus, word_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    return char_corpus(word_text(3000, seed=1), n_train=12000)


def fp16_config(**overrides) -> TrainConfig:
    # lr_decay_steps fixed: a 10-step run is then exactly the first half of a 20-step one.
    values = dict(max_steps=20, lr_decay_steps=20, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                  eval_interval=5, eval_windows=16, device="cpu", seed=3, progress=False, precision="fp16")
    return TrainConfig(**{**values, **overrides})


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1))


def strict_rows(path) -> list[dict]:
    """metrics.jsonl rows, refusing NaN and Infinity (which are not JSON)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not valid JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines()]


def test_fp16_uses_an_enabled_scaler_and_fp32_none(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    assert Trainer(tiny_model(tokenizer.vocab_size), train_ids, val_ids, fp16_config()).scaler.is_enabled()
    plain = Trainer(tiny_model(tokenizer.vocab_size), train_ids, val_ids, fp16_config(precision="auto"))
    assert not plain.scaler.is_enabled()


def test_skipped_fp16_steps_leave_the_gradient_norm_finite(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    trainer = Trainer(tiny_model(tokenizer.vocab_size), train_ids, val_ids, fp16_config(out_dir=tmp_path),
                      tokenizer=tokenizer)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)  # overflows until it has backed off
    history = trainer.run(resume=False)
    assert trainer.scaler.get_scale() <= 2.0**25  # at least 5 steps were skipped: each one halved the scale
    rows = strict_rows(tmp_path / "metrics.jsonl")
    norms = [row["grad_norm"] for row in rows[1:]]
    assert all(norm is None or math.isfinite(norm) for norm in norms)
    assert math.isfinite(norms[-1]) and norms[-1] > 0  # later steps were taken, and their norms averaged
    assert history.grad_norm == [row["grad_norm"] for row in rows]


def test_resume_restores_the_gradient_scaler(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def run(out_dir, max_steps: int, resume: bool, init_scale: float | None = None) -> Trainer:
        trainer = Trainer(tiny_model(tokenizer.vocab_size), train_ids, val_ids,
                          fp16_config(out_dir=out_dir, max_steps=max_steps), tokenizer=tokenizer)
        if init_scale is not None:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3)
        else:
            trainer.scaler = torch.amp.GradScaler("cpu", growth_interval=3)
        trainer.run(resume=resume)
        return trainer

    full = run(straight, 20, resume=False, init_scale=2.0**20)
    run(resumed, 10, resume=False, init_scale=2.0**20)
    saved = load_checkpoint(resumed / "last.pt").train_state["grad_scaler"]
    assert saved["scale"] != 2.0**20  # it moved (grew every 3 clean steps): there is something to restore
    continued = run(resumed, 20, resume=True)  # a fresh scaler (2**16) unless the saved one is loaded
    assert continued.scaler.get_scale() == full.scaler.get_scale()
    assert continued.scaler.state_dict() == full.scaler.state_dict()
    without_time = [[{k: v for k, v in row.items() if k != "elapsed_s"} for row in strict_rows(d / "metrics.jsonl")]
                    for d in (straight, resumed)]
    assert without_time[0] == without_time[1]


def test_estimate_loss_runs_where_the_model_is(corpus) -> None:
    tokenizer, _, val_ids = corpus
    model = tiny_model(tokenizer.vocab_size).to(torch.float64)  # another dtype: the windows must still fit it
    starts = torch.tensor([0, 40, 80])
    assert estimate_loss(model, val_ids, starts, 16, batch_size=2) > 0
