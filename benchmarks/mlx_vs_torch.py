"""Training throughput of the two backends side by side: ``lal bench --backend torch`` and ``--backend mlx``.

For each preset both backends time the same training steps (same initial weights, batch, context
and random tokens; see ``lal.bench`` and ``lal.mlx.bench``), alternating torch and MLX ``--rounds``
times so that a change in the machine's load hits both alike. Prints tokens/s per backend and
their ratio (medians over the rounds), with the machine's load before and after, and writes it
all to ``benchmarks/results/mlx_vs_torch.json``.

    python benchmarks/mlx_vs_torch.py                          # char-tiny and bpe-tiny (vocabulary 2048)
    python benchmarks/mlx_vs_torch.py --preset char-tiny --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import mlx.core as mx
import torch

from lal.bench import benchmark as benchmark_torch
from lal.mlx.bench import benchmark as benchmark_mlx

#: (preset, vocabulary size, timed steps): small enough that MLX's Linux CPU build finishes in minutes.
DEFAULT_CASES = (("char-tiny", 65, 10), ("bpe-tiny", 2048, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="preset to time (repeatable; default: char-tiny, bpe-tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: per preset)")
    parser.add_argument("--rounds", type=int, default=2, help="torch/MLX alternations per preset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mlx_vs_torch.json")
    args = parser.parse_args()
    cases = [(p, 65 if p.startswith("char") else 2048, args.steps or 3) for p in args.preset] if args.preset \
        else [(p, v, args.steps or s) for p, v, s in DEFAULT_CASES]

    load_before = os.getloadavg()
    rows = []
    for preset, vocab_size, steps in cases:
        measured: dict[str, list[float]] = {"torch": [], "mlx": []}
        for _ in range(args.rounds):
            common = dict(vocab_size=vocab_size, batch_size=args.batch_size, steps=steps, warmup_steps=1, device="cpu")
            measured["torch"].append(benchmark_torch(preset, **common).tokens_per_s)
            measured["mlx"].append(benchmark_mlx(preset, **common).tokens_per_s)
        torch_tps, mlx_tps = (statistics.median(measured[name]) for name in ("torch", "mlx"))
        rows.append(dict(preset=preset, vocab_size=vocab_size, steps=steps, torch_tokens_per_s=torch_tps,
                         mlx_tokens_per_s=mlx_tps, mlx_over_torch=mlx_tps / torch_tps, runs=measured))
        print(f"{preset:<10} V={vocab_size:<5} torch {torch_tps:>9,.0f} tokens/s   MLX {mlx_tps:>9,.0f} tokens/s   "
              f"MLX / torch = {mlx_tps / torch_tps:.3f}")
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    result = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                  torch=torch.__version__, torch_threads=torch.get_num_threads(), mlx=mx.__version__,
                  batch_size=args.batch_size, load_before=load_before, load_after=load_after, rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
