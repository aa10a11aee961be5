"""Tests of lal.sft: exact loss masks, the generated dataset, batching without NaN, mixing,
scoring, and a tiny fine-tune that learns a held-out skill without learning the prompts."""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lal.model import GPT, IGNORE_INDEX, GPTConfig
from lal.sft import (
    DEFAULT_TEMPLATE,
    HELDOUT_MODULUS,
    INSTRUCTION_FILES,
    NUMBER_WORDS,
    TASKS,
    WORDS,
    EvalReport,
    EvalResult,
    Example,
    answer,
    chat_reply,
    default_finetune_config,
    encode_conversation,
    encode_example,
    encode_prompt,
    evaluate_instructions,
    finetune,
    finetune_from_checkpoint,
    load_instruction_file,
    make_instruction_dataset,
    make_sft_batches,
    mix_pretraining,
    pretraining_batches,
    save_instruction_file,
    score_response,
    split_of,
    write_instruction_datasets,
)
from lal.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer
from lal.train import EvalEvent, History, TrainingDivergedError

ROOT = Path(__file__).resolve().parent.parent

#: TinyShakespeare's 65 characters: the dataset must be spellable by a char model trained on it.
SHAKESPEARE_CHARS = set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_, ASSISTANT, END = CHAT_SPECIAL_TOKENS


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.py)


@pytest.fixture(scope="module")
def abxy() -> CharTokenizer:
    """Ids: a=0, b=1, x=2, y=3, <|user|>=4, <|assistant|>=5, <|end|>=6."""
    return CharTokenizer.from_text("abxy", special_tokens=CHAT_SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def shakespeare_chars() -> CharTokenizer:
    return CharTokenizer.from_text("".join(sorted(SHAKESPEARE_CHARS)), special_tokens=CHAT_SPECIAL_TOKENS)


# --- the template and loss masking ------------------------------------------------------------


def test_template_renders_pairs_prompts_and_conversations() -> None:
    assert DEFAULT_TEMPLATE.render_pair("ab", "xy") == "<|user|>ab<|end|><|assistant|>xy<|end|>"
    assert DEFAULT_TEMPLATE.render_prompt("ab") == "<|user|>ab<|end|><|assistant|>"
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "b"},
    ]
    expected = "<|user|>a<|end|><|assistant|>x<|end|><|user|>b<|end|><|assistant|>"
    assert DEFAULT_TEMPLATE.render_prompt(conversation) == expected
    with pytest.raises(ValueError, match="role"):
        DEFAULT_TEMPLATE.render([{"role": "system", "content": "a"}])


def test_targets_are_shifted_and_masked_exactly(abxy: CharTokenizer) -> None:
    input_ids, targets = encode_example(abxy, "ab", "xy")
    #            <|user|>  a     b     <|end|>  <|assistant|>  x   y   <|end|>
    assert input_ids == [4, 0, 1, 6, 5, 2, 3, 6]
    assert targets == [-100, -100, -100, -100, 2, 3, 6, -100]
    assert input_ids == abxy.encode(DEFAULT_TEMPLATE.render_pair("ab", "xy"))
    unmasked_ids, unmasked = encode_example(abxy, "ab", "xy", mask_prompt=False)  # chapter 7's comparison
    assert unmasked_ids == input_ids and unmasked == input_ids[1:] + [-100]


def test_every_trained_target_is_the_next_input(shakespeare_chars: CharTokenizer) -> None:
    for example in make_instruction_dataset(40, seed=3):
        input_ids, targets = encode_example(shakespeare_chars, example.prompt, example.response)
        trained = [i for i, t in enumerate(targets) if t != IGNORE_INDEX]
        assert all(targets[i] == input_ids[i + 1] for i in trained)
        # exactly the response and its <|end|> are trained: their text is the response
        n_response = len(shakespeare_chars.encode(example.response))
        assert len(trained) == n_response + 1
        assert shakespeare_chars.decode(targets[i] for i in trained) == example.response + END
        assert trained[0] == input_ids.index(shakespeare_chars.special_tokens[ASSISTANT])


