"""Preference tuning with Direct Preference Optimization (DPO): prefer the right answer to a wrong one.

Supervised fine-tuning shows the model good answers only. Preference tuning also shows it bad
ones: for each prompt a *chosen* answer and a *rejected* one, and it raises the probability of
the first relative to the second. DPO (Rafailov et al., 2023) does this with no reward model and
no sampling during training. With ``π`` the model being tuned (the *policy*), ``π_ref`` a frozen
copy of where it started, and ``log π(y | x)`` the summed log-probability of an answer's tokens::

    reward(y)  = β · (log π(y | x) − log π_ref(y | x))
    loss       = −log σ(reward(chosen) − reward(rejected))        (mean over pairs)

The reference term is what keeps the model near its start: lowering a rejected answer's
probability far below the reference's earns less and less, so the model is not pushed to
wreck everything else to win the comparison. ``β`` sets how far it may move (small β: far).

This module holds each piece chapter 7 builds:

* :func:`make_preference_pairs`: pairs a program can make from the training instructions:
  the chosen answer is the correct one; the rejected one is the model's own wrong answer where it
  makes one, otherwise a plausible near-miss (:func:`near_miss`: an off-by-one number, a dropped,
  doubled or swapped letter, the neighbouring word). Held-out words never appear in a pair;
* :func:`sequence_logprobs`: ``log π(y | x)`` on the response tokens only, with the SFT mask;
* :func:`dpo_loss` and :func:`dpo_rewards`: the loss and the implicit rewards above;
* :class:`PreferenceBatches` and :class:`DPOObjective`: what :func:`lal.train.train` needs to
  minimise the DPO loss instead of cross-entropy (schedule, clipping, checkpoints, resume and
  ``metrics.jsonl`` are training's own), and :class:`RewardLog`, the reward margins and accuracies
  DPO papers report, per evaluation, in ``rewards.jsonl``;
* :func:`preference_tune` and :func:`dpo_from_checkpoint` (``lal dpo``).
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lal.instructions import (
    NUMBER_WORDS,
    Example,
    WordPools,
    course_instructions,
    sum_split,
    word_pools,
)
from lal.model import GPT, IGNORE_INDEX
from lal.sft import (
    DEFAULT_TEMPLATE,
    ChatTemplate,
    EvalReport,
    SFTBatches,
    answer_budget,
    check_run_folder,
    encode_example,
    evaluate_instructions,
    greedy_answers,
    special_token_id,
)
from lal.tokenizers import Tokenizer
from lal.train import EvalEvent, History, TrainConfig, train

#: ``lal dpo``'s defaults: of the settings measured (data/sft/README.md), the one that cost least.
DPO_BETA = 1.0
DPO_STEPS = 100
DPO_BATCH_SIZE = 16  # pairs per step: 32 sequences
DPO_LR = 1e-4
DPO_PAIRS = 800  # training instructions turned into pairs (each needs one greedy answer)
DPO_EVAL_PAIRS = 100  # of those, kept out of training to score rewards on

REWARDS_FILE = "rewards.jsonl"
PAIRS_FILE = "pairs.jsonl"


# ---------------------------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferencePair:
    """One prompt, its correct answer and a wrong one; ``source`` says where the wrong one came from."""

    prompt: str
    chosen: str
    rejected: str
    task: str = "custom"
    source: str = "near_miss"  # "model": the model's own wrong answer; "near_miss": made by near_miss()

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def heldout_words(pools: WordPools | None = None) -> frozenset[str]:
    """The words only held-out prompts use: held-out and made-up words, less the number words.

    Number words are every ``count`` and ``add`` answer in both splits (``add`` is split by its
    pair of numbers, not by word), so they belong to the task, not to one side.
    """
    pools = word_pools() if pools is None else pools
    return (frozenset(pools.heldout) | frozenset(pools.novel)) - frozenset(NUMBER_WORDS)


def pair_words(pair: PreferencePair | Example) -> set[str]:
    """The lower-case words a pair is made of: its instruction's content and its answers.

    A ``reverse`` answer is read back the right way round: ``saw``, the answer to ``Reverse: was``,
    is made of the training word ``was``, and only spells a held-out word by accident.
    """
    content = pair.prompt.split(": ", 1)[-1]
    answers = (pair.chosen, pair.rejected) if isinstance(pair, PreferencePair) else (pair.response,)
    return set(_words(content, "")).union(*(_words(answer, pair.task) for answer in answers))


def _words(answer: str, task: str) -> list[str]:
    return (answer[::-1] if task == "reverse" else answer).lower().split()


def _edit_letter(text: str, rng: random.Random) -> str:
    """One letter dropped, doubled, or swapped with its neighbour: the slips copying makes."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    i = rng.choice(letters)
    operation = rng.choice(("drop", "double", "swap"))
    if operation == "drop" and len(letters) > 1:
        return text[:i] + text[i + 1:]
    if operation == "swap" and i + 1 < len(text) and text[i + 1].isalpha() and text[i + 1] != text[i]:
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text[:i] + text[i] + text[i:]


