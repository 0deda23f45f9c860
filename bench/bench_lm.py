#!/usr/bin/env python
"""Benchmark: the Transformer LM's n-best rescoring throughput and perplexity speed, fp32 vs packed low-bit.

    python bench/bench_lm.py --fp32 exp/paper_demo/lm/fp32/model.pt \\
        --packed exp/paper_demo/lm/kl_r16/model.safetensors --packed exp/paper_demo/lm/uniform2/model.safetensors \\
        --nbest exp/paper_demo/fp32_ft_e3/rescore_fp32/test/nbest.jsonl --data-dir data/synth_demo

Backends, all in this process, over the same inputs:

* ``torch_fp32``           the float LM (``model.pt``)
* ``torch_packed:<name>``  each packed LM (``quantize_lm.py``'s ``model.safetensors``; the loader
  dequantizes the matrices to float32 at load time, so the arithmetic is the fp32 model's)
* ``onnx_fp32``            the float LM exported with ``export_onnx.py --lm`` (onnxruntime, CPU), when
  onnxruntime is installed

Per backend: the file's bytes and the cost model's payload bytes; n-best rescoring throughput
(hypotheses scored per second: every hypothesis of ``--nbest``, ``lm.rescore.nnlm_costs``); perplexity
speed (tokens per second over the dev and test transcripts, ``lm.score.perplexity``). Rounds interleave
the backends; medians over ``--rounds``; ratios against ``torch_fp32``. ``--threads`` torch/onnxruntime
threads (default 1). JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from training.cli import HelpFormatter  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--fp32", required=True, help="float LM model.pt")
    ap.add_argument("--packed", action="append", default=[], help="packed LM model.safetensors (repeatable)")
    ap.add_argument("--nbest", required=True, help="nbest.jsonl of a rescore.py run")
    ap.add_argument("--data-dir", required=True, help="prepared corpus: dev and test transcripts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from lm.data import split_transcripts
    from lm.quant import lm_size
    from lm.rescore import nnlm_costs, read_nbest_jsonl
    from lm.score import load_lm, perplexity

    nb = read_nbest_jsonl(args.nbest)
    hyps = [list(h.words) for u in nb for h in nb[u]]
    sents = split_transcripts(args.data_dir, "dev") + split_transcripts(args.data_dir, "test")
    backends = {"torch_fp32": (args.fp32, lambda: load_lm(args.fp32))}
    for p in args.packed:
        backends[f"torch_packed:{os.path.basename(os.path.dirname(os.path.abspath(p)))}"] = (p, lambda p=p: load_lm(p))
    work = tempfile.mkdtemp(prefix="bench_lm_")
    if not args.no_onnx:
        import importlib.util

        from lm.onnx import export_lm_onnx, load_lm_onnx
        if importlib.util.find_spec("onnxruntime") is None:
            print("onnxruntime not installed: no onnx_fp32 backend", file=sys.stderr)
        else:
            onnx_path = os.path.join(work, "lm.onnx")
            export_lm_onnx(args.fp32, onnx_path)
            backends["onnx_fp32"] = (onnx_path, lambda: load_lm_onnx(onnx_path))  # torch.get_num_threads() threads
    models = {}
    for name, (path, load) in backends.items():
        model, vocab = load()
        nbytes = lm_size(model.cfg).total_bytes if hasattr(model, "weight_params") else None
        models[name] = (model, vocab, os.path.getsize(path), nbytes)
    times = {n: {"rescore": [], "ppl": []} for n in models}
    for r in range(args.rounds):
        for name, (model, vocab, _, _) in models.items():
            t0 = time.perf_counter()
            nnlm_costs(model, vocab, hyps, args.batch_size)
            t1 = time.perf_counter()
            perplexity(model, vocab, sents, args.batch_size)
            t2 = time.perf_counter()
            times[name]["rescore"].append(t1 - t0)
            times[name]["ppl"].append(t2 - t1)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    tokens = sum(len(s) + 1 for s in sents)
    res = {"hypotheses": len(hyps), "tokens": tokens, "threads": args.threads, "rounds": args.rounds, "backends": {}}
    base = None
    for name, (model, vocab, file_bytes, nbytes) in models.items():
        rs, ps = statistics.median(times[name]["rescore"]), statistics.median(times[name]["ppl"])
        d = {"file_bytes": file_bytes, "payload_bytes": nbytes, "hyps_per_s": len(hyps) / rs, "tokens_per_s": tokens / ps,
             "rescore_s": rs, "ppl_s": ps}
        if base is None:
            base = d
        d["rescore_speedup"] = d["hyps_per_s"] / base["hyps_per_s"]
        d["ppl_speedup"] = d["tokens_per_s"] / base["tokens_per_s"]
        d["size_ratio"] = base["file_bytes"] / file_bytes
        res["backends"][name] = d
    print(f"{'backend':28s} {'file bytes':>12s} {'hyps/s':>9s} {'x fp32':>7s} {'tokens/s':>9s} {'x fp32':>7s}")
    for name, d in res["backends"].items():
        print(f"{name:28s} {d['file_bytes']:12,d} {d['hyps_per_s']:9.1f} {d['rescore_speedup']:7.2f} "
              f"{d['tokens_per_s']:9.1f} {d['ppl_speedup']:7.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