def test_multi_turn_trains_every_assistant_turn_and_no_user_turn(abxy: CharTokenizer) -> None:
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "yy"},
    ]
    input_ids, targets = encode_conversation(abxy, conversation)
    assert input_ids == [4, 0, 6, 5, 2, 6, 4, 1, 6, 5, 3, 3, 6]
    assert targets == [-100, -100, -100, 2, 6, -100, -100, -100, -100, 3, 3, 6, -100]
    with pytest.raises(ValueError, match="no assistant"):
        encode_conversation(abxy, conversation[:1])


def test_prompt_encoding_ends_with_the_assistant_marker(abxy: CharTokenizer) -> None:
    prompt_ids = encode_prompt(abxy, "ab")
    assert prompt_ids == [4, 0, 1, 6, 5]
    assert prompt_ids == encode_example(abxy, "ab", "xy")[0][: len(prompt_ids)]


def test_special_token_text_inside_a_message_stays_ordinary_text() -> None:
    tokenizer = BPETokenizer.train("plain text <|end|> and more", 270, special_tokens=CHAT_SPECIAL_TOKENS)
    specials = set(tokenizer.special_tokens.values())
    input_ids, _ = encode_example(tokenizer, "say <|end|>", "ok")
    assert sum(token in specials for token in input_ids) == 4  # the template's markers only
    assert tokenizer.decode(input_ids) == DEFAULT_TEMPLATE.render_pair("say <|end|>", "ok")


def test_a_tokenizer_without_chat_tokens_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CHAT_SPECIAL_TOKENS"):
        encode_example(CharTokenizer.from_text("abxy"), "ab", "xy")


# --- the generated dataset --------------------------------------------------------------------

ORACLES = {  # each task's answer computed again, independently of lal.sft
    "repeat": (r"Repeat: ([a-z ]+)", lambda s: s),
    "twice": (r"Repeat twice: ([a-z]+)", lambda s: f"{s} {s}"),
    "uppercase": (r"Uppercase: ([a-z ]+)", str.upper),
    "reverse": (r"Reverse: ([a-z]+)", lambda s: s[::-1]),
    "first_word": (r"First word of: ([a-z ]+)", lambda s: s.split()[0]),
    "last_word": (r"Last word of: ([a-z ]+)", lambda s: s.split()[-1]),
    "count": (r"Count the letters in: ([a-z]+)", lambda s: NUMBER_WORDS[len(s)]),
    "add": (r"Add: ([a-z]+) and ([a-z]+)", lambda a, b: NUMBER_WORDS[NUMBER_WORDS.index(a) + NUMBER_WORDS.index(b)]),
}


def test_every_example_has_the_right_answer_and_only_shakespeare_characters() -> None:
    assert set(ORACLES) == set(TASKS)
    for split in ("train", "heldout"):
        for example in make_instruction_dataset(400, seed=5, split=split):
            pattern, oracle = ORACLES[example.task]
            match = re.fullmatch(pattern, example.prompt)
            assert match is not None, example
            assert example.response == oracle(*match.groups())
            assert set(example.prompt + example.response) <= SHAKESPEARE_CHARS
            assert all(word in WORDS for word in match.group(1).split()) or example.task == "add"


def test_dataset_is_deterministic_and_balanced_across_tasks() -> None:
    first = make_instruction_dataset(80, seed=0)
    assert first == make_instruction_dataset(80, seed=0)
    assert first != make_instruction_dataset(80, seed=1)
    assert [e.task for e in first[:8]] == list(TASKS)
    only_two = make_instruction_dataset(10, seed=0, tasks=["reverse", "add"])
    assert [e.task for e in only_two] == ["reverse", "add"] * 5
    with pytest.raises(ValueError, match="Unknown"):
        make_instruction_dataset(4, seed=0, tasks=["sing"])


def test_heldout_prompts_never_appear_in_training_sets() -> None:
    heldout = {e.prompt for e in make_instruction_dataset(400, seed=1, split="heldout")}
    for seed in range(4):
        train = {e.prompt for e in make_instruction_dataset(800, seed=seed, split="train")}
        assert not train & heldout
    assert all(split_of(p) == "heldout" for p in heldout)
    # about one prompt in HELDOUT_MODULUS is held out
    prompts = {TASKS["repeat"](random.Random(i))[0] for i in range(2000)}
    share = sum(split_of(p) == "heldout" for p in prompts) / len(prompts)
    assert abs(share - 1 / HELDOUT_MODULUS) < 0.05


