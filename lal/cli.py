"""The ``lal`` command line: train, generate, fine-tune and chat with your own small GPT.

Every command is a thin layer over the package, so what the notebooks teach is what runs here::

    lal train --dataset tinyshakespeare --tokenizer char --preset char-tiny --out runs/shakespeare
    lal generate --ckpt runs/shakespeare --prompt "ROMEO:" --max-new-tokens 300
    lal corpus --file my_notes/ --url https://example.org/essay.html --out my_corpus.txt
    lal train --text my_corpus.txt --tokenizer bpe --preset bpe-tiny --out runs/mine
    lal sft --ckpt runs/shakespeare --out runs/shakespeare-chat
    lal eval --ckpt runs/shakespeare-chat --data data/sft/instructions_heldout.jsonl
    lal dpo --ckpt runs/shakespeare-chat --out runs/shakespeare-dpo
    lal chat --ckpt runs/shakespeare-chat
    lal bench --preset char-small
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import torch

from lal import __version__
from lal.device import PRECISIONS

EPILOG = "Run `lal COMMAND --help` for the options of one command. Docs: README.md in the repository."


def finite_float(text: str) -> float:
    """argparse type: a float that is a real number (``nan`` and ``inf`` parse, but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


#: A line of help that shows a command to type: "Example: lal train …", "Several GPUs: torchrun …".
COMMAND_LINE = re.compile(r"^(?:[A-Z][\w ]*: )?(?:lal|torchrun|python) ")


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, and never breaks an example command in the middle of an argument.

    Prose is wrapped to the terminal as usual; a line that is a ``lal`` command (an example) is
    broken only before a ``--flag``, with a shell continuation, so it can be copied as it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if COMMAND_LINE.match(line):
                lines += _wrap_command(indent + line, width)
            else:
                lines.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent))
        return "\n".join(lines)


def _wrap_command(line: str, width: int) -> list[str]:
    """``line`` broken before ``--flags`` so no piece is longer than ``width``, joined with `` \\``."""
    pieces = re.split(r" (?=--)", line)
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if len(lines[-1]) + 1 + len(piece) + 2 <= width:
            lines[-1] += " " + piece
        else:
            lines[-1] += " \\"
            lines.append("    " + piece)
    return lines


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=200, help="how many tokens to generate (default 200)")
    group.add_argument("--temperature", type=finite_float, default=0.8, help="0 is greedy; higher is more random (default 0.8)")
    group.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    group.add_argument("--top-p", type=finite_float, default=None, help="sample from the smallest set with this much probability")
    group.add_argument("--seed", type=int, default=None, help="fix the randomness to get the same text again")
    group.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")


#: The array libraries lal trains and samples with: PyTorch (the reference) and Apple's MLX (lal.mlx).
BACKENDS = ("torch", "mlx")


