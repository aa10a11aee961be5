"""Time to a target validation loss on TinyShakespeare, characters: lal's defaults vs nanoGPT's recipe.

Each run trains from scratch the way ``lal train --preset PRESET`` does (the preset's model and
:func:`lal.train.default_train_config`, checkpoints written) and records, at every evaluation, the
wall-clock seconds since the run began (tokenizing, model construction, training, evaluation and
checkpoint writes all included) and the validation loss on the fixed evaluation windows.

``--reference-recipe`` runs nanoGPT's CPU recipe for the same data instead, with lal's code: 4 layers,
4 heads, width 128, no biases, context 64, batch 12, lr 1e-3 → 1e-4, 100 warmup steps, 2000 steps,
an evaluation every 250 steps on 20 × 12 windows of 64 tokens (15,360 tokens).

    python benchmarks/time_to_loss.py --runs 3
    python benchmarks/time_to_loss.py --reference-recipe --runs 3
    python benchmarks/time_to_loss.py --max-steps 6000 --runs 1     # does it keep improving?

Prints one line per run and a summary with medians, and writes everything to a JSON file.

Timings are only meaningful on an otherwise idle machine. Before each run the script waits (up
to ``--wait-idle`` seconds) for the CPUs to be idle, and a run during which this process got less
than ``--min-cpu-share`` of the cores (another program competed) is reported, kept in the JSON
as discarded, and repeated (up to ``--max-attempts`` times in all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lal.data import prepare_text_data
from lal.device import seed_everything
from lal.model import GPT, GPTConfig, preset_config
from lal.train import EvalEvent, TrainConfig, default_train_config, train

#: nanoGPT's published CPU run for shakespeare_char (its README: "val loss 1.88 after 2000 iterations").
REFERENCE_MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, dropout=0.0)
REFERENCE_TRAIN = dict(
    max_steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100, lr_decay_steps=2000,
    weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250,
    eval_windows=240, eval_batch_size=12,  # nanoGPT: eval_iters=20 batches of 12 windows
)
#: The reference figures, measured with nanoGPT itself on a 2-core CPU machine like ours.
REFERENCE_RESULT = {"seconds": 70.0, "val_loss": 1.886, "steps": 2000}


def machine_description() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def cpu_idle_fraction(seconds: float = 2.0) -> float | None:
    """Fraction of CPU time spent idle over ``seconds`` (Linux /proc/stat), or None elsewhere."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None

    def sample() -> tuple[int, int]:
        values = [int(v) for v in stat.read_text(encoding="utf-8").splitlines()[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total_1, idle_1 = sample()
    time.sleep(seconds)
    total_2, idle_2 = sample()
    return (idle_2 - idle_1) / max(total_2 - total_1, 1)


def wait_until_idle(max_wait_s: float, threshold: float = 0.9) -> float | None:
    """Wait until the CPUs are at least ``threshold`` idle, at most ``max_wait_s``; return the idle fraction."""
    deadline = time.monotonic() + max_wait_s
    idle = cpu_idle_fraction()
    while idle is not None and idle < threshold and time.monotonic() < deadline:
        idle = cpu_idle_fraction()
    return idle


def build_run(args: argparse.Namespace) -> tuple[str, TrainConfig, dict[str, Any], bool]:
    """(name, train config, model overrides, whether the tokenizer has chat special tokens)."""
    if args.reference_recipe:
        cfg = TrainConfig(**REFERENCE_TRAIN, device=args.device, progress=False)
        return "nanoGPT CPU recipe (lal code)", cfg, dict(REFERENCE_MODEL), False
    cfg = default_train_config(args.preset, device=args.device, progress=False)
    return f"lal {args.preset} defaults", cfg, {}, True


def one_run(args: argparse.Namespace, run_index: int) -> dict[str, Any]:
    name, cfg, model_overrides, chat_tokens = build_run(args)
    if args.max_steps is not None:
        cfg = replace(cfg, max_steps=args.max_steps)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_checkpoints:
            cfg = replace(cfg, out_dir=tmp)
        start, cpu_start = time.perf_counter(), time.process_time()
        data = prepare_text_data(dataset="tinyshakespeare", tokenizer_kind="char",
                                 special_tokens=None if chat_tokens else ())
        seed_everything(cfg.seed)
        if args.reference_recipe:
            model = GPT(GPTConfig(vocab_size=data.tokenizer.vocab_size, **model_overrides))
        else:
            model = GPT(preset_config(args.preset, vocab_size=data.tokenizer.vocab_size))
        evals: list[dict[str, Any]] = []

        def record(event: EvalEvent) -> None:
            seconds = time.perf_counter() - start
            evals.append({"step": event.step, "seconds": round(seconds, 2), "val_loss": round(event.val_loss, 4)})
            event.stop = args.max_seconds is not None and seconds >= args.max_seconds

        history = train(model, data.train, data.val, cfg, tokenizer=data.tokenizer, callbacks=[record])
        total = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    hit = next((e for e in evals if e["val_loss"] <= args.target), None)
    block_size = cfg.block_size or model.config.block_size
    result = {
        "run": run_index,
        "name": name,
        "params": model.num_parameters(),
        "model": model.config.to_dict(),
        "train_config": {**cfg.to_dict(), "out_dir": None if args.no_checkpoints else "(a temporary folder)"},
        "eval_tokens": cfg.eval_windows * block_size,
        "target": args.target,
        "target_step": hit["step"] if hit else None,
        "target_seconds": hit["seconds"] if hit else None,
        "final_step": history.step[-1],
        "final_val_loss": round(history.val_loss[-1], 4),
        "best_val_loss": round(history.best_val_loss, 4),
        "total_seconds": round(total, 2),
        "train_tokens_per_s": round(history.tokens[-1] / history.elapsed_s[-1]) if history.elapsed_s[-1] else None,
        "load_average_at_start": load,
        # CPU seconds this process got per wall-clock second and thread: near 1.0 when it had the
        # machine to itself, lower when other programs competed for the cores.
        "cpu_share": round(cpu_seconds / (total * torch.get_num_threads()), 3),
        "evals": evals,
    }
    load_text = f" | CPU share {result['cpu_share']:.2f}"
    load_text += "" if load is None else f", load average {load:.1f} at start"
    print(
        f"run {run_index}: target {args.target} at step {result['target_step']} after "
        f"{_fmt(result['target_seconds'])} s | final val {result['final_val_loss']:.4f} at step "
        f"{result['final_step']} after {result['total_seconds']:.1f} s | {result['train_tokens_per_s']} "
        f"training tok/s{load_text}",
        flush=True,
    )
    return result


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return round(statistics.median(values), 4) if len(values) == len(runs) else None

    return {
        "runs": len(runs),
        "median_target_seconds": median("target_seconds"),
        "median_final_val_loss": median("final_val_loss"),
        "median_total_seconds": median("total_seconds"),
        "target_seconds": [run["target_seconds"] for run in runs],
        "final_val_loss": [run["final_val_loss"] for run in runs],
        "total_seconds": [run["total_seconds"] for run in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="char-tiny", help="model preset with its default training config")
    parser.add_argument("--reference-recipe", action="store_true", help="nanoGPT's CPU recipe instead of --preset")
    parser.add_argument("--target", type=float, default=1.89, help="validation loss to reach (default 1.89)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop a run at the first evaluation after this")
    parser.add_argument("--max-steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (model init and batches)")
    parser.add_argument("--runs", type=int, default=2, help="repetitions, to show the spread (default 2)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--no-checkpoints", action="store_true", help="do not write best.pt / last.pt")
    parser.add_argument("--wait-idle", type=float, default=300.0, help="seconds to wait for idle CPUs before a run")
    parser.add_argument("--min-cpu-share", type=float, default=0.85,
                        help="repeat a run that got less than this share of the cores (default 0.85)")
    parser.add_argument("--max-attempts", type=int, default=10, help="runs in all, discarded ones included")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default: benchmarks/results/)")
    args = parser.parse_args(argv)

    machine = machine_description()
    print(f"machine: {machine['cpu']}, {machine['nproc']} CPUs, torch {machine['torch']} "
          f"({machine['torch_threads']} threads), GPU: {machine['gpu'] or 'none'}", flush=True)
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    attempts = 0
    while len(runs) < args.runs and attempts < args.max_attempts:
        attempts += 1
        idle = wait_until_idle(args.wait_idle)
        result = one_run(args, len(runs) + 1)
        result["cpu_idle_before"] = None if idle is None else round(idle, 3)
        if result["cpu_share"] < args.min_cpu_share:
            print(f"  discarded: this run got {result['cpu_share']:.2f} of the cores (< {args.min_cpu_share}); "
                  "another program was competing. Repeating.", flush=True)
            discarded.append(result)
        else:
            runs.append(result)
    if not runs:
        print("No undisturbed run: the machine stayed busy. Try again later or lower --min-cpu-share.")
        return 1
    summary = summarize(runs)
    print(f"\n{runs[0]['name']}: {runs[0]['params'] / 1e6:.2f}M parameters, evaluation on "
          f"{runs[0]['eval_tokens']:,} validation tokens")
    print(f"{'':28s}{'median':>10s}   runs")
    print(f"{'seconds to val ≤ ' + str(args.target):28s}{_fmt(summary['median_target_seconds']):>10s}   "
          f"{', '.join(_fmt(v) for v in summary['target_seconds'])}")
    print(f"{'final val loss':28s}{_fmt_loss(summary['median_final_val_loss']):>10s}   "
          f"{', '.join(f'{v:.4f}' for v in summary['final_val_loss'])}")
    print(f"{'total seconds':28s}{_fmt(summary['median_total_seconds']):>10s}   "
          f"{', '.join(_fmt(v) for v in summary['total_seconds'])}")
    if args.reference_recipe:
        print(f"nanoGPT itself (reference): val {REFERENCE_RESULT['val_loss']} after "
              f"{REFERENCE_RESULT['steps']} steps in {REFERENCE_RESULT['seconds']:.0f} s")
    kind = "reference" if args.reference_recipe else args.preset
    kind += "" if args.seed is None else f"_seed{args.seed}"
    kind += "" if args.max_steps is None else f"_{args.max_steps}steps"
    out = args.json or Path(__file__).with_name("results") / f"time_to_loss_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs, "discarded": discarded},
                              indent=1) + "\n",
                   encoding="utf-8")
    print(f"results written to {out}")
    return 0


def _fmt_loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
