"""The training loop: schedule, optimiser groups, learning, exact resume, accumulation, stopping, NaN."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from lal import train as lal_train
from lal.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from lal.data import eval_windows, get_batch
from lal.model import GPT, GPTConfig
from lal.tokenizers import CharTokenizer
from lal.train import (
    EvalEvent,
    History,
    TrainConfig,
    TrainingDivergedError,
    default_train_config,
    estimate_loss,
    forward_backward,
    lr_at,
    make_optimizer,
    train,
)

WORDS = ["the", "king", "queen", "shall", "speak", "of", "love", "and", "death", "now"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.py)


def make_text(n_words: int = 3000, seed: int = 0) -> str:
    """Random words from a small list: learnable spelling, unpredictable word order."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "\n"


@pytest.fixture(scope="module")
def corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    text = make_text()
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(0.9 * len(ids))
    return tokenizer, ids[:split], ids[split:]


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    values = dict(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**values, **overrides}))


def quick_config(**overrides) -> TrainConfig:
    values = dict(max_steps=40, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10,
                  eval_windows=16, device="cpu", seed=7, progress=False)
    return TrainConfig(**{**values, **overrides})


def parameters(model: GPT) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------ schedule, optimiser


def test_lr_schedule_warmup_then_cosine_exact_values() -> None:
    cfg = TrainConfig(max_steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4, rel=1e-12)  # lr / warmup_steps
    assert lr_at(4, cfg) == pytest.approx(5e-4, rel=1e-12)
    assert lr_at(9, cfg) == pytest.approx(1e-3, rel=1e-12)  # warmup ends at the peak
    assert lr_at(10, cfg) == pytest.approx(1e-3, rel=1e-12)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(5.5e-4, rel=1e-12)  # halfway: (lr + min_lr) / 2
    assert lr_at(110, cfg) == pytest.approx(1e-4, rel=1e-12)  # the end: min_lr
    assert lr_at(500, cfg) == pytest.approx(1e-4, rel=1e-12)  # and it stays there
    longer = TrainConfig(max_steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_decay_steps=210)
    assert lr_at(110, longer) == pytest.approx(5.5e-4, rel=1e-12)
    assert lr_at(0, TrainConfig(warmup_steps=0, lr=2e-3)) == pytest.approx(2e-3, rel=1e-12)


def test_optimizer_decays_matrices_only(corpus) -> None:
    model = tiny_model(corpus[0].vocab_size)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1, beta1=0.8, beta2=0.9, lr=5e-3))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # 2 layers × (c_attn, attn c_proj, c_fc, mlp c_proj) + wte (= lm_head, once) + wpe
    assert len(decay["params"]) == 10
    # 2 layers × (2 LayerNorms × 2 + 4 biases) + ln_f × 2
    assert len(no_decay["params"]) == 18
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()
    assert decay["betas"] == (0.8, 0.9) and decay["lr"] == 5e-3


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="min_lr must be between 0 and lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="grad_clip must be positive or None"):
        TrainConfig(grad_clip=0.0)
    with pytest.raises(ValueError, match="No training defaults for preset 'huge'"):
        default_train_config("huge")
    assert default_train_config("char-tiny") == TrainConfig()
    assert default_train_config("char-small", max_steps=5).max_steps == 5


# ------------------------------------------------------------------------------ learning


def test_initial_loss_is_close_to_ln_vocab_size() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    idx = torch.randint(0, 65, (16, 64))
    targets = torch.randint(0, 65, (16, 64))
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(65), rel=0.02)  # 4.174: a uniform guess