def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help='torch, or mlx: the same model in Apple\'s MLX (fast on a Mac; pip install "lal[mlx]"). '
        "Both read and write the same checkpoints",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lal",
        description="Train, sample from and fine-tune a small GPT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lal {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="pretrain a model on a dataset or on your own text",
        description="Pretrain a GPT from scratch. Writes DIR/metrics.jsonl, the checkpoints "
        "DIR/best.pt (lowest validation loss) and DIR/last.pt (to resume from), and DIR/MODEL_CARD.md.",
        epilog="Example: lal train --dataset tinyshakespeare --tokenizer char --preset char-tiny --out runs/tiny\n"
        "Several GPUs: torchrun --standalone --nproc_per_node 4 -m lal train --preset char-medium --out runs/ddp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--dataset", default=None, help="a named dataset (default: tinyshakespeare)")
    source.add_argument("--text", type=Path, help="train on your own UTF-8 text file instead (see `lal corpus`)")
    train.add_argument("--tokenizer", choices=["char", "bpe", "tiktoken"], default=None,
                       help="how text becomes tokens (default: char; with --resume, the checkpoint's)")
    train.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default 1024)")
    train.add_argument("--preset", default=None,
                       help="model size, see `lal presets` (default: char-tiny; with --resume, the checkpoint's)")
    train.add_argument("--out", type=Path, required=True, help="folder for metrics and checkpoints")
    train.add_argument("--max-steps", type=int, default=None,
                       help="optimizer steps (default: the preset's); a run no longer than the preset's warmup "
                       "ends while still warming up, which the schedule line says")
    train.add_argument("--target-val-loss", type=finite_float, default=None, help="stop once validation loss reaches this")
    train.add_argument("--batch-size", type=int, default=None, help="windows per step (default: the preset's)")
    train.add_argument("--block-size", type=int, default=None, help="context length (default: the preset's)")
    train.add_argument("--dropout", type=finite_float, default=None,
                       help="dropout probability in the model (default: the preset's: 0.2 for char-medium, else 0.0)")
    train.add_argument("--lr", type=finite_float, default=None, help="peak learning rate (default: the preset's)")
    train.add_argument("--eval-interval", type=int, default=None,
                       help="steps between evaluations (default: the preset's)")
    train.add_argument("--patience", type=int, default=None,
                       help="stop after this many evaluations without improvement (default: the preset's)")
    train.add_argument("--grad-accum-steps", type=int, default=None,
                       help="micro-batches per optimizer step (default: the preset's)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow to start)")
    train.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 1337)")
    train.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto (default): bf16 where the GPU has it, fp16 + gradient scaler on older GPUs, fp32 on CPU/MPS")
    train.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the earlier run in DIR (without it, lal refuses to touch one)")
    train.add_argument("--dry-run", action="store_true",
                       help="print the plan (memory per step, the batch that fits, time from a few timed steps) and exit")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_backend_option(train)

    generate = commands.add_parser(
        "generate",
        help="sample text from a trained model",
        description="Continue a prompt with a trained model, or with GPT-2's real weights, printing tokens "
        "as they come.",
        epilog='Examples: lal generate --ckpt runs/tiny --prompt "ROMEO:" --max-new-tokens 300 --seed 1\n'
        '          lal generate --gpt2 gpt2 --prompt "The meaning of life is" --top-k 50',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    weights = generate.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", type=Path, help="checkpoint file or training folder")
    weights.add_argument(
        "--gpt2", metavar="NAME_OR_DIR",
        help="GPT-2's weights: gpt2, gpt2-medium, gpt2-large or gpt2-xl (downloaded once), or a folder "
        "with config.json and model.safetensors (offline)",
    )
    generate.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    _add_sampling_options(generate)
    _add_backend_option(generate)

    sft = commands.add_parser(
        "sft",
        help="fine-tune a pretrained model to follow instructions",
        description="Supervised fine-tuning on (prompt, response) pairs with the chat template; the "
        "loss counts response tokens only. Without --data it uses the course's generated "
        "instruction set and scores the held-out instructions (words never seen in fine-tuning) "
        "before and after. --mix-ratio mixes in pretraining text to limit forgetting. Writes "
        "DIR/last.pt and DIR/metrics.jsonl at every evaluation; an interrupted run continues with --resume.",
        epilog="Example: lal sft --ckpt runs/tiny --out runs/tiny-chat",
    )
    from lal.sft import SFT_BATCH_SIZE, SFT_LR, SFT_MIX_RATIO, SFT_STEPS

    sft.add_argument("--ckpt", type=Path, required=True, help="the pretrained checkpoint or folder")
    sft.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned checkpoint and metrics")
    sft.add_argument("--data", type=Path, default=None,
                     help='JSONL file of {"prompt": ..., "response": ...} (default: the course\'s instructions)')
    pretraining = sft.add_mutually_exclusive_group()
    pretraining.add_argument("--dataset", default=None, help="pretraining dataset to mix in (default: tinyshakespeare)")
    pretraining.add_argument("--text", type=Path, default=None, help="or your own text the model was pretrained on")
    sft.add_argument("--steps", type=int, default=SFT_STEPS, help="optimizer steps")
    sft.add_argument("--batch-size", type=int, default=SFT_BATCH_SIZE, help="examples per step")
    sft.add_argument("--lr", type=finite_float, default=SFT_LR, help="peak learning rate")
    sft.add_argument("--mix-ratio", type=finite_float, default=SFT_MIX_RATIO, help="share of steps on pretraining text")
    sft.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    sft.add_argument("--seed", type=int, default=1337, help="random seed")
    run_state = sft.add_mutually_exclusive_group()
    run_state.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run_state.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    sft.add_argument("--quiet", action="store_true", help="no progress bar")

    dpo = commands.add_parser(
        "dpo",
        help="preference-tune a fine-tuned chat model (DPO)",
        description="Direct Preference Optimization after `lal sft`: for training instructions, the correct "
        "answer is preferred to a wrong one (the model's own mistake where it makes one, else a near-miss), "
        "against a frozen copy of the model (the reference). Scores the held-out instructions before and "
        "after, weakest task first. Writes DIR/pairs.jsonl, and DIR/last.pt, DIR/metrics.jsonl (validation "
        "loss on pretraining text: drift) and DIR/rewards.jsonl (reward margins and accuracies) at every "
        "evaluation; an interrupted run continues with --resume.",
        epilog="Example: lal dpo --ckpt runs/tiny-chat --out runs/tiny-dpo",
    )
    from lal.dpo import DPO_BATCH_SIZE, DPO_BETA, DPO_EVAL_PAIRS, DPO_LR, DPO_PAIRS, DPO_STEPS

    dpo.add_argument("--ckpt", type=Path, required=True, help="the fine-tuned chat checkpoint or folder (lal sft)")
    dpo.add_argument("--out", type=Path, required=True, help="folder for the preference-tuned checkpoint and metrics")
    dpo_text = dpo.add_mutually_exclusive_group()
    dpo_text.add_argument("--dataset", default=None, help="pretraining dataset scored for drift (default: tinyshakespeare)")
    dpo_text.add_argument("--text", type=Path, default=None, help="or your own text the model was pretrained on")
    dpo.add_argument("--steps", type=int, default=DPO_STEPS, help="optimizer steps")
    dpo.add_argument("--batch-size", type=int, default=DPO_BATCH_SIZE, help="pairs per step")
    dpo.add_argument("--lr", type=finite_float, default=DPO_LR, help="peak learning rate")
    dpo.add_argument("--beta", type=finite_float, default=DPO_BETA,
                     help="how far the model may move from the reference (smaller: further)")
    dpo.add_argument("--pairs", type=int, default=DPO_PAIRS, help="training instructions turned into pairs")
    dpo.add_argument("--eval-pairs", type=int, default=DPO_EVAL_PAIRS,
                     help="of those, pairs kept out of training to score rewards on")
    dpo.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    dpo.add_argument("--seed", type=int, default=1337, help="random seed")
    dpo_state = dpo.add_mutually_exclusive_group()
    dpo_state.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    dpo_state.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    dpo.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "eval",
        help="score a model on an instruction file",
        description="Answer every instruction of a JSONL file greedily and score the answers by exact match "
        "(the harness `lal sft` reports). Prints a per-task table and, last, the overall accuracy.",
        epilog="Example: lal eval --ckpt runs/tiny-chat --data data/sft/instructions_heldout.jsonl",
    )
    evaluate.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or folder")
    evaluate.add_argument("--data", type=Path, required=True, help='JSONL file of {"prompt", "response", "task"}')
    evaluate.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    evaluate.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")

    chat = commands.add_parser(
        "chat",
        help="talk to a fine-tuned model",
        description="An interactive chat loop with a fine-tuned model (empty line or Ctrl-D to quit).",
    )
    chat.add_argument("--ckpt", type=Path, required=True, help="the fine-tuned checkpoint or its folder")
    chat.add_argument("--prompt", default=None, help="answer this one message and exit")
    _add_sampling_options(chat)

    corpus = commands.add_parser(
        "corpus",
        help="build a training text from your files or web pages",
        description="Collect text into one UTF-8 file to train on: plain files and folders (.txt, .md, "
        ".html), and web pages fetched politely (robots.txt, a delay between requests) with "
        "scripts, navigation, headers, footers and sidebars removed.",
        epilog="Example: lal corpus --file notes/ --url https://example.org/a.html --out corpus.txt",
    )
    corpus.add_argument("--url", action="append", default=[], help="a web page (repeatable)")
    corpus.add_argument("--file", action="append", default=[], type=Path, help="a file or folder (repeatable)")
    corpus.add_argument("--out", type=Path, required=True, help="the text file to write")
    corpus.add_argument("--delay", type=finite_float, default=1.0, help="seconds between requests to one site (default 1)")
    corpus.add_argument("--timeout", type=finite_float, default=10.0,
                        help="seconds without an answer before a request gives up (default 10)")
    corpus.add_argument("--deadline", type=finite_float, default=60.0,
                        help="most seconds one page may take to arrive in all (default 60)")
    corpus.add_argument("--max-page-mb", type=finite_float, default=10.0,
                        help="largest page kept, in MB; larger ones are skipped (default 10)")

    bench = commands.add_parser(
        "bench",
        help="measure training speed on this machine",
        description="Time training steps of a preset: tokens/s, MFU and peak memory.",
    )
    bench.add_argument("--preset", default="char-tiny", help="model size, see `lal presets`")
    bench.add_argument("--vocab-size", type=int, default=None, help="default: 65 for char presets, 50257 otherwise")
    bench.add_argument("--batch-size", type=int, default=16, help="windows per step (default 16, as in the README's table)")
    bench.add_argument("--block-size", type=int, default=None, help="context length (default: the preset's)")
    bench.add_argument("--steps", type=int, default=20, help="timed steps, after 3 untimed ones (default 20)")
    bench.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    bench.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 where native, fp16 + gradient scaler on older GPUs, fp32 on CPU/MPS")
    bench.add_argument("--compile", action="store_true", help="torch.compile the model first")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_backend_option(bench)

    commands.add_parser(
        "presets",
        help="list the model presets and their sizes",
        description="List the model presets: layers, heads, width, context length and parameters "
        "(char presets counted with a 65-character vocabulary, BPE presets with GPT-2's 50,257 tokens). "
        "Pass a name to `lal train --preset` or `lal bench --preset`.",
    )
    for command_parser in commands.choices.values():
        command_parser.formatter_class = HelpFormatter
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from lal.data import prepare_text_data
    from lal.device import seed_everything
    from lal.distributed import finish_distributed, init_distributed, main_process_first
    from lal.model import GPT, preset_config
    from lal.plan import out_of_memory_advice, plan_run
    from lal.train import default_train_config, train

    if args.backend == "mlx":
        _check_mlx_options(args)
    preset = args.preset or "char-tiny"
    cfg = default_train_config(preset)
    overrides = dict(
        max_steps=args.max_steps,
        target_val_loss=args.target_val_loss,
        batch_size=args.batch_size,
        block_size=args.block_size,
        lr=args.lr,
        eval_interval=args.eval_interval,
        patience=args.patience,
        grad_accum_steps=args.grad_accum_steps,
        device=args.device,
        seed=args.seed,
    )
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    cfg.compile = cfg.compile or args.compile
    cfg.precision = args.precision
    cfg.out_dir = str(args.out)
    cfg.progress = not args.quiet
    context, cfg.device = init_distributed(cfg.device)  # rank 0 of 1 unless started by torchrun
    say = print if context.is_main else _silent
    # Rank 0 alone guards the folder: the others may start after it has begun writing there.
    previous = _check_out_folder(args) if context.is_main or args.resume else None
    if previous is not None:
        _refuse_conflicts_with_checkpoint(args, previous)

    # A resumed run keeps its tokenizer (the ids it was trained on) and its model's shape.
    tokenizer = previous.tokenizer if previous is not None else None
    with main_process_first():  # under torchrun, one process downloads and writes the token file
        data = prepare_text_data(
            dataset=args.dataset, text_path=args.text, tokenizer_kind=args.tokenizer or "char",
            vocab_size=args.vocab_size, tokenizer=tokenizer, token_file=args.out / "tokens.bin",
        )
    seed_everything(cfg.seed)  # the same --seed gives the same initial weights
    if previous is not None:
        config = previous.model.config
        model = GPT(config if args.dropout is None else dataclasses.replace(config, dropout=args.dropout))
    else:
        shape = dict(block_size=args.block_size, dropout=args.dropout)
        model = GPT(preset_config(preset, vocab_size=data.tokenizer.vocab_size,
                                  **{name: value for name, value in shape.items() if value is not None}))
    say(
        f"Training {preset} ({model.num_parameters() / 1e6:.2f}M parameters) on {data.description}: "
        f"{len(data.train):,} training and {len(data.val):,} validation tokens, "
        f"{data.tokenizer.name} tokenizer with {_vocabulary_text(data.tokenizer)}."
    )
    if args.dry_run:
        say(plan_run(model, cfg, train_data=data.train, val_data=data.val).summary())
        finish_distributed()
        return 0
    say(_schedule_text(cfg, context.world_size, model.config.block_size))
    try:
        if args.backend == "mlx":  # the same initial weights (the seed's), trained by MLX
            from lal.mlx import from_torch
            from lal.mlx.train import train as train_mlx

            history = train_mlx(from_torch(model), data.train, data.val, cfg, tokenizer=data.tokenizer)
        else:
            history = train(model, data.train, data.val, cfg, tokenizer=data.tokenizer, resume=args.resume)
    except torch.OutOfMemoryError:
        raise ValueError(out_of_memory_advice(cfg, cfg.block_size or model.config.block_size, cfg.device)) from None
    if context.is_main:
        card = _write_model_card(args, cfg, history, data, context.world_size)
        print(
            f"Done after {history.step[-1] if history.step else 0} steps: best validation loss "
            f"{history.best_val_loss:.4f} at step {history.best_step} ({history.stopped_reason}). "
            f"Checkpoints, metrics.jsonl and {card.name} are in {args.out}/."
        )
    finish_distributed()
    return 0


