"""``MODEL_CARD.md``: what a trained model is, what it was trained on, and what it is not for.

Every ``lal train`` run writes one beside its checkpoints (Mitchell et al. 2019, "Model Cards for
Model Reporting", scaled down to a small model): the data (its name or file, SHA-256 and token
counts), the tokenizer, the architecture and parameter count, tokens per parameter, the steps
and time, the hardware and precision, the best validation loss and when it was reached, the loss
curve as an image, a few samples, and the model's limitations and intended use. The checksum
and the configuration make a run reproducible; the limitations keep its samples in proportion.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lal.model import GPT
from lal.tokenizers import Tokenizer
from lal.train import History, TrainConfig

MODEL_CARD = "MODEL_CARD.md"
LOSS_CURVE = "loss_curve.png"


@dataclass
class DataInfo:
    """The training text: where it came from, its checksum, and how many tokens each split holds."""

    name: str
    path: Path | None
    sha256: str | None
    train_tokens: int
    val_tokens: int

    @classmethod
    def from_file(cls, name: str, path: str | os.PathLike | None, train_tokens: int, val_tokens: int) -> DataInfo:
        path = Path(path) if path is not None else None
        digest = file_sha256(path) if path is not None and path.is_file() else None
        return cls(name=name, path=path, sha256=digest, train_tokens=train_tokens, val_tokens=val_tokens)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (corpora can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while piece := file.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def save_loss_curve(history: History, path: str | os.PathLike, title: str = "") -> Path:
    """Training and validation loss against steps, as a PNG (no display or notebook needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=110)
    axes = figure.add_subplot()
    train_steps = [s for s, loss in zip(history.step, history.train_loss) if loss is not None]
    train_losses = [loss for loss in history.train_loss if loss is not None]
    axes.plot(train_steps, train_losses, label="training (mean since the last evaluation)", color="tab:blue")
    axes.plot(history.step, history.val_loss, label="validation", color="tab:orange", marker=".")
    if history.best_step is not None:
        axes.axhline(history.best_val_loss, color="tab:orange", linestyle=":", linewidth=1)
        axes.annotate(f"best {history.best_val_loss:.4f} (step {history.best_step})",
                      (history.best_step, history.best_val_loss), textcoords="offset points", xytext=(-10, 12),
                      ha="right", fontsize=8)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("cross-entropy (nats per token)")
    axes.set_title(title or "Loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def sample_texts(model: GPT, tokenizer: Tokenizer, n: int = 2, max_new_tokens: int = 200, seed: int = 0,
                 prompt: str = "\n") -> list[str]:
    """``n`` seeded samples (temperature 0.8, top-k 50) from ``model``, for the card."""
    from lal.sample import generate_text

    return [
        generate_text(model, tokenizer, prompt, max_new_tokens, temperature=0.8, top_k=50, seed=seed + i)
        for i in range(n)
    ]