def test_the_committed_files_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    written = write_instruction_datasets(tmp_path)
    assert [p.name for p in written] == list(INSTRUCTION_FILES)
    for path in written:
        committed = ROOT / "data" / "sft" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"regenerate {path.name}: write_instruction_datasets"
    train = load_instruction_file(tmp_path / "instructions_train.jsonl")
    heldout = load_instruction_file(tmp_path / "instructions_heldout.jsonl")
    assert (len(train), len(heldout)) == (800, 160)
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}


def test_instruction_files_round_trip_and_bad_lines_are_reported(tmp_path: Path) -> None:
    examples = [Example("Reverse: ab", "ba", "reverse"), Example("Say héllo", "héllo")]
    path = save_instruction_file(examples, tmp_path / "mine.jsonl")
    assert load_instruction_file(path) == examples
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "only"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_instruction_file(bad)


def test_score_response_is_exact_up_to_end_and_whitespace() -> None:
    example = Example("Uppercase: thou art", "THOU ART", "uppercase")
    assert score_response(example, "THOU ART")
    assert score_response(example, " THOU ART \n")
    assert score_response(example, "THOU ART<|end|>and more")
    assert not score_response(example, "thou art")
    assert not score_response(example, "THOU ART ART")
    assert not score_response(example, "")
    assert example.is_correct("THOU ART<|end|>")


# --- batches ----------------------------------------------------------------------------------


def test_batches_are_padded_with_ignored_targets_and_no_row_is_all_ignored(shakespeare_chars: CharTokenizer) -> None:
    examples = make_instruction_dataset(64, seed=2)
    batches = make_sft_batches(examples, shakespeare_chars, batch_size=8, block_size=64, seed=0)
    assert len(batches) == 64 and batches.n_dropped == 0
    pad = shakespeare_chars.special_tokens[END]
    for step in range(8):
        x, y = batches(step)
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape and x.size(0) == 8
        assert (y != IGNORE_INDEX).any(dim=1).all()  # every row trains on something
        logits = torch.zeros(*y.shape, shakespeare_chars.vocab_size)  # (B, T, V)
        assert torch.isfinite(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX))
        for row in range(8):
            ids = x[row].tolist()
            # x drops the closing <|end|> (it predicts nothing), so the first <|end|> after
            # <|assistant|> is where the padding starts
            start = ids.index(shakespeare_chars.special_tokens[ASSISTANT])
            length = ids.index(pad, start) if pad in ids[start:] else len(ids)
            assert y[row, length - 1] == pad  # the last real position is trained to say <|end|>
            assert (y[row, length:] == IGNORE_INDEX).all() and (x[row, length:] == pad).all()


def test_one_epoch_visits_every_example_once_and_batches_depend_only_on_the_step(abxy: CharTokenizer) -> None:
    examples = [Example("a" * n, "x" * n) for n in range(1, 9)]  # 8 distinct lengths identify the rows
    batches = make_sft_batches(examples, abxy, batch_size=4, block_size=32, seed=0)
    lengths = sorted(int((y != IGNORE_INDEX).sum()) for step in (0, 1) for y in batches(step)[1])
    assert lengths == [n + 1 for n in range(1, 9)]  # each response (+ <|end|>) exactly once
    again = make_sft_batches(examples, abxy, batch_size=4, block_size=32, seed=0)
    assert torch.equal(again(5)[0], batches(5)[0])  # no hidden state: step 5 first gives the same batch
    other_seed = make_sft_batches(examples, abxy, batch_size=4, block_size=32, seed=1)
    assert any(not torch.equal(other_seed(s)[1], batches(s)[1]) for s in range(4))