def _check_mlx_options(args: argparse.Namespace) -> None:
    """With --backend mlx: MLX must import, and options only the PyTorch backend has are refused."""
    from lal.mlx import require_mlx

    require_mlx()
    refused = [flag for flag, used in (("--resume", getattr(args, "resume", False)),
                                       ("--dry-run", getattr(args, "dry_run", False)),
                                       (f"--precision {args.precision}", args.precision not in ("auto", "fp32")))
               if used]
    if refused:
        raise ValueError(f"{', '.join(refused)} needs --backend torch; the MLX backend trains new runs in float32.")


#: What a training folder holds; a folder with any of these holds an earlier run.
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "tokens.bin", "MODEL_CARD.md")


def _check_out_folder(args: argparse.Namespace):
    """Refuse an --out that would lose an earlier run; return that run's last checkpoint on --resume."""
    from lal.checkpoint import load_checkpoint

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; --out names a folder for the run (it is created if missing).")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: choose one.")
    if args.resume:
        return load_checkpoint(out / "last.pt")
    if args.dry_run:  # writes nothing, so it endangers nothing
        return None
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not args.overwrite:
        raise ValueError(
            f"{out} already holds a run ({', '.join(earlier)}). Continue it with --resume, replace it with "
            "--overwrite, or choose another --out."
        )
    for name in earlier:
        (out / name).unlink()
    return None