def test_a_few_hundred_steps_learn_the_spelling(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    model = tiny_model(tokenizer.vocab_size)
    history = train(model, train_ids, val_ids, quick_config(max_steps=300, eval_interval=100, batch_size=16))
    assert history.step == [0, 100, 200, 300]
    assert history.val_loss[0] == pytest.approx(math.log(tokenizer.vocab_size), rel=0.05)
    # Word order is random (≈ log 10 nats per word, ≈ 0.5 nats per character); spelling is learnable.
    assert history.val_loss[-1] < 1.0
    assert history.train_loss[0] is None and history.train_loss[-1] < 1.0
    assert history.best_step == 300 and history.stopped_reason == "max_steps"
    assert history.tokens[-1] == 300 * 16 * 16
    assert all(later >= earlier for earlier, later in zip(history.elapsed_s, history.elapsed_s[1:]))


def test_estimate_loss_scores_fixed_windows_and_restores_the_mode(corpus) -> None:
    tokenizer, _, val_ids = corpus
    model = tiny_model(tokenizer.vocab_size, dropout=0.5)
    starts = eval_windows(val_ids, 12, 16, seed=0)
    first = estimate_loss(model, val_ids, starts, 16, batch_size=5)
    second = estimate_loss(model, val_ids, starts, 16, batch_size=12)
    assert model.training  # back in training mode
    windows = torch.stack([val_ids[s : s + 17] for s in starts.tolist()])  # (12, 17)
    model.eval()
    _, expected = model(windows[:, :-1], windows[:, 1:])
    assert first == pytest.approx(expected.item(), rel=1e-6)  # no dropout, batching does not matter
    assert second == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------------ accumulation


def test_gradient_accumulation_equals_one_big_batch(corpus) -> None:
    _, train_ids, _ = corpus
    x = torch.stack([train_ids[i : i + 16] for i in range(0, 800, 100)])  # (8, 16)
    y = torch.stack([train_ids[i + 1 : i + 17] for i in range(0, 800, 100)])
    big, small = tiny_model(corpus[0].vocab_size), tiny_model(corpus[0].vocab_size)
    loss_big = forward_backward(big, [(x, y)], 1)
    loss_small = forward_backward(small, [(x[:4], y[:4]), (x[4:], y[4:])], 2)
    assert loss_small.item() == pytest.approx(loss_big.item(), rel=1e-6)
    for (name, p_big), p_small in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(p_small.grad, p_big.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_accumulation_follows_the_big_batch_run(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    big, small = tiny_model(tokenizer.vocab_size), tiny_model(tokenizer.vocab_size)
    history_big = train(big, train_ids, val_ids, quick_config(max_steps=5, batch_size=8))
    history_small = train(small, train_ids, val_ids, quick_config(max_steps=5, batch_size=4, grad_accum_steps=2))
    assert history_small.tokens == history_big.tokens
    # Adam is blind to a constant scale on the gradient (a sum instead of a mean would still move
    # the weights alike): the losses and the gradient norms before clipping are not.
    assert history_small.train_loss[1:] == pytest.approx(history_big.train_loss[1:], rel=1e-5)
    assert history_small.grad_norm[1:] == pytest.approx(history_big.grad_norm[1:], rel=1e-4)
    # Adam divides by the gradient size, so tiny float differences in near-zero gradients (the key
    # biases have none in exact arithmetic) show up at the 1e-6 level: allow 1e-5.
    torch.testing.assert_close(parameters(small), parameters(big), rtol=1e-4, atol=1e-5)


def test_a_batch_function_trains_like_token_data(corpus) -> None:
    """Fine-tuning passes ``batches(i) -> (x, y)``; the same batches must give the same training."""
    tokenizer, train_ids, val_ids = corpus
    generator = torch.Generator().manual_seed(7)  # the seed quick_config gives the trainer's own generator
    calls = []

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(i)
        return get_batch(train_ids, 4, 16, "cpu", generator)

    from_tokens, from_function = tiny_model(tokenizer.vocab_size), tiny_model(tokenizer.vocab_size)
    history = train(from_tokens, train_ids, val_ids, quick_config(max_steps=6, batch_size=4, grad_accum_steps=2))
    history_fn = train(from_function, batches, val_ids, quick_config(max_steps=6, batch_size=4, grad_accum_steps=2))
    assert calls == list(range(12))  # micro-batch i of step s is batches(s * grad_accum_steps + i)
    assert history_fn.val_loss == history.val_loss and history_fn.tokens == history.tokens == [0, 6 * 2 * 4 * 16]
    torch.testing.assert_close(parameters(from_function), parameters(from_tokens), rtol=0, atol=0)


# ------------------------------------------------------------------------------ clipping


def test_clipping_records_the_norm_before_and_hands_adamw_the_clipped_gradient(corpus, monkeypatch) -> None:
    tokenizer, train_ids, val_ids = corpus
    cfg = quick_config(max_steps=1, eval_interval=1, batch_size=4, grad_clip=0.05)
    # The first step's gradient, computed independently: the same initial weights and the batch
    # the trainer draws first (its generator is seeded with cfg.seed).
    reference = tiny_model(tokenizer.vocab_size)
    batch = get_batch(train_ids, cfg.batch_size, 16, "cpu", torch.Generator().manual_seed(cfg.seed))
    forward_backward(reference, [batch], 1)
    norm_before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    assert norm_before > 10 * cfg.grad_clip  # the case where clipping must act

    seen_by_adamw = []
    real_make_optimizer = lal_train.make_optimizer

    def recording_optimizer(model, config):
        optimizer = real_make_optimizer(model, config)
        real_step = optimizer.step

        def step(*args, **kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            seen_by_adamw.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            return real_step(*args, **kwargs)

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(lal_train, "make_optimizer", recording_optimizer)
    history = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, cfg)
    assert history.grad_norm[1] == pytest.approx(norm_before, rel=1e-4)  # recorded: the norm before clipping
    assert seen_by_adamw == [pytest.approx(cfg.grad_clip, rel=1e-4)]  # used: the clipped gradient


# ------------------------------------------------------------------------------ files and resume


def test_metrics_file_and_checkpoints(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    model = tiny_model(tokenizer.vocab_size)
    history = train(model, train_ids, val_ids, quick_config(max_steps=25, out_dir=tmp_path), tokenizer=tokenizer)
    assert history.step == [0, 10, 20, 25]  # every eval_interval, and at the end
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["step"] for row in rows] == [0, 10, 20, 25]
    assert set(rows[-1]) >= {"step", "elapsed_s", "tokens", "train_loss", "val_loss", "lr"}
    assert rows == history.rows()
    assert History.from_jsonl(tmp_path / "metrics.jsonl").val_loss == history.val_loss
    last = load_checkpoint(tmp_path / "last.pt")
    assert last.train_state["step"] == 25
    best = load_checkpoint(tmp_path)  # a folder: best.pt
    assert best.extra["step"] == history.best_step
    assert best.extra["val_loss"] == pytest.approx(history.best_val_loss)
    assert best.tokenizer.encode("the king") == tokenizer.encode("the king")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    # A second run into the same folder starts a fresh metrics file instead of appending to the old one.
    train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(max_steps=10, out_dir=tmp_path),
          tokenizer=tokenizer)
    assert len((tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_resume_equals_an_uninterrupted_run(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    cfg = dict(max_steps=40, batch_size=4, grad_accum_steps=2)  # dropout exercises torch's own RNG too
    straight = tiny_model(tokenizer.vocab_size, dropout=0.1)
    history = train(straight, train_ids, val_ids, quick_config(out_dir=tmp_path / "a", **cfg), tokenizer=tokenizer)

    def interrupt_at_step_20(event: EvalEvent) -> None:
        if event.step == 20:
            raise KeyboardInterrupt

    interrupted = tiny_model(tokenizer.vocab_size, dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, train_ids, val_ids, quick_config(out_dir=tmp_path / "b", **cfg), tokenizer=tokenizer,
              callbacks=[interrupt_at_step_20])
    torch.manual_seed(999)  # whatever happened in between must not matter
    resumed = tiny_model(tokenizer.vocab_size, seed=5, dropout=0.1)
    resumed_history = train(resumed, train_ids, val_ids, quick_config(out_dir=tmp_path / "b", **cfg),
                            tokenizer=tokenizer, resume=True)
    torch.testing.assert_close(parameters(resumed), parameters(straight), rtol=0, atol=0)
    assert resumed_history.step == history.step == [0, 10, 20, 30, 40]
    assert resumed_history.val_loss == history.val_loss
    assert resumed_history.train_loss == history.train_loss
    metrics = History.from_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert metrics.step == history.step and metrics.val_loss == history.val_loss


def test_resume_after_the_end_with_more_steps_continues(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    straight = tiny_model(tokenizer.vocab_size)
    train(straight, train_ids, val_ids, quick_config(max_steps=30, lr_decay_steps=30), tokenizer=tokenizer)
    first = tiny_model(tokenizer.vocab_size)
    train(first, train_ids, val_ids, quick_config(max_steps=20, lr_decay_steps=30, out_dir=tmp_path),
          tokenizer=tokenizer)
    more = tiny_model(tokenizer.vocab_size)
    history = train(more, train_ids, val_ids, quick_config(max_steps=30, lr_decay_steps=30, out_dir=tmp_path),
                    tokenizer=tokenizer, resume=True)
    assert history.step == [0, 10, 20, 30]
    torch.testing.assert_close(parameters(more), parameters(straight), rtol=0, atol=0)


def test_resume_without_a_checkpoint_says_so(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    with pytest.raises(CheckpointError, match="Cannot resume: there is no .*last.pt"):
        train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(out_dir=tmp_path),
              tokenizer=tokenizer, resume=True)


def test_out_dir_needs_a_tokenizer_and_context_must_fit(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    with pytest.raises(ValueError, match="Checkpoints need the tokenizer"):
        train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(out_dir=tmp_path))
    with pytest.raises(ValueError, match="block_size=32 is longer than the model's context"):
        train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(block_size=32))


# ------------------------------------------------------------------------------ stopping


def test_early_stopping_after_patience_evaluations_without_improvement(corpus, tmp_path) -> None:
    tokenizer, train_ids, val_ids = corpus
    # min_delta is larger than any progress, so only the first evaluation (from infinity) counts.
    cfg = quick_config(max_steps=100, patience=2, min_delta=100.0, out_dir=tmp_path)
    history = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, cfg, tokenizer=tokenizer)
    assert history.step == [0, 10, 20]
    assert history.stopped_reason == "early_stopping"
    assert read_checkpoint(tmp_path / "last.pt")[0]["train_state"]["step"] == 20
    assert read_checkpoint(tmp_path / "best.pt")[0]["extra"]["step"] == history.best_step == 20


def test_resume_keeps_the_early_stopping_count(corpus, tmp_path) -> None:
    """A run interrupted while it waits for an improvement must stop where the straight run stops."""
    tokenizer, train_ids, val_ids = corpus
    settings = dict(max_steps=300, patience=2, min_delta=0.02, eval_interval=10)
    straight = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids,
                     quick_config(out_dir=tmp_path / "a", **settings), tokenizer=tokenizer)
    assert straight.stopped_reason == "early_stopping" and straight.step[-1] < 300
    stop_step = straight.step[-1]
    interrupt_at = stop_step - 10  # one evaluation without improvement already counted

    def interrupt(event: EvalEvent) -> None:
        if event.step == interrupt_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(out_dir=tmp_path / "b", **settings),
              tokenizer=tokenizer, callbacks=[interrupt])
    assert read_checkpoint(tmp_path / "b" / "last.pt")[0]["train_state"]["evals_since_best"] == 1
    resumed = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids,
                    quick_config(out_dir=tmp_path / "b", **settings), tokenizer=tokenizer, resume=True)
    assert resumed.stopped_reason == "early_stopping"
    assert resumed.step == straight.step and resumed.val_loss == straight.val_loss


def test_target_val_loss_stops_at_the_first_evaluation_that_reaches_it(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    history = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids,
                    quick_config(max_steps=500, target_val_loss=2.4))
    assert history.stopped_reason == "target_val_loss"
    assert history.val_loss[-1] <= 2.4 < history.val_loss[-2]
    assert history.step[-1] < 500


def test_a_callback_can_stop_training(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    seen = []

    def stop_at_20(event: EvalEvent) -> None:
        seen.append((event.step, event.history.step[-1], event.improved))
        event.stop = event.step == 20

    history = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(), callbacks=[stop_at_20])
    assert seen == [(0, 0, True), (10, 10, True), (20, 20, True)]
    assert history.stopped_reason == "callback"


def test_callbacks_see_the_gradient_norm_of_every_step(corpus) -> None:
    tokenizer, train_ids, val_ids = corpus
    per_step: list[list[float]] = []
    history = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(),
                    callbacks=[lambda event: per_step.append(event.grad_norms)])
    assert [len(norms) for norms in per_step] == [0, 10, 10, 10, 10]  # none before the first step
    for norms, mean in zip(per_step[1:], history.grad_norm[1:]):
        assert math.isclose(sum(norms) / len(norms), mean, rel_tol=1e-5)
    unclipped = train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(grad_clip=None),
                      callbacks=[lambda event: per_step.append(event.grad_norms)])
    assert unclipped.grad_norm[-1] is None and per_step[-1] == []  # measured only where clipping is on


