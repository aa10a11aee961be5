"""Tests of lal.sft: exact loss masks, the generated dataset, batching without NaN, mixing,
scoring, and a tiny fine-tune that learns a held-out skill without learning the prompts."""

from __future__ import annotations

import copy
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lal.model import GPT, IGNORE_INDEX, GPTConfig
from lal.instructions import (
    HELDOUT_MODULUS,
    INSTRUCTION_FILES,
    MAX_EXAMPLE_CHARS,
    NUMBER_WORDS,
    TASKS,
    Example,
    WordPools,
    load_instruction_file,
    make_instruction_dataset,
    save_instruction_file,
    score_response,
    text_words,
    word_pools,
    word_split,
    write_instruction_datasets,
)
from lal.sft import (
    DEFAULT_TEMPLATE,
    EvalReport,
    EvalResult,
    add_special_tokens,
    answer,
    chat_reply,
    compare_reports,
    default_finetune_config,
    encode_conversation,
    encode_example,
    encode_prompt,
    evaluate_instructions,
    finetune,
    finetune_from_checkpoint,
    greedy_answers,
    make_sft_batches,
    mix_pretraining,
    pretraining_batches,
)
from lal.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer
from lal.data import eval_windows
from lal.train import EVAL_SEED, EvalEvent, History, TrainingDivergedError, estimate_loss

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

ORACLES = {  # each task's answer computed again, independently of lal.instructions
    "repeat": (r"Repeat: ([a-z ]+)", lambda s: s),
    "twice": (r"Repeat twice: ([a-z]+)", lambda s: f"{s} {s}"),
    "uppercase": (r"Uppercase: ([a-z ]+)", str.upper),
    "reverse": (r"Reverse: ([a-z]+)", lambda s: s[::-1]),
    "first_word": (r"First word of: ([a-z ]+)", lambda s: s.split()[0]),
    "last_word": (r"Last word of: ([a-z ]+)", lambda s: s.split()[-1]),
    "count": (r"Count the letters in: ([a-z]+)", lambda s: NUMBER_WORDS[len(s)]),
    "add": (r"Add: ([a-z]+) and ([a-z]+)", lambda a, b: NUMBER_WORDS[NUMBER_WORDS.index(a) + NUMBER_WORDS.index(b)]),
}


@pytest.fixture(scope="module")
def pools(shakespeare: str) -> WordPools:
    return word_pools(shakespeare)


@pytest.fixture(scope="module")
def datasets(pools: WordPools) -> dict[str, list[Example]]:
    return {split: make_instruction_dataset(2000, seed=5, split=split, pools=pools) for split in ("train", "heldout")}


def _prompt_words(example: Example) -> list[str]:
    return re.fullmatch(ORACLES[example.task][0], example.prompt).group(1).split()


def test_every_example_has_the_right_answer_and_only_shakespeare_characters(datasets) -> None:
    assert set(ORACLES) == set(TASKS)
    for examples in datasets.values():
        for example in examples:
            pattern, oracle = ORACLES[example.task]
            match = re.fullmatch(pattern, example.prompt)
            assert match is not None, example
            assert example.response == oracle(*match.groups())
            assert set(example.prompt + example.response) <= SHAKESPEARE_CHARS
            assert len(example.prompt) + len(example.response) <= MAX_EXAMPLE_CHARS


def test_words_come_from_the_whole_text_and_are_split_by_word(shakespeare: str, pools: WordPools) -> None:
    all_words = set(text_words(shakespeare))
    assert len(pools.train) > 5000 and len(pools.heldout) > 1000  # the whole vocabulary, not a list
    assert set(pools.train) | set(pools.heldout) == all_words and not set(pools.train) & set(pools.heldout)
    assert not set(pools.novel) & all_words  # made-up words are not in the pretraining text
    assert abs(len(pools.heldout) / len(all_words) - 1 / HELDOUT_MODULUS) < 0.02
    assert all(word_split(w) == "heldout" for w in pools.heldout)