def _refuse_conflicts_with_checkpoint(args: argparse.Namespace, previous) -> None:
    """On --resume the checkpoint fixes the tokenizer and the model: refuse flags that say otherwise."""
    from lal.model import preset_config

    conflicts = []
    tokenizer = previous.tokenizer
    if args.tokenizer is not None and args.tokenizer != tokenizer.name.split("-")[0]:
        conflicts.append(f"--tokenizer {args.tokenizer} (the run uses {tokenizer.name})")
    if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
        conflicts.append(f"--vocab-size {args.vocab_size} (the run has {tokenizer.vocab_size})")
    config = previous.model.config
    if args.block_size is not None and args.block_size != config.block_size:
        conflicts.append(f"--block-size {args.block_size} (the run's model has {config.block_size})")
    if args.preset is not None:
        wanted = preset_config(args.preset, vocab_size=config.vocab_size, block_size=config.block_size)
        if (wanted.n_layer, wanted.n_head, wanted.n_embd) != (config.n_layer, config.n_head, config.n_embd):
            conflicts.append(
                f"--preset {args.preset} (the run's model has {config.n_layer} layers, {config.n_head} heads, "
                f"width {config.n_embd})"
            )
    if conflicts:
        raise ValueError(
            f"--resume continues the run in {args.out}, whose checkpoint fixes these settings: "
            f"{'; '.join(conflicts)}. Drop those flags, or start a new run in another --out."
        )