# ------------------------------------------------------------------------------ divergence


def poison_after(model: GPT, flag: dict) -> None:
    """Make the logits NaN once ``flag["on"]`` is set: a stand-in for a training run that blows up."""

    def hook(module, inputs, output):
        return output * float("nan") if flag["on"] else output

    model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("reads_are_free", [True, False], ids=["cpu-checks-every-step", "gpu-checks-at-eval"])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch, reads_are_free) -> None:
    monkeypatch.setattr(lal_train, "_reads_are_free", lambda device: reads_are_free)
    tokenizer, train_ids, val_ids = corpus
    model = tiny_model(tokenizer.vocab_size)
    flag = {"on": False}
    poison_after(model, flag)

    def poison_at_step_20(event: EvalEvent) -> None:
        flag["on"] = event.step == 20

    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at step 21 .*last good checkpoint is .*last\.pt "
                                                    r"\(step 20\).*lower learning rate") as caught:
        train(model, train_ids, val_ids, quick_config(out_dir=tmp_path), tokenizer=tokenizer,
              callbacks=[poison_at_step_20])
    assert caught.value.step == 21
    assert caught.value.last_good_checkpoint == tmp_path / "last.pt"
    assert caught.value.history.stopped_reason == "diverged"
    last = load_checkpoint(tmp_path / "last.pt")
    assert last.train_state["step"] == 20
    assert all(torch.isfinite(p).all() for p in last.model.parameters())
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()] \
        == [0, 10, 20]
    if reads_are_free:  # caught before the update: the model in memory is still the good one
        torch.testing.assert_close(parameters(model), parameters(last.model), rtol=0, atol=0)


def test_out_of_memory_in_training_names_the_settings_to_lower(corpus, monkeypatch) -> None:
    tokenizer, train_ids, val_ids = corpus

    def out_of_memory(self, resume):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(lal_train._Trainer, "run", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as caught:
        train(tiny_model(tokenizer.vocab_size), train_ids, val_ids, quick_config(batch_size=8, grad_accum_steps=2))
    assert str(caught.value) == (
        "Out of cpu memory with micro-batches of 8 windows × 16 tokens. Lower --batch-size (e.g. --batch-size 4 "
        "--grad-accum-steps 4 trains the same global batch in less memory), or --block-size, or pick a smaller "
        "--preset. `lal train --dry-run` shows what fits. (CUDA out of memory. Tried to allocate 2.00 GiB)"
    )
