#!/usr/bin/env python
"""Benchmark: decoding real-time factor of a packed low-bit model vs the fp32 model, same run, same cuts.

    python bench/bench_packed_rtf.py --fp32 exp/demo/fp32/model.safetensors \
        --packed exp/demo/nas_r8/model.safetensors --data-dir data/synth_demo --split dev --num-cuts 60

For each model: file bytes, load time (unpack + dequantize), network forward time and decoder time over
the same cuts (features precomputed), as RTF = seconds / audio seconds; then packed/fp32 ratios.
The packed loader dequantizes to float at load time, so the forward pass costs what fp32 costs: the
gain is in storage (and load-time I/O), which the ratios make visible.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from decoding.decoder import DecoderConfig, compute_outputs, decode_outputs  # noqa: E402
from decoding.graph import default_lm_text, get_graph  # noqa: E402
from lang.lexicon import Lexicon  # noqa: E402
from training.checkpoint import load_acoustic_model  # noqa: E402
from training.data import load_cuts  # noqa: E402
from training.cli import HelpFormatter  # noqa: E402


def measure(path, cuts, graph, repeats, device):
    t = time.perf_counter()
    model = load_acoustic_model(path, device)
    load_s = time.perf_counter() - t
    cmvn = {"mean": model.cmvn.mean.tolist(), "std": model.cmvn.std.tolist()} if model.cmvn is not None else None

    def fwd(feats, lengths):
        with torch.no_grad():
            return model(feats, lengths)

    f_times, d_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        outs = compute_outputs(fwd, cuts, cmvn=cmvn, device=device, progress=False)
        f_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode_outputs(outs, graph, DecoderConfig(), progress=False)
        d_times.append(time.perf_counter() - t)
    return {"bytes": os.path.getsize(path), "load_s": load_s, "forward_s": statistics.median(f_times),
            "decode_s": statistics.median(d_times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--packed", required=True)
    ap.add_argument("--data-dir", default="data/synth_demo")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--num-cuts", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--graph-cache", default="exp/graphs")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    cuts = load_cuts(args.data_dir, args.split).subset(first=args.num_cuts).to_eager()
    audio = sum(c.duration for c in cuts)
    lex = Lexicon.load(os.path.join(args.data_dir, "lang", "lexicon.txt"))
    graph = get_graph(lex, args.graph_cache, lm_text=default_lm_text(args.data_dir))
    res = {}
    for name, path in (("fp32", args.fp32), ("packed", args.packed)):
        res[name] = measure(path, cuts, graph, args.repeats, args.device)
    print(f"{len(cuts)} cuts, {audio:.1f} s of audio, device {args.device}, median of {args.repeats}")
    print(f"{'model':<8} {'bytes':>12} {'load s':>8} {'fwd RTF':>9} {'dec RTF':>9} {'total RTF':>10}")
    for name, r in res.items():
        print(f"{name:<8} {r['bytes']:>12,} {r['load_s']:>8.3f} {r['forward_s'] / audio:>9.4f} "
              f"{r['decode_s'] / audio:>9.4f} {(r['forward_s'] + r['decode_s']) / audio:>10.4f}")
    a, b = res["fp32"], res["packed"]
    print(f"packed/fp32: bytes {b['bytes'] / a['bytes']:.3f}, load {b['load_s'] / a['load_s']:.2f}, "
          f"forward {b['forward_s'] / a['forward_s']:.2f}, "
          f"total RTF {(b['forward_s'] + b['decode_s']) / (a['forward_s'] + a['decode_s']):.2f}")


if __name__ == "__main__":
    main()