def near_miss(example: Example, rng: random.Random) -> str:
    """A plausible wrong answer to ``example``, different from its response.

    Numbers (``count``, ``add``) are off by one; ``first_word`` / ``last_word`` sometimes give the
    neighbouring word; every other answer gets one letter dropped, doubled or swapped.
    """
    response = example.response
    if response in NUMBER_WORDS:
        n = NUMBER_WORDS.index(response)
        candidates = [m for m in (n - 1, n + 1) if 0 <= m < len(NUMBER_WORDS)]
        return NUMBER_WORDS[rng.choice(candidates)]
    if example.task in ("first_word", "last_word") and rng.random() < 0.5:
        words = example.prompt.split(": ", 1)[1].split()
        neighbour = words[1] if example.task == "first_word" else words[-2]
        if neighbour != response:
            return neighbour
    while True:
        wrong = _edit_letter(response, rng)
        if wrong != response:
            return wrong


def make_preference_pairs(
    examples: Sequence[Example],
    model: GPT | None = None,
    tokenizer: Tokenizer | None = None,
    *,
    seed: int = 0,
    pools: WordPools | None = None,
    template: ChatTemplate = DEFAULT_TEMPLATE,
) -> list[PreferencePair]:
    """One pair per example: chosen = its correct answer, rejected = a wrong one.

    With a ``model`` (and its ``tokenizer``), the rejected answer is the model's own greedy
    answer wherever that is wrong: the mistakes it really makes are the ones worth unlearning.
    Where it is right (or its wrong answer is unusable: empty, with a chat marker or a held-out word in it),
    the rejected answer is a :func:`near_miss`. Held-out words (:func:`heldout_words`) never
    appear, so the held-out score still measures following; ``examples`` must be training ones.
    """
    forbidden = heldout_words(pools)
    for example in examples:
        leaked = pair_words(example) & forbidden
        if leaked or (example.task == "add" and _add_split(example) != "train"):
            raise ValueError(f"{example.prompt!r} is a held-out instruction ({sorted(leaked)}): pairs come from "
                             "training instructions only, so the held-out score keeps measuring following.")
    generated: list[str | None] = [None] * len(examples)
    if model is not None:
        if tokenizer is None:
            raise ValueError("make_preference_pairs(model=...) needs the model's tokenizer too.")
        budget = answer_budget(tokenizer, examples)
        generated = list(greedy_answers(model, tokenizer, [e.prompt for e in examples], budget, template=template))
    rng = random.Random(seed)
    pairs = []
    for example, own in zip(examples, generated):
        own = None if own is None else own.strip()
        usable = (bool(own) and own != example.response.strip() and "<|" not in own  # no stray chat marker
                  and not set(_words(own, example.task)) & forbidden)
        if usable:
            pairs.append(PreferencePair(example.prompt, example.response, own, example.task, "model"))
            continue
        while True:  # a near-miss may by chance spell a held-out word ("lover" -> "love"): draw again
            wrong = near_miss(example, rng)
            if not set(_words(wrong, example.task)) & forbidden:
                break
        pairs.append(PreferencePair(example.prompt, example.response, wrong, example.task, "near_miss"))
    return pairs


def _add_split(example: Example) -> str:
    a, b = (NUMBER_WORDS.index(word) for word in example.prompt.split(": ", 1)[1].split(" and "))
    return sum_split(a, b)


