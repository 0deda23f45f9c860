#!/usr/bin/env python
"""Benchmark: stages one after the other with every thread, or side by side with a share each.

What ``run_experiments.py --jobs`` relies on: on a small CPU machine two training stages running at once
with ``threads / 2`` threads each finish sooner than the same two run in turn with ``threads`` each,
because one stage's threads do not scale linearly. Runs the same ``--stages`` QAT fine-tunings of an fp32
model (``retrain.py --uniform-bits 4 --init-from MODEL --epochs E``, as the main command's fine-tunings)
first in turn with ``--threads`` each, then all at once with ``threads // stages`` each (at least 1), in
the same run and from fresh directories, and prints both wall times and their ratio (side by side / in
turn; below 1 is a gain).

    OMP_NUM_THREADS=2 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python bench/bench_jobs.py --data-dir data/synth_mild_nosp \\
        --model exp/demo/fp32/model.pt --config configs/finetune_demo.yaml --epochs 3 \\
        --out docs/results/bench_jobs.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training.cli import HelpFormatter  # noqa: E402


def stage(args, out: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(ROOT, "retrain.py"), "--data-dir", args.data_dir, "--space", args.space,
           "--out", out, "--device", "cpu", "--no-progress", "--config", args.config, "--uniform-bits",
           str(args.bits), "--init-from", args.model, "--epochs", str(args.epochs)]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(procs) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a stage failed (exit {p.returncode}):\n{err[-2000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", required=True, help="fp32 model the fine-tunings start from (model.pt)")
    p.add_argument("--space", default="tdnnf_demo")
    p.add_argument("--config", default="configs/finetune_demo.yaml")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--stages", type=int, default=2, help="fine-tunings, run in turn and then at once")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1))
    p.add_argument("--out", default=None, help="JSON of the results")
    args = p.parse_args(argv)
    if args.stages < 1 or args.threads < 1:
        raise SystemExit("--stages and --threads must be >= 1")
    share = max(1, args.threads // args.stages)
    with tempfile.TemporaryDirectory(prefix="bench_jobs_") as tmp:
        t0 = time.time()
        for k in range(args.stages):
            wait([stage(args, os.path.join(tmp, f"turn{k}"), args.threads)])
        in_turn = time.time() - t0
        t0 = time.time()
        wait([stage(args, os.path.join(tmp, f"side{k}"), share) for k in range(args.stages)])
        side = time.time() - t0
    res = {"stages": args.stages, "threads": args.threads, "threads_each_side_by_side": share,
           "epochs": args.epochs, "in_turn_s": round(in_turn, 1), "side_by_side_s": round(side, 1),
           "ratio": round(side / in_turn, 3)}
    print(f"{args.stages} fine-tunings of {args.epochs} epochs: in turn with {args.threads} thread(s) each "
          f"{in_turn:.1f} s; side by side with {share} each {side:.1f} s; ratio {side / in_turn:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
