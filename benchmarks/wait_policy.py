"""OpenMP's wait policy on a small CPU: sleeping threads against spinning ones, quiet and busy.

Between two operations PyTorch's CPU threads (OpenMP) either spin for a moment (OpenMP's
default) or go to sleep at once (``OMP_WAIT_POLICY=PASSIVE``). A small model runs thousands of
small operations a second, so the choice shows. This script trains char-tiny for ``--steps``
steps (chapter 5's recipe, evaluations included) in a fresh process per measurement, for each
wait policy, beside each kind of competing program:

* ``quiet``: nothing else;
* ``0.3 core``: a program that keeps a third of a core busy (a browser, a notebook server);
* ``1 core``: a CPU-bound program (``while True: pass``);

once with lal choosing the thread count from the load (``lal._cpu_load``) and once with two
threads forced (``LAL_NUM_THREADS=2``), which is what lal does where it cannot see the load.
Prints seconds per run (median of ``--rounds``, the policies alternated) and writes
``benchmarks/results/wait_policy.json``.

    python benchmarks/wait_policy.py                 # 300 steps, 2 rounds: about 10 minutes
    python benchmarks/wait_policy.py --steps 100 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: The child process: torch is imported before lal, so that the environment given here, not
#: lal's choice, decides the wait policy; it prints the training seconds and the thread count.
CHILD = """
import sys, time, dataclasses, torch
import lal.data, lal.device, lal.train
from lal.model import GPT, preset_config
data = lal.data.prepare_text_data(dataset="tinyshakespeare", tokenizer_kind="char")
cfg = lal.train.default_train_config("char-tiny", max_steps=int(sys.argv[1]), min_lr=1e-4, lr_decay_steps=3000)
cfg = dataclasses.replace(cfg, progress=False, device="cpu")
lal.device.seed_everything(0)
model = GPT(preset_config("char-tiny", vocab_size=data.tokenizer.vocab_size))
start = time.perf_counter()
lal.train.train(model, data.train, data.val, cfg)
print(time.perf_counter() - start, torch.get_num_threads())
"""

#: A competing program that keeps ``sys.argv[1]`` of a core busy, in slices of 10 ms.
COMPETITOR = """
import sys, time
share = float(sys.argv[1])
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < share * 0.01:
        pass
    time.sleep((1 - share) * 0.01)
"""

POLICIES = {"spinning (OpenMP's default)": None, "sleeping (PASSIVE)": "PASSIVE"}
COMPETITORS = {"quiet": 0.0, "0.3 core": 0.3, "1 core": 1.0}
THREADS = {"lal's choice": None, "2 forced": "2"}


def run_once(steps: int, policy: str | None, threads: str | None) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LAL_NUM_THREADS", "OMP_NUM_THREADS")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    if threads is not None:
        env["LAL_NUM_THREADS"] = threads
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wait_policy.json")
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()
    for competitor, share in COMPETITORS.items():
        program = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(share)]) if share else None
        try:
            time.sleep(1.0 if program else 0.0)
            for threads_label, threads in THREADS.items():
                times: dict[str, list[float]] = {label: [] for label in POLICIES}
                counts: dict[str, set[int]] = {label: set() for label in POLICIES}
                for _ in range(args.rounds):
                    for label, policy in POLICIES.items():
                        seconds, count = run_once(args.steps, policy, threads)
                        times[label].append(seconds)
                        counts[label].add(count)
                row = {"competitor": competitor, "threads": threads_label,
                       **{label: statistics.median(values) for label, values in times.items()},
                       "runs": times, "thread_counts": {k: sorted(v) for k, v in counts.items()}}
                rows.append(row)
                spin, sleep = (row[label] for label in POLICIES)
                print(f"{competitor:<9} {threads_label:<13} spinning {spin:6.1f} s  sleeping {sleep:6.1f} s  "
                      f"sleeping/spinning {sleep / spin:.2f}  (threads {row['thread_counts']})", flush=True)
        finally:
            if program is not None:
                program.kill()
                program.wait()
    result = {"machine": platform.machine(), "cpus": os.cpu_count(), "steps": args.steps, "rounds": args.rounds,
              "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
