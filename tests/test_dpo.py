"""Tests of lal.dpo: the loss on known numbers, response-only log-probabilities, a frozen reference,
pairs without held-out words, and `lal dpo`'s run folder (refusal, exact resume, metrics)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lal.cli import main
from lal.dpo import (
    DPOObjective,
    PreferenceBatches,
    PreferencePair,
    dpo_loss,
    heldout_words,
    make_preference_pairs,
    near_miss,
    pair_words,
    sequence_logprobs,
)
from lal.instructions import NUMBER_WORDS, Example, course_instructions, sum_split
from lal.model import GPT, GPTConfig
from lal.sft import encode_example
from lal.tokenizers import CHAT_SPECIAL_TOKENS, CharTokenizer

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :\n"


@pytest.fixture(scope="module")
def chars() -> CharTokenizer:
    return CharTokenizer.from_text(LETTERS, special_tokens=CHAT_SPECIAL_TOKENS)


def _model(tokenizer: CharTokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


# --- the loss ------------------------------------------------------------------------------------


def test_the_loss_equals_a_direct_computation_on_known_numbers() -> None:
    policy_chosen = torch.tensor([-3.0, -10.0])
    policy_rejected = torch.tensor([-5.0, -4.0])
    ref_chosen = torch.tensor([-4.0, -9.0])
    ref_rejected = torch.tensor([-4.0, -6.0])
    # pair 1: margin 0.5 · ((-3 + 4) - (-5 + 4)) = 1.0; pair 2: 0.5 · ((-10 + 9) - (-4 + 6)) = -1.5
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.5))) / 2
    loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(1.0073, abs=1e-4)  # 0.3133 and 1.7014, averaged
    # Equal policy and reference: every reward is 0 and the loss is log 2, whatever β.
    assert dpo_loss(ref_chosen, ref_rejected, ref_chosen, ref_rejected, beta=3.0).item() == pytest.approx(math.log(2))


def test_the_loss_stays_finite_for_huge_margins_and_its_gradient_is_right() -> None:
    chosen = torch.tensor([0.0, -1e4], requires_grad=True)
    loss = dpo_loss(chosen, torch.tensor([-1e4, 0.0]), torch.zeros(2), torch.zeros(2), beta=1.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1e4 / 2)
    loss.backward()
    # d/dc of softplus(-(c - r)) / 2 is -σ(-(c - r)) / 2: 0 for the won pair, -1/2 for the lost one.
    torch.testing.assert_close(chosen.grad, torch.tensor([0.0, -0.5]))


def test_sequence_logprobs_count_the_response_only(chars: CharTokenizer) -> None:
    model = _model(chars)
    ids, targets = encode_example(chars, "Reverse: abc", "cba")
    x, y = torch.tensor([ids]), torch.tensor([targets])
    logits, _ = model(x)
    log_probs = F.log_softmax(logits[0], dim=-1)  # (T, V)
    n_prompt = len(ids) - len("cba") - 2  # the response starts after <|assistant|>: predicted from position n_prompt
    by_hand = sum(log_probs[i, ids[i + 1]] for i in range(n_prompt, len(ids) - 1))  # 'c', 'b', 'a', <|end|>
    torch.testing.assert_close(sequence_logprobs(model, x, y), by_hand.reshape(1))
    # Another prompt before the same answer changes the context but the count of scored tokens stays 4.
    assert sum(t != -100 for t in targets) == 4
    other_ids, other_targets = encode_example(chars, "Reverse: abc and a longer prompt", "cba")
    assert sum(t != -100 for t in other_targets) == 4


def test_the_reference_is_frozen_and_gets_no_gradient(chars: CharTokenizer) -> None:
    policy, reference = _model(chars, 0), _model(chars, 1)
    objective = DPOObjective(reference, beta=0.1)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    pairs = [PreferencePair("Reverse: abc", "cba", "cab", "reverse"), PreferencePair("Repeat: ab", "ab", "a", "repeat")]
    batches = PreferenceBatches(pairs, chars, 2, 64)
    x, y = batches(0)
    assert x.shape[0] == 4  # (2B, T): two chosen rows, then the same pairs' rejected rows
    before = [p.detach().clone() for p in reference.parameters()]
    policy.train()
    loss = objective(policy, x, y)
    loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters()))
    # The same loss by hand, from the two models' sequence log-probabilities.
    with torch.no_grad():
        policy_logps, ref_logps = sequence_logprobs(policy, x, y), sequence_logprobs(reference, x, y)
    expected = -F.logsigmoid(0.1 * ((policy_logps[:2] - ref_logps[:2]) - (policy_logps[2:] - ref_logps[2:]))).mean()
    torch.testing.assert_close(loss.detach(), expected)
    metrics = objective.metrics(policy, x, y)
    assert metrics["loss"] == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["reward_margin"] == pytest.approx(
        (0.1 * ((policy_logps[:2] - ref_logps[:2]) - (policy_logps[2:] - ref_logps[2:]))).mean().item(), abs=1e-6)


# --- pairs -------------------------------------------------------------------------------------


def test_pairs_never_contain_heldout_words(chars: CharTokenizer) -> None:
    examples = course_instructions("train")[:400]
    forbidden = heldout_words()
    assert "fobun" in forbidden or len(forbidden) > 1000  # held-out and made-up words are there
    assert not set(NUMBER_WORDS) & forbidden
    # A random model gets (nearly) every answer wrong: its own answers are the rejected ones.
    pairs = make_preference_pairs(examples, _model(chars), chars, seed=0)
    near = make_preference_pairs(examples, seed=1)  # without a model: near-misses only
    assert len(pairs) == len(near) == len(examples)
    assert {p.source for p in near} == {"near_miss"} and "model" in {p.source for p in pairs}
    for pair, example in zip(pairs + near, examples + examples):
        assert (pair.prompt, pair.chosen, pair.task) == (example.prompt, example.response, example.task)
        assert pair.rejected.strip() != pair.chosen.strip()
        assert not pair_words(pair) & forbidden, pair
        if pair.task == "add":
            a, b = (NUMBER_WORDS.index(w) for w in pair.prompt.split(": ")[1].split(" and "))
            assert sum_split(a, b) == "train"
    with pytest.raises(ValueError, match="held-out instruction"):
        make_preference_pairs(course_instructions("heldout")[:8])


def test_near_misses_are_plausible_and_wrong() -> None:
    rng = random.Random(0)
    count = Example("Count the letters in: love", "four", "count")
    assert {near_miss(count, rng) for _ in range(20)} == {"three", "five"}  # off by one, both ways
    assert {near_miss(Example("Add: nine and ten", "nineteen", "add"), rng) for _ in range(20)} <= {"eighteen", "twenty"}
    for _ in range(50):
        wrong = near_miss(Example("Reverse: sleep", "peels", "reverse"), rng)
        assert wrong != "peels" and abs(len(wrong) - 5) <= 1 and set(wrong) <= set("peels")
    first = Example("First word of: kin rose tongue", "kin", "first_word")
    assert "rose" in {near_miss(first, rng) for _ in range(30)}  # the neighbouring word


# --- lal dpo --------------------------------------------------------------------------------------


@pytest.fixture
def chat_checkpoint(tmp_path: Path, chars: CharTokenizer, monkeypatch) -> tuple[Path, Path]:
    """A tiny random "fine-tuned" checkpoint, a text to score drift on, and 16 held-out prompts."""
    import lal.dpo
    from lal.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "chat" / "last.pt", _model(chars), chars)
    text = tmp_path / "text.txt"
    text.write_text("To be or not to be that is the question\n" * 40, encoding="utf-8")
    real = lal.dpo.course_instructions
    monkeypatch.setattr(lal.dpo, "course_instructions",
                        lambda split: real(split)[:16] if split == "heldout" else real(split))
    return tmp_path / "chat", text


def _dpo(ckpt: Path, text: Path, out: Path, *extra: str) -> int:
    return main(["dpo", "--ckpt", str(ckpt), "--out", str(out), "--text", str(text), "--steps", "6",
                 "--batch-size", "4", "--pairs", "40", "--eval-pairs", "8", "--device", "cpu", "--quiet", *extra])


def test_lal_dpo_writes_metrics_refuses_to_overwrite_and_resumes_exactly(
    chat_checkpoint: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    import lal.train as train_module
    from lal.checkpoint import load_checkpoint

    ckpt, text = chat_checkpoint
    # One thread count for the three runs: lal follows other programs' CPU use by changing torch's
    # thread count as it trains (lal/_cpu_load.py), which changes float rounding; OMP_NUM_THREADS pins it.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _dpo(ckpt, text, whole) == 0
    out = capsys.readouterr().out
    assert "Preference-tuned for 6 steps on 32 pairs" in out and "weakest first" in out
    metrics = [json.loads(line) for line in (whole / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rewards = [json.loads(line) for line in (whole / "rewards.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["step"] for row in metrics] == [row["step"] for row in rewards] == [0, 1, 2, 3, 4, 5, 6]
    assert rewards[0]["reward_margin"] == 0.0 and rewards[0]["reward_accuracy"] == 0.0  # policy = reference
    assert rewards[-1]["reward_margin"] > 0  # DPO widens the gap on pairs it never trained on
    assert metrics[1]["train_loss"] == pytest.approx(math.log(2), abs=0.05)  # the first step's loss: log 2
    assert len((whole / "pairs.jsonl").read_text(encoding="utf-8").splitlines()) == 40

    assert _dpo(ckpt, text, whole) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert load_checkpoint(whole).extra["heldout_accuracy"] is not None  # the run is untouched

    real_evaluate = train_module._Trainer._evaluate

    def evaluate_then_interrupt(self, *args):  # Ctrl-C right after the evaluation of step 3
        stop = real_evaluate(self, *args)
        if self.state.step == 3:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(train_module._Trainer, "_evaluate", evaluate_then_interrupt)
    assert _dpo(ckpt, text, cut) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(train_module._Trainer, "_evaluate", real_evaluate)
    assert _dpo(ckpt, text, cut, "--resume") == 0
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    for name in ("metrics.jsonl", "rewards.jsonl"):
        drop_time = [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                     for folder in (whole, cut) for line in (folder / name).read_text(encoding="utf-8").splitlines()]
        assert drop_time[: len(drop_time) // 2] == drop_time[len(drop_time) // 2:], name


def test_lal_dpo_needs_a_chat_model(tmp_path: Path) -> None:
    from lal.checkpoint import save_checkpoint

    plain = CharTokenizer.from_text(LETTERS)
    save_checkpoint(tmp_path / "base" / "best.pt", _model(plain), plain)
    text = tmp_path / "text.txt"
    text.write_text("abc\n" * 100, encoding="utf-8")
    assert _dpo(tmp_path / "base", text, tmp_path / "out") == 1