def _silent(*_args: object, **_kwargs: object) -> None:
    """print() for the processes of a distributed run other than rank 0: they say nothing."""


def _vocabulary_text(tokenizer) -> str:
    """"68 tokens (65 characters + 3 special tokens)": the count the model sees, and what it is made of.

    The tokenizers of `lal train` register the chat tokens `lal sft` needs from the start, so the
    count is a few more than the text's characters (the 65 of TinyShakespeare the docs quote).
    """
    special = len(tokenizer.special_tokens)
    if not special:
        return f"{tokenizer.vocab_size} tokens"
    ordinary = "characters" if tokenizer.name == "char" else "text tokens"
    return f"{tokenizer.vocab_size} tokens ({tokenizer.vocab_size - special} {ordinary} + {special} special tokens)"


def _schedule_text(cfg, world_size: int, model_block_size: int) -> str:
    """The run's batch and learning-rate schedule in one line, as it will really happen.

    A run no longer than its warmup never reaches the peak rate nor the cosine: the line says so,
    with the rate it ends at, instead of describing a decay that will not happen. (The warmup is
    not shortened to fit: a run extended later with --resume must follow the schedule an
    uninterrupted longer run would have.)
    """
    from lal.train import lr_at

    block_size = cfg.block_size or model_block_size
    global_batch = cfg.batch_size * cfg.grad_accum_steps * world_size
    if cfg.max_steps <= cfg.warmup_steps:
        schedule = (f"learning rate warms up towards {cfg.lr:g} over {cfg.warmup_steps} steps, longer than this "
                    f"run: it ends still warming up, at {lr_at(cfg.max_steps - 1, cfg):.2g}")
    else:
        schedule = (f"learning rate warms up to {cfg.lr:g} over {cfg.warmup_steps} steps, then cosine to "
                    f"{cfg.min_lr:g} at step {cfg.decay_steps}")
    return (
        f"Global batch {global_batch} windows × {block_size} tokens = {global_batch * block_size:,} tokens per step "
        f"({cfg.batch_size} per micro-batch × {cfg.grad_accum_steps} accumulation × {world_size} process(es)); "
        f"{schedule}; {cfg.max_steps} steps."
    )