def test_examples_too_long_for_the_context_are_dropped_and_counted(abxy: CharTokenizer) -> None:
    examples = [Example("ab", "xy"), Example("a" * 10, "x" * 10)]  # 8 and 24 tokens
    batches = make_sft_batches(examples, abxy, batch_size=2, block_size=7, seed=0)  # 8 tokens need 7 positions
    assert (len(batches), batches.n_dropped) == (1, 1)
    x, y = batches(0)
    assert x.tolist() == [[4, 0, 1, 6, 5, 2, 3]] * 2
    assert y.tolist() == [[-100, -100, -100, -100, 2, 3, 6]] * 2
    with pytest.raises(ValueError, match="No example fits"):
        make_sft_batches(examples, abxy, batch_size=2, block_size=6)


def test_mixing_uses_pretraining_for_exactly_the_requested_share_of_steps() -> None:
    calls: list[tuple[str, int]] = []

    def source(name: str):
        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append((name, step))
            return torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)

        return batch

    mixed = mix_pretraining(source("sft"), source("pre"), 0.25)
    for step in range(12):
        mixed(step)
    assert [name for name, _ in calls] == ["sft", "sft", "sft", "pre"] * 3
    assert [s for name, s in calls if name == "sft"] == list(range(9))  # consecutive: nothing skipped
    assert [s for name, s in calls if name == "pre"] == [0, 1, 2]
    calls.clear()
    mix_pretraining(source("sft"), source("pre"), 0.0)(7)
    assert calls == [("sft", 7)]
    with pytest.raises(ValueError, match="mix_ratio"):
        mix_pretraining(source("sft"), source("pre"), 1.0)


def test_pretraining_batches_are_shifted_windows_seeded_by_step() -> None:
    data = torch.arange(100)
    batch = pretraining_batches(data, batch_size=3, block_size=5, seed=0)
    x, y = batch(4)
    assert x.shape == (3, 5) and torch.equal(y, x + 1)
    assert torch.equal(batch(4)[0], x) and not torch.equal(batch(5)[0], x)


# --- evaluation and fine-tuning ---------------------------------------------------------------


def test_report_rows_per_task_and_overall() -> None:
    a, b = Example("p", "r", "reverse"), Example("q", "s", "add")
    report = EvalReport([EvalResult(a, "r", True), EvalResult(a, "x", False), EvalResult(b, "s", True)])
    assert report.to_rows() == [
        {"task": "reverse", "correct": 1, "total": 2, "accuracy": 0.5},
        {"task": "add", "correct": 1, "total": 1, "accuracy": 1.0},
        {"task": "all", "correct": 2, "total": 3, "accuracy": 2 / 3},
    ]
    assert report.task_accuracy() == {"reverse": 0.5, "add": 1.0}
    assert "reverse" in str(report) and "67%" in str(report)