def test_no_heldout_word_or_sum_appears_in_training(datasets, pools: WordPools) -> None:
    train_words = {w for e in datasets["train"] if e.task != "add" for w in _prompt_words(e)}
    heldout_words = {w for e in datasets["heldout"] if e.task != "add" for w in _prompt_words(e)}
    assert train_words <= set(pools.train)
    assert heldout_words <= set(pools.heldout) | set(pools.novel) and not heldout_words & train_words
    novel = [e for e in datasets["heldout"] if e.task != "add" and set(_prompt_words(e)) <= set(pools.novel)]
    assert 0.15 < len(novel) / len(datasets["heldout"]) < 0.3  # about NOVEL_SHARE of the word tasks
    train_sums = {e.prompt for e in datasets["train"] if e.task == "add"}
    heldout_sums = {e.prompt for e in datasets["heldout"] if e.task == "add"}
    assert heldout_sums and not train_sums & heldout_sums


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_no_task_is_passed_by_a_constant_answer(datasets, split: str) -> None:
    for task in TASKS:
        answers = Counter(e.response for e in datasets[split] if e.task == task)
        most_common_share = answers.most_common(1)[0][1] / sum(answers.values())
        assert most_common_share <= 0.2, (task, answers.most_common(3))


def test_dataset_is_deterministic_and_balanced_across_tasks(pools: WordPools) -> None:
    first = make_instruction_dataset(80, seed=0, pools=pools)
    assert first == make_instruction_dataset(80, seed=0, pools=pools)
    assert first != make_instruction_dataset(80, seed=1, pools=pools)
    assert [e.task for e in first[:8]] == list(TASKS)
    only_two = make_instruction_dataset(10, seed=0, tasks=["reverse", "add"], pools=pools)
    assert [e.task for e in only_two] == ["reverse", "add"] * 5
    with pytest.raises(ValueError, match="Unknown"):
        make_instruction_dataset(4, seed=0, tasks=["sing"], pools=pools)


def test_the_committed_files_are_exactly_what_the_generator_writes(tmp_path: Path, pools: WordPools) -> None:
    written = write_instruction_datasets(tmp_path, pools=pools)
    assert [p.name for p in written] == list(INSTRUCTION_FILES)
    for path in written:
        committed = ROOT / "data" / "sft" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"regenerate {path.name}: write_instruction_datasets"
    train = load_instruction_file(tmp_path / "instructions_train.jsonl")
    heldout = load_instruction_file(tmp_path / "instructions_heldout.jsonl")
    assert (len(train), len(heldout)) == tuple(n for n, _, _ in INSTRUCTION_FILES.values())
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}


