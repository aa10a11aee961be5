"""Chapter 8's measurements on one CUDA GPU, in one go (about 4 minutes on an H200).

1. ``lal bench`` figures for three presets in bf16 and in fp16 with a gradient scaler, and the
   dry-run memory plan beside the measured peak;
2. time to validation loss 1.47 on TinyShakespeare characters: nanoGPT's recipe (6 layers, 6
   heads, width 384, context 256, batch 64, lr 1e-3 → 1e-4 over 5000 steps, dropout 0.2) with
   lal's code, then candidate recipes that use the GPU better (a bigger batch, a higher learning
   rate, a shorter schedule), each from scratch with the same seed;
3. the test suite's GPU paths (``tests/test_cuda.py``: bf16, fp16 + scaler, fused attention,
   fused AdamW, torch.compile, no host sync inside a step) plus the device and MFU tests, last, if time is left.

Every time is wall-clock from the start of ``lal.train.train`` (its first evaluation, compilation
and checkpoint-free training included) to the first evaluation at or below the target, on the
same 256 fixed validation windows; each run's best weights are then scored on the *whole*
validation split (435 non-overlapping windows) as a check. Results go to ``--out`` as JSON.

    LAL_DATA_DIR=<folder with tinyshakespeare.txt> python benchmarks/gpu_full_run.py --out results.json
    python benchmarks/gpu_full_run.py --smoke --out /tmp/smoke.json   # a tiny version, any device
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from lal.bench import benchmark, device_name
from lal.data import prepare_text_data
from lal.device import pick_device, precision_name, seed_everything
from lal.model import GPT, preset_config
from lal.plan import plan_run
from lal.train import EvalEvent, TrainConfig, default_train_config, estimate_loss, train

TARGET = 1.47
NANOGPT = dict(max_steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
               weight_decay=0.1, grad_clip=1.0, eval_interval=100, eval_windows=256)
CANDIDATES = {
    "b256-lr2e-3-1400": dict(NANOGPT, max_steps=1400, batch_size=256, lr=2e-3, min_lr=2e-4, eval_interval=50),
    "b128-lr2e-3-2500": dict(NANOGPT, max_steps=2500, batch_size=128, lr=2e-3, min_lr=2e-4),
}
BENCH = [("char-medium", 64), ("bpe-medium", 16), ("lal", 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip what would not finish in this time")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script itself anywhere")
    parser.add_argument("--reference-cap-s", type=float, default=110.0, help="longest the nanoGPT recipe may run")
    parser.add_argument("--candidate-cap-s", type=float, default=50.0, help="longest each candidate may run")
    args = parser.parse_args()
    start = time.perf_counter()
    device = pick_device(None)
    results: dict = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
                     "precision": precision_name(device), "smoke": args.smoke}
    if device.type == "cuda":
        results["capability"] = list(torch.cuda.get_device_capability())

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    results["bench"] = run_bench(args.smoke)
    save()

    data = prepare_text_data(dataset="tinyshakespeare")
    runs = results["time_to_target"] = {}
    runs["nanogpt"] = time_to_target(data, NANOGPT, args.smoke, cap_s=min(args.reference_cap_s, left()))
    save()
    for name, settings in CANDIDATES.items():
        if left() < 35:
            runs[name] = {"skipped": "out of time"}
            continue
        runs[name] = time_to_target(data, settings, args.smoke, cap_s=min(args.candidate_cap_s, left() - 15))
        save()
    if not args.smoke and left() > 30:
        results["tests"] = run_tests(timeout_s=left())
    results["total_s"] = round(time.perf_counter() - start, 1)
    save()
    print(json.dumps({name: {k: v for k, v in run.items() if k != "rows"} for name, run in runs.items()}, indent=1))


def run_tests(timeout_s: float = 240) -> dict:
    """The GPU test module and the device/MFU tests, through pytest, as CI would run them."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
               "tests/test_device.py", "tests/test_bench.py", "tests/test_precision.py"]
    began = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as timeout:
        return {"returncode": None, "tail": f"timed out after {timeout_s:.0f} s", "seconds": round(timeout_s, 1)}
    print(result.stdout[-3000:], result.stderr[-2000:], flush=True)
    return {"returncode": result.returncode, "tail": result.stdout[-2500:], "seconds": round(time.perf_counter() - began, 1)}


def run_bench(smoke: bool) -> list[dict]:
    """``lal bench`` for three presets in bf16 and fp16 (+ scaler), one compiled; the memory plan vs measured."""
    rows = []
    presets = [("char-tiny", 4)] if smoke else BENCH
    for preset, batch in presets:
        vocab = 65 if preset.startswith("char") else 50257
        for precision in ("bf16", "fp16") if not smoke else ("auto",):
            result = benchmark(preset, vocab_size=vocab, batch_size=batch, steps=2 if smoke else 10,
                               precision=precision, block_size=32 if smoke else None)
            rows.append(result.to_dict())
            print(result.summary(), flush=True)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if not smoke:
        model = GPT(preset_config("lal", vocab_size=50257))
        plan = plan_run(model, default_train_config("lal"), time_steps=3)
        print(plan.summary(), flush=True)
        rows.append({"plan": "lal", "estimated_bytes": plan.memory.total, "measured_bytes": plan.measured_peak_memory,
                     "activations_bytes": plan.memory.activations, "step_s": plan.step_s,
                     "batch_size": plan.batch_size, "grad_accum_steps": plan.grad_accum_steps,
                     "summary": plan.summary()})
    return rows


def time_to_target(data, settings: dict, smoke: bool, cap_s: float) -> dict:
    """Train char-medium (dropout 0.2) from scratch with ``settings`` until val ≤ TARGET or ``cap_s`` seconds."""
    settings = dict(settings)
    compile_model = settings.pop("compile", False)
    if smoke:
        settings.update(max_steps=min(settings["max_steps"], 30), eval_interval=10, eval_windows=8,
                        batch_size=min(settings["batch_size"], 8))
    seed_everything(1337)
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64) if smoke else {}
    model = GPT(preset_config("char-medium", vocab_size=data.tokenizer.vocab_size, dropout=0.2, **shape))
    cfg = TrainConfig(**settings, target_val_loss=9.0 if smoke else TARGET, compile=compile_model, seed=1337,
                      progress=False)

    def time_limit(event: EvalEvent) -> None:
        if event.elapsed_s > cap_s:
            event.stop = True

    torch._dynamo.reset()
    history = train(model, data.train, data.val, cfg, callbacks=[time_limit])
    reached = [(step, t) for step, t, loss in zip(history.step, history.elapsed_s, history.val_loss) if loss <= cfg.target_val_loss]
    block = model.config.block_size
    starts = torch.arange(0, len(data.val) - block - 1, block)  # the whole validation split, no overlap
    full_val = estimate_loss(model, data.val, starts, block, batch_size=64)
    elapsed = history.elapsed_s[-1]
    run = {
        "settings": settings, "compile": compile_model,
        "time_to_target_s": reached[0][1] if reached else None, "step_at_target": reached[0][0] if reached else None,
        "best_val_loss": history.best_val_loss, "best_step": history.best_step, "stopped": history.stopped_reason,
        "full_val_loss_at_stop": full_val, "elapsed_s": elapsed, "tokens": history.tokens[-1],
        "tokens_per_s": history.tokens[-1] / elapsed if elapsed else None,
        "rows": [{"step": s, "val": v, "t": t} for s, v, t in zip(history.step, history.val_loss, history.elapsed_s)],
    }
    print({k: v for k, v in run.items() if k != "rows"}, flush=True)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return run


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
