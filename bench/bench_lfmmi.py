#!/usr/bin/env python
"""Benchmark: LF-MMI loss + backward, pure-PyTorch backend vs k2, same inputs, one run.

Same den graph, same numerator graphs, same network output (default B=32, T=150 output frames) for
both backends; each backend is timed in its own child process (so peak RSS is per backend), and the
parent prints each median, the ratio torch/k2, and peak memory. Run it where k2 imports (the k2 lane
venv), e.g.

    OMP_NUM_THREADS=1 ~/.cache/green-asr/k2-venv/bin/python bench/bench_lfmmi.py --graph bigram-full
    OMP_NUM_THREADS=1 ~/.cache/green-asr/k2-venv/bin/python bench/bench_lfmmi.py --graph 4gram

Without k2 only the torch backend is timed. ``--data-dir data/synth_demo`` builds the den graph from a
prepared corpus' lexicon and LM text instead of the fixture. Graphs (from tests/fixtures/lfmmi): 'bigram-full' (every
phone pair: the reference icefall-like size), '2gram', '3gram', '4gram' (estimated from the fixture text).
The torch backend runs with leaky 0.1 (its cost does not depend on it); k2 has no leaky HMM (eta = 0).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training.cli import HelpFormatter  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lfmmi.graphs import (DictLexicon, NumeratorCompiler, build_den_graph, den_graph_from_phone_lm,  # noqa: E402
                          estimate_phone_lm)
from lfmmi.loss import LFMMILoss, LFMMIOptions  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures", "lfmmi")


def build(graph: str, data_dir=None):
    """Den graph from the fixture text, or from a prepared corpus (its lexicon and LM text)."""
    if data_dir:
        lex = DictLexicon.load(os.path.join(data_dir, "lang", "lexicon.txt"))
        text_path = os.path.join(data_dir, "lm_train_text.txt")
    else:
        lex = DictLexicon.load(os.path.join(FIX, "lexicon.txt"))
        text_path = os.path.join(FIX, "text.txt")
    with open(text_path) as f:
        texts = [l.strip() for l in f if l.strip()]
    if graph == "bigram-full":
        P = len(lex.phones)
        seqs = [[a, b] for a in range(P) for b in range(P)]
        den = den_graph_from_phone_lm(estimate_phone_lm(seqs, order=2), P)
    else:
        den = build_den_graph(lex, texts, order=int(graph[0]))
    return lex, texts, den


def make_inputs(lex, texts, den, B, T, seed):
    rng = np.random.default_rng(seed)
    comp = NumeratorCompiler(lex)
    # utterances that fit T frames: pick texts, lengths in [0.7T, T] but >= the transcript's minimum
    fs, L = [], []
    i = 0
    while len(fs) < B:
        f = comp.compile_one(texts[i % len(texts)])
        i += 1
        n = int(f.min_path_length())
        if n <= T:
            fs.append(f)
            L.append(int(rng.integers(max(n, int(0.7 * T)), T + 1)))
    L[0] = T
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, T, den.num_pdfs, generator=g) * 2
    xent = torch.randn(B, T, den.num_pdfs, generator=g).log_softmax(-1)
    return y, xent, torch.tensor(L), fs


def child(args) -> dict:
    torch.set_num_threads(args.threads)
    lex, texts, den = build(args.graph, args.data_dir)
    y0, x0, L, fs = make_inputs(lex, texts, den, args.batch, args.frames, args.seed)
    dev = torch.device(args.device)
    y0, x0, L = y0.to(dev), x0.to(dev), L.to(dev)
    eta = 0.1 if args.child == "torch" else 0.0
    loss_fn = LFMMILoss(den, LFMMIOptions(backend=args.child, leaky_hmm_coefficient=eta))
    times = []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for r in range(args.warmup + args.reps):
        y = y0.clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, stats = loss_fn(y, x, L, fs)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if r >= args.warmup:
            times.append(dt)
    out = {
        "backend": args.child, "median_s": statistics.median(times), "min_s": min(times),
        "times": times, "loss": float(loss.detach()), "skipped": stats["skipped"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024.0,
        "den_states": den.num_states, "den_arcs": den.num_arcs, "torch": torch.__version__,
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--graph", default="bigram-full", choices=["bigram-full", "2gram", "3gram", "4gram"])
    ap.add_argument("--data-dir", default=None,
                    help="prepared corpus (e.g. data/synth_demo): den graph from its lexicon and LM text")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default="torch,k2")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    backends = args.backends.split(",")
    if "k2" in backends:
        try:
            import k2  # noqa: F401
        except Exception:
            print("k2 not importable here: timing the torch backend only")
            backends = [b for b in backends if b != "k2"]
    res = {}
    for b in backends:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", b] + [
            a for a in sys.argv[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-3000:])
            raise SystemExit(f"{b} child failed")
        res[b] = json.loads(p.stdout.strip().splitlines()[-1])
    any_r = next(iter(res.values()))
    print(f"den graph '{args.graph}' from {args.data_dir or 'tests/fixtures/lfmmi'}: {any_r['den_states']} states, {any_r['den_arcs']} arcs; "
          f"B={args.batch} T={args.frames} device={args.device} threads={args.threads} torch={any_r['torch']}")
    for b, r in res.items():
        mem = f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['rss_growth_mb']:.0f} MB during the loop)"
        if "peak_cuda_mb" in r:
            mem += f", peak CUDA {r['peak_cuda_mb']:.0f} MB"
        print(f"  {b:5s}: median {r['median_s']*1000:8.1f} ms  (min {r['min_s']*1000:.1f} ms, "
              f"{args.reps} reps)  loss {r['loss']:.4f}  skipped {r['skipped']:.0f}  {mem}")
    if "torch" in res and "k2" in res:
        print(f"  ratio torch/k2 (median): {res['torch']['median_s'] / res['k2']['median_s']:.3f}")


if __name__ == "__main__":
    main()