def test_instruction_files_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    examples = [Example("Reverse: ab", "ba", "reverse"), Example("Say héllo", "héllo")]
    path = save_instruction_file(examples, tmp_path / "mine.jsonl")
    assert load_instruction_file(path) == examples
    bad_lines = {
        '{"prompt": "only"}': 'line 2: the "response" field is missing',
        '{"prompt": "a", "response": null}': 'line 2: "response" must be a string, got null',
        '{"prompt": 7, "response": "b"}': 'line 2: "prompt" must be a string, got 7',
        '["a", "b"]': "line 2: expected a JSON object",
        '{"prompt": "a", "response": "b"': "line 2: not valid JSON",
    }
    for line, message in bad_lines.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(f"{bad}, {message}")):
            load_instruction_file(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no examples"):
        load_instruction_file(empty)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text.*iconv"):
        load_instruction_file(latin1)


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


def test_evaluation_gives_each_prompts_own_greedy_answer(shakespeare_chars: CharTokenizer) -> None:
    """Batching prompts of one length with a KV cache must not change any answer or score."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=shakespeare_chars.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    prompts = [e.prompt for e in make_instruction_dataset(12, seed=5)]
    assert len({len(p) for p in prompts}) < len(prompts)  # some share a length, so some share a batch
    assert greedy_answers(model, shakespeare_chars, prompts, 10) == [
        answer(model, shakespeare_chars, prompt, 10) for prompt in prompts
    ]
    conversation = [{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": "no"},
                    {"role": "user", "content": prompts[1]}]
    assert greedy_answers(model, shakespeare_chars, [conversation], 6) == [answer(model, shakespeare_chars, conversation, 6)]
    too_long = "Reverse: " + "a" * 70  # fills the 64-token context by itself: cropped, as answer() does
    assert greedy_answers(model, shakespeare_chars, [too_long], 5) == [answer(model, shakespeare_chars, too_long, 5)]

    examples = make_instruction_dataset(24, seed=7, split="heldout")
    report = evaluate_instructions(model, shakespeare_chars, examples)
    longest = max(len(shakespeare_chars.encode(e.response, allowed_special=None)) for e in examples)
    for result, example in zip(report.results, examples):
        one = answer(model, shakespeare_chars, example.prompt, longest + 4)
        # A batched answer stops at the end of the context, where answer() crops it and goes on:
        # an answer that long (this random model rambles) has missed its <|end|> and is wrong in both.
        assert one.startswith(result.generated) and result.correct == score_response(example, one)
    assert model.training is False


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


def test_finetune_measures_forgetting_on_fixed_windows_and_honours_callbacks(copy_run: CopyRun) -> None:
    val_tokens = torch.tensor(copy_run.tokenizer.encode("Copy ab Copy hd " * 20))
    events: list[EvalEvent] = []
    losses_seen: list[float] = []

    def stop_at_second(event: EvalEvent) -> None:
        events.append(event)
        # the recorded loss is the loss of the current weights on the fixed pretraining windows
        starts = eval_windows(val_tokens, 4, 16, seed=EVAL_SEED)
        losses_seen.append(estimate_loss(model, val_tokens, starts, block_size=16, batch_size=8))
        event.stop = len(events) == 2

    batches = make_sft_batches(copy_run.heldout, copy_run.tokenizer, batch_size=4, block_size=16)
    cfg = default_finetune_config(max_steps=10, eval_interval=5, eval_windows=4, device="cpu", progress=False)
    model = copy.deepcopy(copy_run.model)  # the fixture's model stays as it was trained
    history = finetune(model, batches, val_tokens, cfg, callbacks=[stop_at_second])
    assert [e.step for e in events] == [0, 5] and history.stopped_reason == "callback"
    assert history.val_loss == pytest.approx(losses_seen, abs=1e-6)
    assert history.val_loss[0] != pytest.approx(history.val_loss[1], abs=1e-4)  # training moved it


def test_finetune_stops_with_a_clear_error_on_a_nan_loss(copy_run: CopyRun) -> None:
    def all_ignored(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # what SFT batching never makes
        return torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), IGNORE_INDEX)

    cfg = default_finetune_config(max_steps=3, device="cpu", progress=False)
    with pytest.raises(TrainingDivergedError, match="NaN"):
        finetune(copy.deepcopy(copy_run.model), all_ignored, torch.zeros(40, dtype=torch.long), cfg)




def _tiny_base(tmp_path: Path, tokenizer) -> tuple[Path, Path]:
    """A tiny random "pretrained" checkpoint and a text to mix in."""
    from lal.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "base" / "best.pt", GPT(config), tokenizer)
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be: that is the question.\n" * 40, encoding="utf-8")
    return tmp_path / "base", text


def test_finetune_from_checkpoint_saves_a_chat_model_and_reports(
    tmp_path: Path, shakespeare_chars: CharTokenizer
) -> None:
    from lal.checkpoint import load_checkpoint

    base, text = _tiny_base(tmp_path, shakespeare_chars)
    logged: list[str] = []
    report = finetune_from_checkpoint(
        base, tmp_path / "chat", steps=4, batch_size=4, mix_ratio=0.25, device="cpu",
        progress=False, text_path=text, log=logged.append,
    )
    assert report.path == tmp_path / "chat" / "last.pt" and report.history.step[-1] == 4
    assert not (tmp_path / "chat" / "best.pt").exists()  # a folder's best.pt would shadow the fine-tuned model
    assert len((tmp_path / "chat" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 5
    n_heldout = INSTRUCTION_FILES["instructions_heldout.jsonl"][0]
    assert report.before is not None and len(report.before.results) == n_heldout
    assert logged[0].startswith("Before fine-tuning:") and str(report.before) in logged[0]
    assert compare_reports(report.before, report.after) in str(report) and "lal chat" in str(report)
    loaded = load_checkpoint(tmp_path / "chat")
    assert loaded.extra["mix_ratio"] == 0.25 and loaded.extra["heldout_accuracy"] == report.after.accuracy
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        finetune_from_checkpoint(base, tmp_path / "chat", steps=1, device="cpu", text_path=text)
    with pytest.raises(ValueError, match="already holds a run"):
        finetune_from_checkpoint(base, base, steps=1, device="cpu", text_path=text)


def test_an_interrupted_finetune_resumes_to_the_same_weights(
    tmp_path: Path, shakespeare_chars: CharTokenizer, monkeypatch
) -> None:
    import lal.train as train_module
    from lal.checkpoint import load_checkpoint

    base, text = _tiny_base(tmp_path, shakespeare_chars)
    examples = [Example(f"Repeat: {w}", w, "repeat") for w in ("to", "be", "or", "not", "that", "is", "the")]
    data = save_instruction_file(examples, tmp_path / "data.jsonl")
    settings = dict(data_path=data, steps=8, batch_size=4, mix_ratio=0.25, device="cpu", progress=False,
                    text_path=text)
    finetune_from_checkpoint(base, tmp_path / "whole", **settings)

    real_evaluate = train_module._Trainer._evaluate

    def evaluate_then_interrupt(self, *args):  # Ctrl-C right after the evaluation of step 4
        stop = real_evaluate(self, *args)
        if self.state.step == 4:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(train_module._Trainer, "_evaluate", evaluate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune_from_checkpoint(base, tmp_path / "cut", **{**settings, "steps": 8})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "cut" / "last.pt").extra["step"] == 4
    finetune_from_checkpoint(base, tmp_path / "cut", resume=True, **settings)
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut")
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    report = finetune_from_checkpoint(base, tmp_path / "cut", overwrite=True, **{**settings, "steps": 2})
    assert report.history.step == [0, 1, 2]  # replaced: a new run from the base


def test_new_special_tokens_get_mean_rows_and_keep_old_ids() -> None:
    plain = CharTokenizer.from_text("abxy")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=plain.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    old_rows = model.transformer.wte.weight.detach().clone()  # (4, 8)
    extended = add_special_tokens(model, plain)
    assert extended.special_tokens == {token: 4 + i for i, token in enumerate(CHAT_SPECIAL_TOKENS)}
    assert extended.encode("abxy") == plain.encode("abxy")
    weight = model.transformer.wte.weight
    assert weight.shape == (7, 8) and model.lm_head.weight is weight and model.config.vocab_size == 7
    assert torch.equal(weight[:4], old_rows)
    assert torch.allclose(weight[4:], old_rows.mean(dim=0).expand(3, 8))
    logits, _ = model(torch.tensor([[4, 0, 6]]))
    assert logits.shape == (1, 3, 7)
    assert add_special_tokens(model, extended) is extended  # nothing to add: unchanged


def test_sft_batches_reach_a_gpu_through_pinned_memory_without_blocking(abxy: CharTokenizer, monkeypatch) -> None:
    calls: list[object] = []
    real_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        if args and torch.device(args[0]).type == "cuda":  # no GPU needed: record the copy, keep the tensor
            calls.append(("to cuda", kwargs.get("non_blocking", False)))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    batches = make_sft_batches([Example("ab", "xy")], abxy, batch_size=2, block_size=16, device="cuda")
    x, y = batches(0)
    assert calls == ["pin", ("to cuda", True)] * 2  # x and y: pinned, then an asynchronous copy
    assert x.tolist() == [[4, 0, 1, 6, 5, 2, 3]] * 2
