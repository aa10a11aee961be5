"""Instructions whose answers a program can check, split so that a score measures following.

A fine-tuned model that scores well on prompts it was trained on may simply remember them. To
measure *instruction following*, the held-out prompts must be ones it could not have learned
by heart. So the split is by **word**, not by prompt:

* the words come from the whole pretraining text (every lower-case-able word of 2–8 letters of
  TinyShakespeare: several thousand, not a hand-picked list);
* a fixed hash of each word (:func:`word_split`) sends one word in :data:`HELDOUT_MODULUS` to
  the held-out side; training prompts use only training words, held-out prompts only held-out
  words, so no held-out word ever appears in a training prompt or answer;
* a quarter of the held-out prompts use **made-up words** that never occur in the pretraining
  text at all (:func:`novel_words`), so the model has not even read them.

Answers are balanced so that no task can be passed with a constant: ``count`` draws the
length first (each answer equally likely), ``add`` draws the sum first.

Every prompt and answer uses only characters of TinyShakespeare (letters, spaces, ``:``), so a
character-level model trained on it can read and write them. Numbers are spelled out (the
text has no digits).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: The end-of-turn marker of the chat template: an answer is read up to it.
END_MARKER = "<|end|>"

#: Numbers as words: TinyShakespeare has no digits (except one '3'), so answers are spelled out.
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)

#: One word (and one sum) in HELDOUT_MODULUS goes to the held-out side, decided by a CRC-32.
HELDOUT_MODULUS = 5
#: Word lengths used by the tasks.
MIN_WORD, MAX_WORD = 2, 8
#: Share of held-out prompts written with made-up words that are not in the pretraining text.
NOVEL_SHARE = 0.25
#: Longest prompt plus answer, in characters: with the four template markers an example fits
#: the 64-token context of ``char-tiny`` (see :func:`lal.sft.encode_example`).
MAX_EXAMPLE_CHARS = 58

SPLITS = ("train", "heldout")
_WORD = re.compile(r"[A-Za-z]+")


# ---------------------------------------------------------------------------------------------
# Words and the split
# ---------------------------------------------------------------------------------------------


def word_split(word: str) -> str:
    """"train" or "heldout" for a word: a fixed hash decides, whatever the seed or the text."""
    return "heldout" if zlib.crc32(word.encode("utf-8")) % HELDOUT_MODULUS == 0 else "train"


def text_words(text: str) -> tuple[str, ...]:
    """The distinct words of ``text``, lower-cased, of MIN_WORD–MAX_WORD letters, sorted."""
    words = {word.lower() for word in _WORD.findall(text)}
    return tuple(sorted(w for w in words if MIN_WORD <= len(w) <= MAX_WORD))


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "pl", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")


def novel_words(known: Iterable[str], n: int, seed: int = 0) -> tuple[str, ...]:
    """``n`` pronounceable made-up words (``"brovu"``, ``"zetik"``) that are not in ``known``.

    Drawn from syllables with ``random.Random(seed)``, so the list is the same every time.
    """
    known = set(known)
    rng = random.Random(seed)
    found: dict[str, None] = {}  # insertion-ordered set
    while len(found) < n:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
        if rng.random() < 0.5:
            word += rng.choice("kmnst")
        if MIN_WORD <= len(word) <= MAX_WORD and word not in known:
            found[word] = None
    return tuple(found)


@dataclass(frozen=True)
class WordPools:
    """The words each split draws from: ``train`` and ``heldout`` partition the text's words;
    ``novel`` are made up and appear only in held-out prompts."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    novel: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str, n_novel: int = 500) -> WordPools:
        words = text_words(text)
        return cls(
            train=tuple(w for w in words if word_split(w) == "train"),
            heldout=tuple(w for w in words if word_split(w) == "heldout"),
            novel=novel_words(words, n_novel),
        )


@functools.lru_cache(maxsize=4)
def _pools_of(text_sha256: str, text: str) -> WordPools:
    return WordPools.from_text(text)


def word_pools(text: str | None = None) -> WordPools:
    """The word pools of ``text`` (default: TinyShakespeare, the course's pretraining text)."""
    if text is None:
        from lal.data import load_text

        text = load_text("tinyshakespeare")
    return _pools_of(hashlib.sha256(text.encode("utf-8")).hexdigest(), text)


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


