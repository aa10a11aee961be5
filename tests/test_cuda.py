"""The GPU paths on a real CUDA GPU (skipped without one; CI has none): bf16, fp16 + scaler, fused
attention, fused AdamW, torch.compile, and no host-device synchronisation inside a training step."""

from __future__ import annotations


import pytest
import torch

from lal.bench import peak_tflops, table_peak_tflops
from lal.checkpoint import load_checkpoint
from lal.device import autocast, native_bf16, precision_name
from lal.model import GPT, GPTConfig
from lal.tokenizers import CharTokenizer
from lal.train import TrainConfig, Trainer, estimate_loss, train
from word_corpus import char_corpus, word_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    return char_corpus(word_text(4000, seed=2), n_train=18000)


def small_model(vocab_size: int, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128), **overrides}))


def gpu_config(**overrides) -> TrainConfig:
    values = dict(max_steps=60, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_interval=20,
                  eval_windows=32, device="cuda", seed=1, progress=False)
    return TrainConfig(**{**values, **overrides})


def test_precision_matches_the_hardware() -> None:
    major, _ = torch.cuda.get_device_capability()
    assert native_bf16("cuda") == (major >= 8)
    assert precision_name("cuda") == ("bf16" if major >= 8 else "fp16")
    with autocast("cuda"):
        product = torch.randn(8, 8, device="cuda") @ torch.randn(8, 8, device="cuda")
    assert product.dtype == (torch.bfloat16 if major >= 8 else torch.float16)


def test_this_gpu_has_its_datasheet_peak() -> None:
    name = torch.cuda.get_device_name()
    tflops, source = peak_tflops(torch.device("cuda"), precision_name("cuda"))
    if table_peak_tflops(name, precision_name("cuda")) is not None:
        assert "datasheet" in source
    assert tflops > 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sdpa_equals_the_explicit_path_on_the_gpu(precision: str) -> None:
    fused = small_model(65).cuda()
    explicit = small_model(65, attn_impl="explicit").cuda()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randint(0, 65, (4, 64), device="cuda")
    with autocast("cuda", precision):
        a, _ = fused(x)
        b, _ = explicit(x)
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_training_learns_with_fused_adamw(corpus, precision: str) -> None:
    tokenizer, train_ids, val_ids = corpus
    model = small_model(tokenizer.vocab_size)
    trainer = Trainer(model, train_ids, val_ids, gpu_config(precision=precision))
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.scaler.is_enabled() == (precision_name("cuda", precision) == "fp16")
    history = trainer.run(resume=False)
    assert history.val_loss[-1] < history.val_loss[0] - 0.8
    assert all(norm is None or norm == norm for norm in history.grad_norm)  # no NaN, even after skipped fp16 steps


def test_no_host_sync_inside_a_training_step(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    trainer = Trainer(small_model(tokenizer.vocab_size), train_ids, val_ids, gpu_config(grad_accum_steps=2))
    trainer.train_step()  # the first step allocates and picks kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_estimate_loss_defaults_to_the_models_device(corpus) -> None:
    tokenizer, _, val_ids = corpus
    model = small_model(tokenizer.vocab_size).cuda()
    assert estimate_loss(model, val_ids, torch.tensor([0, 100, 200]), 64, batch_size=2) > 0


def test_compiled_training_learns_and_saves_plain_keys(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    model = small_model(tokenizer.vocab_size)
    history = train(model, train_ids, val_ids, gpu_config(max_steps=40, compile=True, out_dir=tmp_path),
                    tokenizer=tokenizer)
    assert history.val_loss[-1] < history.val_loss[0] - 0.8
    saved = load_checkpoint(tmp_path / "best.pt")
    assert not any(key.startswith("_orig_mod.") for key in saved.model.state_dict())
