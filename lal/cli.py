"""The ``lal`` command line: train, generate, fine-tune and chat with your own small GPT.

Every command is a thin layer over the package, so what the notebooks teach is what runs here::

    lal train --dataset tinyshakespeare --tokenizer char --preset char-tiny --out runs/shakespeare
    lal generate --ckpt runs/shakespeare --prompt "ROMEO:" --max-new-tokens 300
    lal corpus --file my_notes/ --url https://example.org/essay.html --out my_corpus.txt
    lal train --text my_corpus.txt --tokenizer bpe --preset bpe-tiny --out runs/mine
    lal sft --ckpt runs/shakespeare --out runs/shakespeare-chat
    lal eval --ckpt runs/shakespeare-chat --data data/sft/instructions_heldout.jsonl
    lal chat --ckpt runs/shakespeare-chat
    lal bench --preset char-small
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lal import __version__

EPILOG = "Run `lal COMMAND --help` for the options of one command. Docs: README.md in the repository."


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=200, help="how many tokens to generate (default 200)")
    group.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; higher is more random (default 0.8)")
    group.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    group.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with this much probability")
    group.add_argument("--seed", type=int, default=None, help="fix the randomness to get the same text again")
    group.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")


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
        description="Pretrain a GPT from scratch. Writes DIR/metrics.jsonl and the checkpoints "
        "DIR/best.pt (lowest validation loss) and DIR/last.pt (to resume from).",
        epilog="Example: lal train --dataset tinyshakespeare --tokenizer char --preset char-tiny --out runs/tiny",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--dataset", default=None, help="a named dataset (default: tinyshakespeare)")
    source.add_argument("--text", type=Path, help="train on your own UTF-8 text file instead (see `lal corpus`)")
    train.add_argument("--tokenizer", choices=["char", "bpe", "tiktoken"], default="char", help="default: char")
    train.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default 1024)")
    train.add_argument("--preset", default="char-tiny", help="model size, see `lal presets` (default char-tiny)")
    train.add_argument("--out", type=Path, required=True, help="folder for metrics and checkpoints")
    train.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    train.add_argument("--target-val-loss", type=float, default=None, help="stop once validation loss reaches this")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--block-size", type=int, default=None, help="context length (default: the preset's)")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate")
    train.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations")
    train.add_argument("--patience", type=int, default=None, help="stop after this many evaluations without improvement")
    train.add_argument("--grad-accum-steps", type=int, default=None, help="micro-batches per optimizer step")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow to start)")
    train.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 1337)")
    train.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    generate = commands.add_parser(
        "generate",
        help="sample text from a trained model",
        description="Continue a prompt with a trained model, printing tokens as they come.",
        epilog='Example: lal generate --ckpt runs/tiny --prompt "ROMEO:" --max-new-tokens 300 --seed 1',
    )
    generate.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or training folder")
    generate.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    _add_sampling_options(generate)

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
    sft.add_argument("--steps", type=int, default=SFT_STEPS, help="optimizer steps (default %(default)s)")
    sft.add_argument("--batch-size", type=int, default=SFT_BATCH_SIZE, help="examples per step (default %(default)s)")
    sft.add_argument("--lr", type=float, default=SFT_LR, help="peak learning rate (default %(default)s)")
    sft.add_argument("--mix-ratio", type=float, default=SFT_MIX_RATIO, help="share of steps on pretraining text (default %(default)s)")
    sft.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    sft.add_argument("--seed", type=int, default=1337, help="random seed (default %(default)s)")
    run_state = sft.add_mutually_exclusive_group()
    run_state.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run_state.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    sft.add_argument("--quiet", action="store_true", help="no progress bar")

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
    chat.add_argument("--ckpt", type=Path, required=True)
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
    corpus.add_argument("--delay", type=float, default=1.0, help="seconds between requests to one site (default 1)")
    corpus.add_argument("--timeout", type=float, default=10.0, help="seconds before a request gives up (default 10)")

    bench = commands.add_parser(
        "bench",
        help="measure training speed on this machine",
        description="Time training steps of a preset: tokens/s, MFU and peak memory.",
    )
    bench.add_argument("--preset", default="char-tiny")
    bench.add_argument("--vocab-size", type=int, default=None, help="default: 65 for char presets, 50257 otherwise")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--block-size", type=int, default=None)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--device", default=None)
    bench.add_argument("--compile", action="store_true")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")

    commands.add_parser("presets", help="list the model presets and their sizes")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from lal.checkpoint import load_checkpoint
    from lal.data import prepare_text_data
    from lal.device import seed_everything
    from lal.model import GPT, preset_config
    from lal.train import default_train_config, train

    cfg = default_train_config(args.preset)
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
    cfg.out_dir = str(args.out)
    cfg.progress = not args.quiet

    # A resumed run must keep its tokenizer: the ids it was trained on.
    tokenizer = load_checkpoint(args.out / "last.pt").tokenizer if args.resume else None
    data = prepare_text_data(
        dataset=args.dataset, text_path=args.text, tokenizer_kind=args.tokenizer, vocab_size=args.vocab_size,
        tokenizer=tokenizer, token_file=args.out / "tokens.bin",
    )
    seed_everything(cfg.seed)  # the same --seed gives the same initial weights
    model = GPT(preset_config(args.preset, vocab_size=data.tokenizer.vocab_size, block_size=args.block_size))
    print(
        f"Training {args.preset} ({model.num_parameters() / 1e6:.2f}M parameters) on {data.description}: "
        f"{len(data.train):,} training and {len(data.val):,} validation tokens, "
        f"{data.tokenizer.name} tokenizer with {data.tokenizer.vocab_size} tokens."
    )
    history = train(model, data.train, data.val, cfg, tokenizer=data.tokenizer, resume=args.resume)
    print(
        f"Done after {history.step[-1] if history.step else 0} steps: best validation loss "
        f"{history.best_val_loss:.4f} at step {history.best_step} ({history.stopped_reason}). "
        f"Checkpoints and metrics.jsonl are in {args.out}/."
    )
    return 0


def _print_stream(piece: str) -> None:
    print(piece, end="", flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from lal.checkpoint import load_checkpoint
    from lal.device import pick_device
    from lal.sample import generate_text

    checkpoint = load_checkpoint(args.ckpt, device=pick_device(args.device))
    print(args.prompt, end="", flush=True)
    generate_text(
        checkpoint.model, checkpoint.tokenizer, args.prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream_to=_print_stream,
    )
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
        chat_reply(checkpoint.model, checkpoint.tokenizer, message, stream_to=_print_stream, **sampling)
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
    fetcher = PoliteFetcher(delay_s=args.delay, timeout_s=args.timeout) if args.url else None
    report = build_corpus(paths=args.file, urls=args.url, out=args.out, fetcher=fetcher)
    print(report)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lal.bench import benchmark

    vocab_size = args.vocab_size or (65 if args.preset.startswith("char") else 50257)
    result = benchmark(
        args.preset, vocab_size=vocab_size, batch_size=args.batch_size, block_size=args.block_size,
        steps=args.steps, device=args.device, compile=args.compile,
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
        print("\nInterrupted. Checkpoints written so far are kept; `lal train --resume` continues.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            print("error: out of GPU memory: use a smaller --batch-size or --block-size.", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