class _Words:
    """Draws words for one example, from one pool, by length."""

    def __init__(self, rng: random.Random, pool: Sequence[str]) -> None:
        self.rng = rng
        self.by_length: dict[int, list[str]] = {}
        for word in pool:
            self.by_length.setdefault(len(word), []).append(word)

    def word(self, lengths: range = range(MIN_WORD, MAX_WORD + 1)) -> str:
        """A word whose length is drawn uniformly from ``lengths`` (so long words are not rare)."""
        available = [n for n in lengths if n in self.by_length]
        return self.rng.choice(self.by_length[self.rng.choice(available)])

    def phrase(self, n_min: int, n_max: int, max_chars: int) -> list[str]:
        """``n_min``–``n_max`` words, at most ``max_chars`` characters with their spaces."""
        while True:
            words = [self.word() for _ in range(self.rng.randint(n_min, n_max))]
            if len(" ".join(words)) <= max_chars:
                return words


def _task_repeat(words: _Words) -> tuple[str, str]:
    phrase = " ".join(words.phrase(1, 3, 22))
    return f"Repeat: {phrase}", phrase


def _task_twice(words: _Words) -> tuple[str, str]:
    word = words.word()
    return f"Repeat twice: {word}", f"{word} {word}"


def _task_uppercase(words: _Words) -> tuple[str, str]:
    phrase = " ".join(words.phrase(1, 3, 22))
    return f"Uppercase: {phrase}", phrase.upper()


def _task_reverse(words: _Words) -> tuple[str, str]:
    word = words.word(range(3, 7))
    return f"Reverse: {word}", word[::-1]


def _task_first_word(words: _Words) -> tuple[str, str]:
    phrase = words.phrase(3, 5, 34)
    return f"First word of: {' '.join(phrase)}", phrase[0]


def _task_last_word(words: _Words) -> tuple[str, str]:
    phrase = words.phrase(3, 5, 34)
    return f"Last word of: {' '.join(phrase)}", phrase[-1]


def _task_count(words: _Words) -> tuple[str, str]:
    word = words.word()  # the length is uniform: each answer as likely as any other
    return f"Count the letters in: {word}", NUMBER_WORDS[len(word)]


#: Task name -> a function drawing one (prompt, response) from a word source.
WORD_TASKS: dict[str, Callable[[_Words], tuple[str, str]]] = {
    "repeat": _task_repeat,
    "twice": _task_twice,
    "uppercase": _task_uppercase,
    "reverse": _task_reverse,
    "first_word": _task_first_word,
    "last_word": _task_last_word,
    "count": _task_count,
}


def sum_split(a: int, b: int) -> str:
    """"train" or "heldout" for the sum ``a + b`` (ordered: "two and five" is not "five and two")."""
    return word_split(f"{a}+{b}")


def _task_add(rng: random.Random, split: str) -> tuple[str, str]:
    """``Add: a and b`` with a, b in 1..10: the sum is drawn first (uniform over 2..20), then a."""
    while True:
        total = rng.randint(2, 20)
        a = rng.randint(max(1, total - 10), min(10, total - 1))
        if sum_split(a, total - a) == split:
            return f"Add: {NUMBER_WORDS[a]} and {NUMBER_WORDS[total - a]}", NUMBER_WORDS[total]


#: Every task, in the order datasets cycle through them.
TASKS: tuple[str, ...] = (*WORD_TASKS, "add")
#: The tasks that only copy (or copy and capitalise) part of the prompt.
COPY_TASKS: tuple[str, ...] = ("repeat", "twice", "uppercase", "first_word", "last_word")