def _write_model_card(args: argparse.Namespace, cfg, history, data, world_size: int) -> Path:
    """MODEL_CARD.md for the run's best checkpoint (rank 0 only)."""
    from lal.bench import device_name
    from lal.checkpoint import load_checkpoint
    from lal.data import dataset_path
    from lal.device import pick_device, precision_name
    from lal.model_card import DataInfo, write_model_card

    device = pick_device(cfg.device)
    best = load_checkpoint(args.out, device=device)  # best.pt, else last.pt
    path = args.text if args.text is not None else dataset_path(args.dataset or "tinyshakespeare")
    info = DataInfo.from_file(data.description, path, len(data.train), len(data.val))
    hardware = device_name(device) + (f" × {world_size} processes" if world_size > 1 else "")
    precision = precision_name(device, cfg.precision) + (", torch.compile" if cfg.compile else "")
    if args.backend == "mlx":
        hardware, precision = f"{hardware}, MLX backend", "fp32" + (", mx.compile" if cfg.compile else "")
    return write_model_card(args.out, best.model, best.tokenizer, cfg, history, info, preset=args.preset or "char-tiny",
                            hardware=hardware, precision=precision, world_size=world_size)


def _print_stream(piece: str) -> None:
    print(piece, end="", flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from lal.checkpoint import load_checkpoint

    if args.backend == "mlx":
        from lal.mlx import require_mlx

        require_mlx()
    from lal.device import pick_device
    from lal.sample import generate_text

    if args.gpt2 is not None:
        from lal.pretrained import load_gpt2

        model, tokenizer = load_gpt2(args.gpt2, device=pick_device(args.device) if args.backend == "torch" else "cpu")
    else:
        checkpoint = load_checkpoint(args.ckpt, device=pick_device(args.device) if args.backend == "torch" else "cpu")
        model, tokenizer = checkpoint.model, checkpoint.tokenizer
    if args.backend == "mlx":
        return _generate_mlx(args, model, tokenizer)
    print(args.prompt, end="", flush=True)
    generate_text(
        model, tokenizer, args.prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream_to=_print_stream,
    )
    print()
    return 0


def _generate_mlx(args: argparse.Namespace, model, tokenizer) -> int:
    """``lal generate --backend mlx``: the loaded weights converted to MLX, sampled by lal.mlx."""
    import mlx.core as mx

    from lal.mlx import from_torch, generate_text
    from lal.mlx.train import mlx_device

    mx.set_default_device(mlx_device(args.device))
    mlx_model = from_torch(model)
    print(args.prompt, end="", flush=True)
    generate_text(mlx_model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream_to=_print_stream)
    print()
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from lal.sft import finetune_from_checkpoint

    try:
        report = finetune_from_checkpoint(
            args.ckpt, args.out, data_path=args.data, dataset=args.dataset, text_path=args.text, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, mix_ratio=args.mix_ratio, device=args.device, seed=args.seed,
            progress=not args.quiet, resume=args.resume, overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        saved = args.out / "last.pt"
        kept = f"{saved} keeps the run as of its last evaluation" if saved.is_file() else "Nothing was saved yet"
        print(f"\nInterrupted. {kept}; continue it with: {_sft_resume_command(args)}" if saved.is_file()
              else f"\nInterrupted. {kept}: run the same command again.", file=sys.stderr)
        return 130
    print(report)
    return 0


def _sft_resume_command(args: argparse.Namespace) -> str:
    """The ``lal sft`` command that continues this run: the same settings, plus --resume."""
    defaults = vars(build_parser().parse_args(["sft", "--ckpt", "x", "--out", "x"]))
    words = ["lal", "sft", "--ckpt", str(args.ckpt), "--out", str(args.out)]
    for name in ("data", "dataset", "text", "steps", "batch_size", "lr", "mix_ratio", "device", "seed"):
        value = getattr(args, name)
        if value != defaults[name]:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(words + ["--resume"])


def cmd_dpo(args: argparse.Namespace) -> int:
    from lal.dpo import dpo_from_checkpoint

    try:
        report = dpo_from_checkpoint(
            args.ckpt, args.out, dataset=args.dataset, text_path=args.text, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, beta=args.beta, n_pairs=args.pairs, eval_pairs=args.eval_pairs,
            device=args.device, seed=args.seed, progress=not args.quiet, resume=args.resume,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        saved = args.out / "last.pt"
        print(f"\nInterrupted. {saved} keeps the run as of its last evaluation; continue it with: "
              f"{_resume_command(args, 'dpo')}" if saved.is_file()
              else "\nInterrupted. Nothing was saved yet: run the same command again.", file=sys.stderr)
        return 130
    print(report)
    return 0


def _resume_command(args: argparse.Namespace, command: str) -> str:
    """The ``lal COMMAND`` line that continues this run: the settings that differ from the defaults, plus --resume."""
    defaults = vars(build_parser().parse_args([command, "--ckpt", "x", "--out", "x"]))
    words = ["lal", command, "--ckpt", str(args.ckpt), "--out", str(args.out)]
    for name, value in vars(args).items():
        if name not in ("command", "ckpt", "out", "resume", "overwrite", "quiet") and value != defaults[name]:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(words + ["--resume"])


def cmd_eval(args: argparse.Namespace) -> int:
    from lal.sft import evaluate_checkpoint

    report = evaluate_checkpoint(args.ckpt, args.data, device=args.device)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report)
        print(report.summary())
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from lal.checkpoint import load_checkpoint
    from lal.device import pick_device
    from lal.sft import chat_reply

    checkpoint = load_checkpoint(args.ckpt, device=pick_device(args.device))
    sampling = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed,
    )

    def reply(message: str) -> None:
        print("model> ", end="", flush=True)
        try:
            chat_reply(checkpoint.model, checkpoint.tokenizer, message, stream_to=_print_stream, **sampling)
        except ValueError as error:  # e.g. a character the model's vocabulary lacks: say so, keep chatting
            if args.prompt is not None:
                raise
            print(f"\n(not sent: {error})", end="")
        print()

    if args.prompt is not None:
        reply(args.prompt)
        return 0
    while True:
        try:
            message = input("you> ")
        except EOFError:
            print()
            return 0
        if not message.strip():
            return 0
        reply(message)


def cmd_corpus(args: argparse.Namespace) -> int:
    from lal.corpus import PoliteFetcher, build_corpus

    if not args.url and not args.file:
        raise ValueError("Give at least one --file or --url to collect text from.")
    fetcher = PoliteFetcher(
        delay_s=args.delay, timeout_s=args.timeout, deadline_s=args.deadline, max_bytes=int(args.max_page_mb * 1e6),
    ) if args.url else None
    report = build_corpus(paths=args.file, urls=args.url, out=args.out, fetcher=fetcher)
    print(report)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lal.bench import benchmark

    vocab_size = args.vocab_size or (65 if args.preset.startswith("char") else 50257)
    if args.backend == "mlx":
        _check_mlx_options(args)
        from lal.mlx.bench import benchmark as benchmark_mlx

        result = benchmark_mlx(args.preset, vocab_size=vocab_size, batch_size=args.batch_size,
                               block_size=args.block_size, steps=args.steps, device=args.device, compile=args.compile)
        print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
        return 0
    result = benchmark(
        args.preset, vocab_size=vocab_size, batch_size=args.batch_size, block_size=args.block_size,
        steps=args.steps, device=args.device, compile=args.compile, precision=args.precision,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from lal.model import PRESETS, expected_parameters, preset_config

    print(f"{'preset':<12} {'layers':>6} {'heads':>5} {'width':>5} {'context':>7} {'parameters':>16}")
    for name, shape in PRESETS.items():
        vocab = 65 if name.startswith("char") else 50257
        total = expected_parameters(preset_config(name, vocab_size=vocab))["total"]
        print(
            f"{name:<12} {shape['n_layer']:>6} {shape['n_head']:>5} {shape['n_embd']:>5} {shape['block_size']:>7} "
            f"{total / 1e6:>8.2f}M (V={vocab})"
        )
    return 0


COMMANDS = {
    "train": cmd_train,
    "generate": cmd_generate,
    "sft": cmd_sft,
    "dpo": cmd_dpo,
    "eval": cmd_eval,
    "chat": cmd_chat,
    "corpus": cmd_corpus,
    "bench": cmd_bench,
    "presets": cmd_presets,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lal`` script: errors a learner can fix are one clear line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED.get(args.command, 'Interrupted.')}", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"error: {_os_error_message(error)}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as error:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            print("error: out of GPU memory: use a smaller --batch-size or --block-size.", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 1


#: What an interrupted command has left, by command.
INTERRUPTED = {
    "train": "Interrupted. Checkpoints written so far are kept; `lal train --resume` continues.",
    "corpus": "Interrupted. Nothing was written: the corpus file appears only when it is complete.",
}


def _os_error_message(error: OSError) -> str:
    """One line for an error of the operating system: what failed, on which path, and what to do."""
    where = f" {error.filename}" if error.filename else ""
    if error.errno == errno.ENOSPC and not error.filename and error.strerror:
        return error.strerror  # lal's own message (a checkpoint that did not fit)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full:{where}. Free some space and run the command again."
    if error.errno == errno.EROFS:
        return f"cannot write{where}: the file system is read-only. Choose a folder on a writable disk."
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}. Choose a path you can write to, or change its permissions."
    if error.errno == errno.ENOTDIR:
        return f"a part of{where} is a file, not a folder. Check the path."
    if error.errno == errno.EISDIR:
        return f"{where.strip()} is a folder; a file is needed here. Check the path."
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such file or folder:{where}. Check the path."
    return str(error.strerror or error) + (f":{where}" if where else "")


if __name__ == "__main__":
    raise SystemExit(main())