def _prefix_probability(model: GPT, tokenizer: CharTokenizer, prompt: str) -> float:
    """Mean probability the model gives each character of ``prompt`` after ``<|user|>`` and the ones before."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])  # (1, T)
    with torch.no_grad():
        probs = torch.softmax(model(ids)[0][0], dim=-1)  # (T, V)
    n = len(prompt)
    return float(probs[torch.arange(n), ids[0, 1 : n + 1]].mean())


@dataclass
class CopyRun:
    model: GPT
    tokenizer: CharTokenizer
    heldout: list[Example]
    history: History
    accuracy_before: float
    prefix_before: float


@pytest.fixture(scope="module")
def copy_run(one_thread) -> CopyRun:
    """Fine-tune a tiny random GPT to copy two letters; held-out pairs are never trained on."""
    letters = "abcdefgh"
    pairs = [a + b for a in letters for b in letters]
    random.Random(0).shuffle(pairs)
    heldout = [Example(f"Copy {p}", p, "copy") for p in pairs[:16]]
    train = [Example(f"Copy {p}", p, "copy") for p in pairs[16:]]
    tokenizer = CharTokenizer.from_text(letters + "Copy ", special_tokens=CHAT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    accuracy_before = evaluate_instructions(model, tokenizer, heldout).accuracy
    prefix_before = _prefix_probability(model, tokenizer, "Copy ")
    cfg = default_finetune_config(
        max_steps=200, lr=1e-2, warmup_steps=10, eval_interval=100, device="cpu", progress=False
    )
    val_tokens = torch.tensor(tokenizer.encode("Copy ab" * 20))
    history = finetune(model, make_sft_batches(train, tokenizer, batch_size=32, block_size=16, seed=0), val_tokens, cfg)
    return CopyRun(model, tokenizer, heldout, history, accuracy_before, prefix_before)


def test_fine_tuning_learns_a_heldout_skill_but_not_the_prompts(copy_run: CopyRun) -> None:
    """The model must generalise to unseen pairs; with the prompt masked, it never learns to
    predict the constant instruction "Copy " that starts every prompt (trained on it, it would
    make it ≈ 1). Unmasked, inverted (response masked) and shifted masks all fail this test."""
    assert copy_run.accuracy_before == 0.0
    assert _prefix_probability(copy_run.model, copy_run.tokenizer, "Copy ") <= copy_run.prefix_before
    assert copy_run.history.step == [0, 100, 200] and copy_run.history.train_loss[-1] < 0.3
    report = evaluate_instructions(copy_run.model, copy_run.tokenizer, copy_run.heldout)
    assert report.accuracy >= 0.9, [(r.example.prompt, r.generated) for r in report.results]


def test_chat_reply_stops_at_end_and_streams(copy_run: CopyRun) -> None:
    pieces: list[str] = []
    reply = chat_reply(copy_run.model, copy_run.tokenizer, "Copy hd", temperature=0, stream_to=pieces.append)
    assert reply == "hd" and "".join(pieces) == "hd"
    assert answer(copy_run.model, copy_run.tokenizer, "Copy hd", max_new_tokens=10) == "hd"


def test_finetune_measures_forgetting_and_honours_callbacks(copy_run: CopyRun) -> None:
    val_tokens = torch.tensor(copy_run.tokenizer.encode("Copy ab" * 20))
    events: list[EvalEvent] = []

    def stop_at_second(event: EvalEvent) -> None:
        events.append(event)
        event.stop = len(events) == 2

    batches = make_sft_batches(copy_run.heldout, copy_run.tokenizer, batch_size=4, block_size=16)
    cfg = default_finetune_config(max_steps=10, eval_interval=5, eval_windows=4, device="cpu", progress=False)
    model = copy.deepcopy(copy_run.model)  # the fixture's model stays as it was trained
    history = finetune(model, batches, val_tokens, cfg, callbacks=[stop_at_second])
    assert [e.step for e in events] == [0, 5] and history.stopped_reason == "callback"
    assert all(math.isfinite(v) for v in history.val_loss)


def test_finetune_stops_with_a_clear_error_on_a_nan_loss(copy_run: CopyRun) -> None:
    def all_ignored(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # what SFT batching never makes
        return torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), IGNORE_INDEX)

    cfg = default_finetune_config(max_steps=3, device="cpu", progress=False)
    with pytest.raises(TrainingDivergedError, match="NaN"):
        finetune(copy.deepcopy(copy_run.model), all_ignored, torch.zeros(40, dtype=torch.long), cfg)


def test_finetune_from_checkpoint_saves_a_chat_model_and_reports(
    tmp_path: Path, shakespeare_chars: CharTokenizer
) -> None:
    from lal.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=shakespeare_chars.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "base" / "best.pt", GPT(config), shakespeare_chars)
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be: that is the question.\n" * 40, encoding="utf-8")
    report = finetune_from_checkpoint(
        tmp_path / "base", tmp_path / "chat", steps=4, batch_size=4, mix_ratio=0.25, device="cpu",
        progress=False, text_path=text,
    )
    assert report.path == tmp_path / "chat" / "last.pt" and report.history.step[-1] == 4
    n_heldout = INSTRUCTION_FILES["instructions_heldout.jsonl"][0]
    assert report.before is not None and len(report.before.results) == n_heldout
    assert "Held-out accuracy" in str(report) and "lal chat" in str(report)
    loaded = load_checkpoint(report.path)
    assert loaded.extra["mix_ratio"] == 0.25 and loaded.extra["heldout_accuracy"] == report.after.accuracy
    with pytest.raises(ValueError, match="new folder"):
        finetune_from_checkpoint(tmp_path / "base", tmp_path / "base", steps=1, device="cpu", text_path=text)
