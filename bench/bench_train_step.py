#!/usr/bin/env python
"""Benchmark: where one training step of the demo network spends its time, and steps per second.

Builds the network, LF-MMI loss, batches and trainer exactly as ``retrain.py`` does (fp32, the space's
largest network, the config's ``train:`` and ``lfmmi:`` sections), then runs ``Trainer.train_step`` on
the same training batches with each part timed by wrapping the objects the step calls:

* ``batch``: drawing the cuts, loading and padding their features (``ResumableBatches``);
* ``forward``: the TDNN-F forward (``model.forward``);
* ``num_graphs``: compiling the numerator graphs from the transcripts (``NumeratorCompiler.compile``);
* ``numerator`` / ``denominator``: the LF-MMI forward-backward recursions (``LFMMILoss._num`` / ``_den``;
  both compute their occupancies in the forward, so the loss's backward is cheap);
* ``optimizer``: ``optimizer.step`` (and the LR schedule); ``semi_orthogonal``: the constraint update;
* ``backward_and_rest``: the rest of the step (the network's backward, gradient clipping, checks).

It runs the same steps once per setting, in this process and in the same run, and prints the steps per
second of each setting as a ratio against the first. A setting is a thread count (``--threads``, e.g.
``1,2``) and a masked-BatchNorm implementation (``--batch-norm``): ``fused`` (the model's, one autograd
function with a closed-form backward) or ``composed`` (the same arithmetic as separate tensor operations,
``models.tdnnf.masked_batch_norm_reference``, the implementation before the fused one). ``--allocator
glibc,tcmalloc`` repeats every setting in a child process per memory allocator (tcmalloc preloaded, as
``scripts/run_demo.sh`` does), in the same run. Results go to
``--out`` (JSON). Example (the main command's corpus and configs)::

    python bench/bench_train_step.py --data-dir data/synth_tel --config configs/retrain_demo.yaml \\
        --steps 12 --threads 1,2 --batch-norm composed,fused --out docs/results/bench_train_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training.cli import HelpFormatter  # noqa: E402

import torch  # noqa: E402

import models.tdnnf as tdnnf  # noqa: E402
from models import build_model  # noqa: E402
from search_spaces.genotype import Genotype  # noqa: E402
from training.experiment import (config_section, load_sections, make_batches, make_lfmmi,  # noqa: E402
                                 start_run)
from training.loop import Trainer, TrainOptions  # noqa: E402

PARTS = ("batch", "forward", "num_graphs", "numerator", "denominator", "optimizer", "semi_orthogonal",
         "backward_and_rest")


def timed(fn, clock, part):
    """``fn`` wrapped so that its wall time is added to ``clock[part]``."""
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            clock[part] += time.perf_counter() - t
    return wrapper


def build_trainer(args, out_dir):
    """(trainer, batches) as retrain.py builds them for the fp32 network of ``--space``."""
    cfg = load_sections(args.config, {"train", "lfmmi", "quant", "distill"}) if args.config else {}
    topts = config_section(args.config, TrainOptions.from_dict, cfg.get("train"))
    topts = topts.replace(log_every=10 ** 9, checkpoint_every=10 ** 9)
    dinfo, device, out, corpus, space = start_run("cpu", topts.seed, out_dir, args.data_dir, args.space)
    model = build_model(Genotype.full_precision(space).to_config(space, num_pdfs=corpus.num_pdfs))
    loss_fn, compiler, _ = make_lfmmi(corpus, cfg.get("lfmmi"))
    train = make_batches(corpus.cuts("train"), corpus, topts.max_duration, True, topts.seed, dinfo)
    trainer = Trainer(model, loss_fn, compiler, train, None, topts, out, device, dinfo, [], show_progress=False)
    return trainer, train


FUSED_BN = tdnnf._MaskedBatchNorm.apply


def run_setting(args, threads: int, batch_norm: str, out_dir):
    """Time ``--steps`` steps (after ``--warmup``) at ``threads`` intra-op threads with the ``batch_norm``
    implementation (``fused`` | ``composed``): per-part seconds."""
    torch.set_num_threads(threads)
    tdnnf._MaskedBatchNorm.apply = FUSED_BN if batch_norm == "fused" else tdnnf.masked_batch_norm_reference
    torch.manual_seed(0)
    trainer, batches = build_trainer(args, out_dir)
    clock = defaultdict(float)
    model, loss_fn = trainer.raw_model, trainer.loss_fn
    model.forward = timed(model.forward, clock, "forward")
    trainer.compiler.compile = timed(trainer.compiler.compile, clock, "num_graphs")
    loss_fn._num = timed(loss_fn._num, clock, "numerator")
    loss_fn._den = timed(loss_fn._den, clock, "denominator")
    # the LR scheduler warns when optimizer.step is replaced after it was built; the wrapper calls the same step
    warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
    trainer.optimizer.step = timed(trainer.optimizer.step, clock, "optimizer")
    trainer.scheduler.step = timed(trainer.scheduler.step, clock, "optimizer")
    model.apply_semi_orthogonal_ = timed(model.apply_semi_orthogonal_, clock, "semi_orthogonal")
    it = batches.epoch(0)
    steps, per_step, frames = [], [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        batch = next(it)
        t_batch = time.perf_counter() - t
        before = dict(clock)
        t = time.perf_counter()
        trainer.train_step(batch)
        total = time.perf_counter() - t
        if i < args.warmup:
            continue
        parts = {p: clock[p] - before.get(p, 0.0) for p in PARTS if p not in ("batch", "backward_and_rest")}
        parts["batch"] = t_batch
        parts["backward_and_rest"] = total - sum(v for k, v in parts.items() if k != "batch")
        steps.append(total + t_batch)
        frames.append(int(batch["lengths"].sum()))
        per_step.append(parts)
    mean = {p: statistics.fmean(s[p] for s in per_step) for p in PARTS}
    step = statistics.fmean(steps)
    return {"threads": threads, "batch_norm": batch_norm, "steps": args.steps, "seconds_per_step": step,
            "median_seconds_per_step": statistics.median(steps), "steps_per_second": 1.0 / step,
            "input_frames_per_step": statistics.fmean(frames), "seconds": mean, "share": {p: mean[p] / step for p in PARTS}}


def find_tcmalloc():
    """Path of libtcmalloc_minimal.so.4 (Debian's libtcmalloc-minimal4), or None."""
    import glob
    hits = sorted(glob.glob("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4"))
    return hits[0] if hits else None


def run_allocators(args):
    """Every setting once per allocator, each allocator in a child process of this script: results."""
    results = []
    for alloc in args.allocator.split(","):
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join(x for x in env.get("LD_PRELOAD", "").split(":") if "tcmalloc" not in x)
        if alloc == "tcmalloc":
            lib = find_tcmalloc()
            if lib is None:
                raise SystemExit("error: tcmalloc not found (apt-get install libtcmalloc-minimal4)")
            env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env["LD_PRELOAD"] else "")
        elif alloc != "glibc":
            raise SystemExit(f"error: --allocator takes glibc and/or tcmalloc, got {alloc!r}")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            child = ["--data-dir", args.data_dir, "--space", args.space, "--steps", str(args.steps),
                     "--warmup", str(args.warmup), "--threads", args.threads, "--batch-norm", args.batch_norm,
                     "--allocator", alloc, "--out", out, "--workdir", os.path.join(args.workdir, alloc)]
            if args.config:
                child += ["--config", args.config]
            subprocess.run([sys.executable, os.path.abspath(__file__)] + child, env=env, check=True)
            with open(out) as f:
                for r in json.load(f)["results"]:
                    r["allocator"] = alloc
                    results.append(r)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True, help="prepared corpus (prepare_data.py)")
    p.add_argument("--space", default="tdnnf_demo", help="search space name or YAML path")
    p.add_argument("--config", default=None, help="YAML with train/lfmmi sections (retrain.py's)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", default="1", help="comma-separated torch intra-op thread counts to compare")
    p.add_argument("--batch-norm", default="fused", help="comma-separated masked-BatchNorm implementations "
                   "to compare: fused (the model's) and/or composed (separate tensor operations)")
    p.add_argument("--allocator", default=None, help="comma-separated memory allocators to compare, each "
                   "in a child process: glibc and/or tcmalloc (default: this process's)")
    p.add_argument("--workdir", default="exp/bench_train_step", help="the trainer's --out (TensorBoard, lock)")
    p.add_argument("--out", default=None, help="JSON result")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: --steps must be >= 1 and --warmup >= 0")
    bns = args.batch_norm.split(",")
    if any(b not in ("fused", "composed") for b in bns):
        raise SystemExit(f"error: --batch-norm takes fused and/or composed, got {args.batch_norm!r}")
    if args.allocator and "," in args.allocator:
        results = run_allocators(args)
    else:
        settings = [(int(t), b) for b in bns for t in args.threads.split(",")]
        results = []
        for k, (th, bn) in enumerate(settings):
            results.append(run_setting(args, th, bn, os.path.join(args.workdir, f"threads{th}_{bn}_{k}")))
            results[-1]["allocator"] = args.allocator or "process default"
    base = results[0]["steps_per_second"]
    print(f"{'alloc':>15} {'threads':>7} {'bn':>8} {'s/step':>7} {'ratio':>6}  " + " ".join(f"{p:>17}" for p in PARTS))
    for r in results:
        r["ratio_vs_first"] = r["steps_per_second"] / base
        print(f"{r['allocator']:>15} {r['threads']:>7} {r['batch_norm']:>8} {r['seconds_per_step']:7.3f} {r['ratio_vs_first']:6.2f}  "
              + " ".join(f"{100 * r['share'][p]:16.1f}%" for p in PARTS))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"data_dir": args.data_dir, "space": args.space, "config": args.config,
                       "parts": list(PARTS), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