# ---------------------------------------------------------------------------------------------
# Examples and datasets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One instruction and its one correct answer; ``task`` names the generator ("custom" for your own)."""

    prompt: str
    response: str
    task: str = "custom"

    def is_correct(self, generated_text: str) -> bool:
        """Whether ``generated_text`` answers this example (see :func:`score_response`)."""
        return score_response(self, generated_text)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def make_instruction_dataset(
    n: int,
    seed: int,
    tasks: Sequence[str] | None = None,
    split: str = "train",
    pools: WordPools | None = None,
) -> list[Example]:
    """``n`` examples cycling through ``tasks`` (all of :data:`TASKS` by default), from ``split``.

    Deterministic for a given ``seed`` and word pools (default: :func:`word_pools` of
    TinyShakespeare). Training examples use training words only; held-out examples use
    held-out words, or (a share :data:`NOVEL_SHARE`, chosen at random) made-up words only.
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"Unknown or no tasks {unknown}; choose among {list(TASKS)}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}.")
    pools = word_pools() if pools is None else pools
    rng = random.Random(seed)
    train, heldout, novel = (_Words(rng, pool) for pool in (pools.train, pools.heldout, pools.novel))
    examples = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        if task == "add":
            prompt, response = _task_add(rng, split)
        else:
            words = train if split == "train" else novel if rng.random() < NOVEL_SHARE else heldout
            prompt, response = WORD_TASKS[task](words)
        examples.append(Example(prompt, response, task))
    return examples


def score_response(example: Example, generated_text: str) -> bool:
    """Exact match with the expected answer, after cutting at ``<|end|>`` and stripping spaces.

    The text after the first ``<|end|>`` (if the model went on) does not count, and neither do
    leading or trailing whitespace; everything else must match, letter case included.
    """
    answer = generated_text.split(END_MARKER, 1)[0].strip()
    return answer == example.response.strip()


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save_instruction_file(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    """Write examples as JSON Lines: one ``{"prompt", "response", "task"}`` object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for example in examples:
            file.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_instruction_file(path: str | os.PathLike) -> list[Example]:
    """Read a JSON Lines file of ``{"prompt": ..., "response": ...}`` (``"task"`` optional).

    Every problem is a ``ValueError`` naming the file and, where there is one, the line: a file
    that is not UTF-8, holds no example, a line that is not a JSON object, a missing field, or a
    field that is not text (``null`` would otherwise train the model to say "None").
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; --data takes one JSON Lines file of examples.")
    if not path.is_file():
        raise FileNotFoundError(f"No instruction file at {path}.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded). Save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl`."
        ) from None
    examples = [_parse_line(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not examples:
        raise ValueError(
            f'{path} holds no examples: write one JSON object per line, e.g. {{"prompt": "Reverse: abc", '
            f'"response": "cba"}}.'
        )
    return examples


def _parse_line(path: Path, line_number: int, line: str) -> Example:
    where = f"{path}, line {line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg}, column {error.colno}).") from None
    if not isinstance(record, dict):
        raise ValueError(f'{where}: expected a JSON object with "prompt" and "response", got {type(record).__name__}.')
    for name in ("prompt", "response"):
        if name not in record:
            raise ValueError(f'{where}: the "{name}" field is missing (each line needs "prompt" and "response").')
    for name in ("prompt", "response", "task"):
        if name in record and not isinstance(record[name], str):
            raise ValueError(f'{where}: "{name}" must be a string, got {json.dumps(record[name])}.')
    return Example(record["prompt"], record["response"], record.get("task", "custom"))


#: The files in ``data/sft/``: name -> (number of examples, seed, split).
INSTRUCTION_FILES: dict[str, tuple[int, int, str]] = {
    "instructions_train.jsonl": (24000, 0, "train"),
    "instructions_heldout.jsonl": (320, 1, "heldout"),
}


def write_instruction_datasets(directory: str | os.PathLike, pools: WordPools | None = None) -> list[Path]:
    """(Re)generate the instruction files of ``data/sft/`` (deterministic: same bytes every time)."""
    return [
        save_instruction_file(make_instruction_dataset(n, seed, split=split, pools=pools), Path(directory) / name)
        for name, (n, seed, split) in INSTRUCTION_FILES.items()
    ]


def course_instructions(split: str) -> list[Example]:
    """The course's instruction set of ``split`` (what ``data/sft/`` holds), generated in memory."""
    name = {"train": "instructions_train.jsonl", "heldout": "instructions_heldout.jsonl"}[split]
    n, seed, _ = INSTRUCTION_FILES[name]
    return make_instruction_dataset(n, seed, split=split)