def save_pairs(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> Path:
    """Write pairs as JSON Lines, atomically (a half-written file never replaces a whole one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as file:
        file.writelines(json.dumps(pair.to_dict(), ensure_ascii=False) + "\n" for pair in pairs)
    os.replace(tmp, path)
    return path


def load_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Read pairs written by :func:`save_pairs`."""
    with open(path, encoding="utf-8") as file:
        return [PreferencePair(**json.loads(line)) for line in file if line.strip()]


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def sequence_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log π(response | prompt)`` of each row: the summed log-probabilities of its trained targets.

    ``x`` and ``y`` are SFT rows ``(N, T)`` (:func:`lal.sft.encode_example`): targets equal to
    ``IGNORE_INDEX`` (the prompt, the template, the padding) add nothing, so only the response and
    its ``<|end|>`` count. A sum, not a mean: the probability of the whole answer.
    """
    logits, _ = model(x)  # (N, T, V)
    token_logprobs = -F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(y)  # (N, T): 0 where ignored
    return token_logprobs.sum(dim=1)  # (N,)


def dpo_rewards(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO's implicit reward of each answer: ``β · (log π − log π_ref)``, shape of the inputs."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The mean DPO loss ``−log σ(β · ((π_c − ref_c) − (π_r − ref_r)))`` over a batch of pairs.

    Each argument is ``(B,)`` sequence log-probabilities (:func:`sequence_logprobs`). The
    reference's are constants: they are detached here, so no gradient reaches the reference.
    ``−log σ(z)`` is computed as ``softplus(−z)``, which stays finite for large margins.
    """
    margin = dpo_rewards(policy_chosen, ref_chosen.detach(), beta) - dpo_rewards(
        policy_rejected, ref_rejected.detach(), beta)  # (B,)
    return F.softplus(-margin).mean()


class PreferenceBatches(SFTBatches):
    """Batches of pairs for :func:`lal.train.train`: ``x`` and ``y`` are ``(2B, T)``.

    Rows ``0 .. B-1`` are the chosen answers of ``B`` pairs and rows ``B .. 2B-1`` the rejected
    answers of the same pairs, in the same order, encoded and padded as SFT rows (loss mask
    included). Shuffling, epochs and exact resume are :class:`lal.sft.SFTBatches`'s; a pair whose
    longer answer does not fit ``block_size`` is dropped whole.
    """

    def __init__(
        self,
        pairs: Sequence[PreferencePair],
        tokenizer: Tokenizer,
        batch_size: int,
        block_size: int,
        *,
        seed: int = 0,
        template: ChatTemplate = DEFAULT_TEMPLATE,
        device: str | torch.device = "cpu",
    ) -> None:
        fitting = [p for p in pairs if max(_encoded_length(tokenizer, p.prompt, a, template)
                                           for a in (p.chosen, p.rejected)) <= block_size]
        if not fitting:
            raise ValueError(f"No preference pair fits in block_size={block_size}: use shorter answers.")
        chosen = [Example(p.prompt, p.chosen, p.task) for p in fitting]
        super().__init__(chosen, tokenizer, batch_size, block_size, seed=seed, template=template, device=device)
        self.rejected_rows = [_row(tokenizer, p.prompt, p.rejected, template) for p in fitting]
        self.n_dropped = len(pairs) - len(fitting)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = step * self.batch_size
        indices = [self._row_at(position) for position in range(first, first + self.batch_size)]
        return self.pair_batch(indices)

    def pair_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(2B, T)`` batch of the pairs at ``indices``: their chosen rows, then their rejected rows."""
        return self.collate([self.rows[i] for i in indices] + [self.rejected_rows[i] for i in indices])


def _row(tokenizer: Tokenizer, prompt: str, response: str, template: ChatTemplate) -> tuple[list[int], list[int]]:
    input_ids, targets = encode_example(tokenizer, prompt, response, template)
    return input_ids[:-1], targets[:-1]  # the last position has no next token (as SFTBatches)


def _encoded_length(tokenizer: Tokenizer, prompt: str, response: str, template: ChatTemplate) -> int:
    return len(_row(tokenizer, prompt, response, template)[0])


class DPOObjective:
    """The DPO loss of a :class:`PreferenceBatches` batch, as :func:`lal.train.train`'s ``loss_fn``.

    ``reference`` is frozen here (``requires_grad`` off, eval mode) and scored under
    ``torch.no_grad``. ``reference=None`` leaves the reference term out (its log-probabilities
    are taken as 0): the loss then only asks for a wider gap between chosen and rejected, which
    pushing the rejected answers' probability towards zero always provides, so the model drifts.
    """

    def __init__(self, reference: GPT | None, beta: float = DPO_BETA) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be positive (it scales the rewards), got {beta}.")
        self.reference = reference
        self.beta = beta
        if reference is not None:
            reference.requires_grad_(False)
            reference.eval()

    def logprobs(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Policy and reference log-probabilities of the chosen and rejected halves, each ``(B,)``."""
        policy_chosen, policy_rejected = sequence_logprobs(model, x, y).chunk(2)
        if self.reference is None:
            ref_chosen, ref_rejected = torch.zeros_like(policy_chosen), torch.zeros_like(policy_rejected)
        else:
            with torch.no_grad():
                ref_chosen, ref_rejected = sequence_logprobs(self.reference, x, y).chunk(2)
        return dict(policy_chosen=policy_chosen, policy_rejected=policy_rejected,
                    ref_chosen=ref_chosen, ref_rejected=ref_rejected)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dpo_loss(**self.logprobs(model, x, y), beta=self.beta)

    @torch.no_grad()
    def metrics(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """What DPO papers report: loss, mean rewards, reward margin and accuracy, mean log-probs."""
        was_training = model.training
        model.eval()
        try:
            logps = self.logprobs(model, x, y)
        finally:
            model.train(was_training)
        chosen = dpo_rewards(logps["policy_chosen"], logps["ref_chosen"], self.beta)  # (B,)
        rejected = dpo_rewards(logps["policy_rejected"], logps["ref_rejected"], self.beta)  # (B,)
        return dict(
            loss=float(dpo_loss(**logps, beta=self.beta)),
            reward_chosen=float(chosen.mean()), reward_rejected=float(rejected.mean()),
            reward_margin=float((chosen - rejected).mean()),
            reward_accuracy=float((chosen > rejected).float().mean()),
            logp_chosen=float(logps["policy_chosen"].mean()), logp_rejected=float(logps["policy_rejected"].mean()),
        )


class RewardLog:
    """A training callback: at each evaluation, the rewards on fixed evaluation pairs.

    One row per evaluation (``step`` and :meth:`DPOObjective.metrics`), kept in ``rows`` and, with
    ``out_dir``, rewritten atomically to ``out_dir/rewards.jsonl``, next to training's ``metrics.jsonl``.
    """

    def __init__(
        self,
        model: GPT,
        objective: DPOObjective,
        batch: tuple[torch.Tensor, torch.Tensor],
        out_dir: str | os.PathLike | None = None,
        rows: Sequence[dict[str, float]] = (),
    ) -> None:
        self.model, self.objective, self.batch = model, objective, batch
        self.path = None if out_dir is None else Path(out_dir) / REWARDS_FILE
        self.rows = list(rows)

    def record(self, step: int) -> dict[str, float]:
        x, y = (tensor.to(next(self.model.parameters()).device) for tensor in self.batch)
        row = {"step": step, **self.objective.metrics(self.model, x, y)}
        self.rows.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(REWARDS_FILE + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
            os.replace(tmp, self.path)
        return row

    def __call__(self, event: EvalEvent) -> None:
        self.record(event.step)

    @staticmethod
    def read(out_dir: str | os.PathLike) -> list[dict[str, float]]:
        """The rows of ``out_dir/rewards.jsonl`` (none when it is not there)."""
        path = Path(out_dir) / REWARDS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def default_dpo_config(**overrides: object) -> TrainConfig:
    """Training settings for DPO after ``lal sft`` (``overrides`` replace any).

    A learning rate thirty times below fine-tuning's (the model is already good; DPO adjusts it),
    a short warmup, no weight decay and no ``best.pt``, as in fine-tuning (:func:`lal.sft.default_finetune_config`).
    """
    settings: dict[str, object] = dict(
        max_steps=DPO_STEPS, batch_size=DPO_BATCH_SIZE, lr=DPO_LR, min_lr=DPO_LR / 10, warmup_steps=20,
        weight_decay=0.0, eval_interval=50, eval_windows=256, save_best=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@dataclass
class PreferenceRun:
    """What :func:`preference_tune` returns: training's history and the reward rows."""

    history: History
    rewards: list[dict[str, float]]


def preference_tune(
    model: GPT,
    pairs: Sequence[PreferencePair],
    val_data: torch.Tensor,
    cfg: TrainConfig,
    *,
    tokenizer: Tokenizer,
    eval_pairs: Sequence[PreferencePair],
    reference: GPT | None | str = "copy",
    beta: float = DPO_BETA,
    resume: bool = False,
    run_name: str | None = None,
) -> PreferenceRun:
    """DPO-tune ``model`` on ``pairs`` with :func:`lal.train.train`; rewards scored on ``eval_pairs``.

    ``reference`` is the frozen model the rewards are measured against: by default a copy of
    ``model`` as it is now; ``None`` trains without the reference term. The validation loss
    training records, on the pretraining tokens ``val_data``, measures drift. With ``run_name``
    (the notebooks) the run goes through :func:`lal.course.train_or_reuse` into that run's
    folder, so ``LAL_REUSE_RUNS=1`` loads it, rewards included, instead of training.
    """
    if reference == "copy":
        reference = copy.deepcopy(model)
    objective = DPOObjective(reference, beta)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    batches = PreferenceBatches(pairs, tokenizer, cfg.batch_size, model.config.block_size, seed=cfg.seed,
                                device=device)
    scoring = PreferenceBatches(eval_pairs, tokenizer, len(eval_pairs), model.config.block_size)
    eval_batch = scoring.pair_batch(range(len(scoring)))
    if run_name is not None:
        from lal.course import run_dir, train_or_reuse

        log = RewardLog(model, objective, eval_batch, run_dir(run_name))
        history = train_or_reuse(run_name, model, batches, val_data, cfg, tokenizer=tokenizer, callbacks=[log],
                                 loss_fn=objective)
        return PreferenceRun(history, log.rows or RewardLog.read(run_dir(run_name)))  # none when reused
    earlier: list[dict[str, float]] = []
    if resume and cfg.out_dir is not None:
        earlier = _resumed_rewards(model, objective, eval_batch, Path(cfg.out_dir))
    log = RewardLog(model, objective, eval_batch, cfg.out_dir, earlier)
    history = train(model, batches, val_data, cfg, tokenizer=tokenizer, callbacks=[log], resume=resume,
                    loss_fn=objective)
    return PreferenceRun(history, log.rows)


def _resumed_rewards(model: GPT, objective: DPOObjective, eval_batch: tuple[torch.Tensor, torch.Tensor],
                     out_dir: Path) -> list[dict[str, float]]:
    """The reward rows of the run being resumed, up to its checkpoint (that step's row scored if missing)."""
    from lal.checkpoint import load_model_state, read_checkpoint
    from lal.train import LAST_CHECKPOINT

    payload, _ = read_checkpoint(out_dir / LAST_CHECKPOINT)
    step = payload["train_state"]["step"]
    rows = [row for row in RewardLog.read(out_dir) if row["step"] <= step]
    if not rows or rows[-1]["step"] != step:  # stopped between the checkpoint and the reward row
        load_model_state(model, payload["model"], source=out_dir / LAST_CHECKPOINT)
        rows.append(RewardLog(model, objective, eval_batch).record(step))
    return rows


# ---------------------------------------------------------------------------------------------
# Reports and the command line
# ---------------------------------------------------------------------------------------------


def weakest_first(before: EvalReport, after: EvalReport) -> str:
    """Two reports of the same examples, one row per task, weakest task (before) first, then "all"."""
    old_rows, new_rows = before.to_rows(), after.to_rows()
    order = sorted(range(len(old_rows) - 1), key=lambda i: (old_rows[i]["accuracy"], i)) + [len(old_rows) - 1]
    lines = [f"{'task':<12} {'before':>7} {'after':>7} {'change':>7} {'total':>5}"]
    for i in order:
        old, new = old_rows[i]["accuracy"], new_rows[i]["accuracy"]
        lines.append(f"{new_rows[i]['task']:<12} {old:>7.1%} {new:>7.1%} {100 * (new - old):>+6.1f}p "
                     f"{new_rows[i]['total']:>5}")
    return "\n".join(lines)


@dataclass
class DPOReport:
    """What :func:`dpo_from_checkpoint` did."""

    path: Path
    history: History
    rewards: list[dict[str, float]]
    n_pairs: int
    n_model_pairs: int
    before: EvalReport
    after: EvalReport

    def __str__(self) -> str:
        first, last = self.rewards[0], self.rewards[-1]
        return "\n".join([
            f"Preference-tuned for {self.history.step[-1]} steps on {self.n_pairs} pairs "
            f"({self.n_model_pairs} rejected answers are the model's own mistakes, the rest near-misses).",
            f"Pretraining validation loss: {self.history.val_loss[0]:.3f} before, {self.history.val_loss[-1]:.3f} "
            f"after ({self.history.val_loss[-1] - self.history.val_loss[0]:+.3f}).",
            f"Evaluation pairs: reward accuracy {first['reward_accuracy']:.1%} -> {last['reward_accuracy']:.1%}, "
            f"reward margin {first['reward_margin']:.3f} -> {last['reward_margin']:.3f}.",
            "Held-out instructions (words never seen in fine-tuning), greedy, exact match, weakest first:",
            weakest_first(self.before, self.after),
            f"Saved to {self.path}; try it with: lal chat --ckpt {self.path.parent}",
        ])


def dpo_from_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int = DPO_STEPS,
    batch_size: int = DPO_BATCH_SIZE,
    lr: float = DPO_LR,
    beta: float = DPO_BETA,
    n_pairs: int = DPO_PAIRS,
    eval_pairs: int = DPO_EVAL_PAIRS,
    device: str | None = None,
    seed: int = 1337,
    progress: bool = True,
    dataset: str | None = None,
    text_path: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], object] = print,
) -> DPOReport:
    """DPO-tune a fine-tuned chat checkpoint into ``out/`` (``lal dpo``).

    The pairs come from the first ``n_pairs`` of the course's training instructions, with the
    checkpoint's own wrong answers as rejected ones (:func:`make_preference_pairs`); the last
    ``eval_pairs`` of them are kept out of training and score the rewards. They are saved in
    ``out/pairs.jsonl`` (a resumed run reads them back). The held-out instructions are scored
    before and after; the validation loss on the pretraining text (``dataset`` or ``text_path``,
    default TinyShakespeare) measures drift. ``out/last.pt``, ``out/metrics.jsonl`` and
    ``out/rewards.jsonl`` are written at every evaluation, so an interrupted run continues with
    ``resume=True``; an earlier run in ``out`` is refused unless ``resume`` or ``overwrite``.
    """
    from lal.checkpoint import load_checkpoint, save_checkpoint
    from lal.data import prepare_text_data
    from lal.device import pick_device

    out = Path(out)
    check_run_folder(out, resume=resume, overwrite=overwrite)
    if overwrite:
        for name in (REWARDS_FILE, PAIRS_FILE):
            (out / name).unlink(missing_ok=True)
    if not 0 < eval_pairs < n_pairs:
        raise ValueError(f"--eval-pairs must be between 1 and --pairs - 1 ({n_pairs - 1}), got {eval_pairs}.")
    checkpoint = load_checkpoint(ckpt, device=pick_device(device))
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    try:
        for token in (DEFAULT_TEMPLATE.user, DEFAULT_TEMPLATE.assistant, DEFAULT_TEMPLATE.end):
            special_token_id(tokenizer, token)
    except ValueError:
        raise ValueError(f"{checkpoint.path} has no chat tokens: DPO starts from a fine-tuned chat model. "
                         f"Run `lal sft --ckpt {ckpt} --out CHAT_DIR` first, then `lal dpo --ckpt CHAT_DIR`.") from None
    heldout = course_instructions("heldout")
    if resume and (out / PAIRS_FILE).is_file():
        pairs = load_pairs(out / PAIRS_FILE)
    else:
        log(f"Answering {n_pairs} training instructions to collect the model's own mistakes...")
        pairs = make_preference_pairs(course_instructions("train")[:n_pairs], model, tokenizer, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        save_pairs(pairs, out / PAIRS_FILE)
    train_pairs, scoring_pairs = pairs[:-eval_pairs], pairs[-eval_pairs:]
    text = prepare_text_data(dataset=dataset, text_path=text_path, tokenizer=tokenizer)
    before = evaluate_instructions(model, tokenizer, heldout)
    log(f"Before preference tuning:\n{before}")
    pretrained_cfg = (checkpoint.extra or {}).get("finetune_config") or {}
    cfg = default_dpo_config(
        max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, device=device, seed=seed, progress=progress,
        eval_windows=pretrained_cfg.get("eval_windows", 256), eval_interval=max(1, min(50, steps // 4)), out_dir=out,
    )
    torch.manual_seed(seed)
    run = preference_tune(model, train_pairs, text.val, cfg, tokenizer=tokenizer, eval_pairs=scoring_pairs,
                          beta=beta, resume=resume)
    after = evaluate_instructions(model, tokenizer, heldout)
    extra = {
        "preference_tuned_from": str(checkpoint.path),
        "dpo_config": cfg.to_dict(),
        "beta": beta,
        "val_loss": run.history.val_loss[-1],
        "heldout_accuracy": after.accuracy,
    }
    path = save_checkpoint(out / "last.pt", model, tokenizer, extra=extra)
    n_model = sum(pair.source == "model" for pair in pairs)
    return DPOReport(Path(path), run.history, run.rewards, len(train_pairs), n_model, before, after)