def write_model_card(
    out_dir: str | os.PathLike,
    model: GPT,
    tokenizer: Tokenizer,
    cfg: TrainConfig,
    history: History,
    data: DataInfo,
    *,
    preset: str | None = None,
    hardware: str = "",
    precision: str = "",
    world_size: int = 1,
    samples: list[str] | None = None,
) -> Path:
    """Write ``out_dir/MODEL_CARD.md`` and its ``loss_curve.png``; return the card's path.

    ``model`` should hold the weights the card describes (the best checkpoint's); ``samples``
    default to two seeded samples from it. ``hardware`` and ``precision`` name where and how it
    trained (e.g. "NVIDIA H200", "bf16, compiled").
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    n_params = model.num_parameters()
    if samples is None:
        samples = sample_texts(model, tokenizer)
    save_loss_curve(history, out_dir / LOSS_CURVE, title=f"{preset or 'model'} on {data.name}")

    steps = history.step[-1] if history.step else 0
    tokens_seen = history.tokens[-1] if history.tokens else 0
    elapsed = history.elapsed_s[-1] if history.elapsed_s else 0.0
    block_size = cfg.block_size or config.block_size
    global_batch = cfg.batch_size * cfg.grad_accum_steps * world_size
    best = "—" if history.best_step is None else f"{history.best_val_loss:.4f} at step {history.best_step}"
    source = f"`{data.path.name}`" if data.path is not None else "—"
    lines = [
        f"# Model card: {preset or 'GPT'} trained on {data.name}",
        "",
        f"A {n_params / 1e6:.2f}M-parameter GPT-2-style decoder trained from scratch with `lal train`.",
        "",
        "## Data",
        "",
        "| | |",
        "|---|---|",
        f"| text | {data.name} (file {source}) |",
        f"| SHA-256 | `{data.sha256 or 'unknown'}` |",
        f"| tokens | {data.train_tokens:,} training, {data.val_tokens:,} validation (the last 10 %, never trained on) |",
        f"| tokenizer | {tokenizer.name}, {tokenizer.vocab_size:,} tokens |",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {n_params:,} |",
        f"| shape | {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, context "
        f"{config.block_size}, dropout {config.dropout}, {config.attn_impl} attention |",
        f"| training tokens per parameter | {data.train_tokens / n_params:.2f} (distinct); "
        f"{tokens_seen / n_params:.3g} read in training |",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {steps:,} ({history.stopped_reason or 'unknown'}), {tokens_seen:,} tokens read |",
        f"| batch | {global_batch} windows × {block_size} tokens per step ({cfg.batch_size} × "
        f"{cfg.grad_accum_steps} accumulation × {world_size} process(es)) |",
        f"| optimiser | AdamW, lr {cfg.lr:g} → {cfg.min_lr:g} (warmup {cfg.warmup_steps}, cosine), "
        f"betas ({cfg.beta1}, {cfg.beta2}), weight decay {cfg.weight_decay}, clip {cfg.grad_clip} |",
        f"| time | {elapsed:,.1f} s |",
        f"| hardware | {hardware or 'not recorded'} |",
        f"| precision | {precision or cfg.precision} |",
        f"| best validation loss | {best} (perplexity {_perplexity(history.best_val_loss)}) |",
        f"| seed | {cfg.seed} |",
        "",
        f"![Training and validation loss]({LOSS_CURVE})",
        "",
        "## Samples",
        "",
        "Temperature 0.8, top-k 50, seeds 0 and 1:",
        "",
    ]
    for sample in samples:
        lines += ["```text", sample.strip("\n"), "```", ""]
    lines += [
        "## Intended use",
        "",
        "Learning and experimenting: seeing what a small language model learns from one text, comparing",
        "settings, and fine-tuning practice (`lal sft`). It continues text in the style of its training data.",
        "",
        "## Limitations",
        "",
        f"- It knows only its training text ({data.train_tokens:,} tokens): it has no knowledge of the world",
        "  beyond it, and states made-up things as fluently as true ones.",
        f"- With {data.train_tokens / n_params:.2f} training tokens per parameter it "
        + ("can memorise passages: check samples against the text before reusing them."
           if data.train_tokens / n_params < 20 else "is still far from what larger models learn from."),
        "- It reproduces the biases and the language of its source; it is not safe to deploy to users.",
        f"- Its context is {config.block_size} tokens: it cannot use anything earlier than that.",
        "",
        "## Reproduce",
        "",
        "```",
        f"lal train --preset {preset or '<preset>'} --max-steps {cfg.max_steps} --batch-size {cfg.batch_size} "
        f"--lr {cfg.lr:g} --seed {cfg.seed} --out <folder>",
        "```",
        "",
    ]
    path = out_dir / MODEL_CARD
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp_path, path)
    return path


def _perplexity(loss: float) -> str:
    return "—" if not torch.isfinite(torch.tensor(loss)) else f"{torch.exp(torch.tensor(loss)).item():.2f}"
