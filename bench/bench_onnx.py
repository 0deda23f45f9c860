#!/usr/bin/env python
"""Benchmark: the acoustic model's forward pass in PyTorch and in ONNX Runtime, fp32 and low-bit, one run.

    python bench/bench_onnx.py --fp32 exp/demo/fp32/model.safetensors \
        --packed exp/demo/uniform4/model.safetensors --data-dir data/synth_tel --split test

Backends over the same padded batches of the split's features:

* ``torch_fp32``   the fp32 model in PyTorch (``quant.packing.load_packed``)
* ``onnx_fp32``    the fp32 model exported with ``export_onnx.py`` (float MatMul)
* ``torch_packed`` the packed low-bit model in PyTorch (the loader dequantizes to float32 at load time)
* ``onnx_lowbit``  the packed model exported with ``export_onnx.py`` (MatMulNBits: weights stay packed)

``--packed`` may be given several times; each adds its two backends, named ``torch_packed:<name>`` and
``onnx_lowbit:<name>`` after the file's parent directory. ``--uniform-bits 8,2`` adds uniform 8- and 2-bit
models quantized from the fp32 model without fine-tuning (named ``uniform<b>_noft``): for speed and memory
only, their accuracy is not what fine-tuned models reach.

Each backend runs in its own process (only its runtime imported: torch, or onnxruntime + numpy), once per
round, the rounds interleaving the backends so that load on the machine hits them alike. Per backend:
file bytes; resident memory the model adds at load (RSS after loading minus RSS before, features already
in memory) and the process's peak RSS; forward real-time factor (forward seconds over the split / audio
seconds, the PyTorch backends' CMVN included, the ONNX graph applies its own); and the latency of one
batch-1 chunk of ``--chunk-frames`` frames (1 s of audio at 10 ms frames) plus the model's context.
Ratios are against ``torch_fp32``; medians over rounds. JSON goes to ``--out``.
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from training.cli import HelpFormatter  # noqa: E402


def rss_mb():
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) / 1024.0
    return vals["VmRSS"], vals["VmHWM"]


def worker(backend, model, data, threads, chunk_frames, context, repeats):
    """Load ``model`` with ``backend``, time the forward over the batches in ``data`` (an .npz), print JSON."""
    import numpy as np

    z = np.load(data)
    batches = [(z[f"x{i}"], z[f"l{i}"]) for i in range(int(z["n"]))]
    feat_dim = batches[0][0].shape[2]
    if backend.startswith("onnx"):
        import onnxruntime as ort
    else:
        import torch

        sys.path.insert(0, ROOT)
        from quant.packing import load_packed, read_header
    base, _ = rss_mb()  # runtime imported, features in memory: what loading the model adds is the model
    t = time.perf_counter()
    if backend.startswith("onnx"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

        def fwd(x, lens):
            return sess.run(["chain"], {"feats": x, "lengths": lens.astype(np.int64)})[0]
    else:
        torch.set_num_threads(threads)
        net = load_packed(model)
        cm = json.loads(read_header(model)["__metadata__"]["cmvn"])
        mean = torch.tensor(cm["mean"], dtype=torch.float32)
        std = torch.tensor(cm["std"], dtype=torch.float32).clamp(min=1e-5)

        def fwd(x, lens):
            with torch.no_grad():
                return net((torch.from_numpy(x) - mean) / std, torch.from_numpy(lens))[0].numpy()
    load_s = time.perf_counter() - t
    loaded, _ = rss_mb()
    fwd(*batches[0])  # warm-up (allocator arenas, kernel selection)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for x, lens in batches:
            fwd(x, lens)
        times.append(time.perf_counter() - t)
    # one batch-1 chunk of chunk_frames input frames plus the model's left and right context
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, chunk_frames + context, feat_dim)).astype(np.float32)
    l1 = np.array([x1.shape[1]], np.int64)
    lat = []
    for _ in range(30):
        t = time.perf_counter()
        fwd(x1, l1)
        lat.append(time.perf_counter() - t)
    _, peak = rss_mb()
    print(json.dumps({"backend": backend, "load_s": load_s, "forward_s": min(times), "chunk_ms": 1000 * statistics.median(lat),
                      "rss_base_mb": base, "model_rss_mb": loaded - base, "peak_rss_mb": peak}))


def prepare(args, work):
    """Export the ONNX files and write the padded feature batches; returns (paths, batches file, audio
    seconds, #cuts, the model's context in frames)."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from decoding.decoder import _batches
    from models.config import TDNNFConfig, contexts
    from quant.onnx_export import export_onnx
    from quant.packing import read_header
    from training.data import load_cuts

    paths = {"torch_fp32": args.fp32, "onnx_fp32": os.path.join(work, "fp32.onnx")}
    export_onnx(args.fp32, paths["onnx_fp32"])
    packed = list(args.packed or [])
    if args.uniform_bits:
        from models.layout import weight_names
        from quant.packing import export_packed, load_packed

        net = load_packed(args.fp32)
        meta = read_header(args.fp32)["__metadata__"]
        extra = {k: meta[k] for k in ("cmvn", "phones") if k in meta}
        for b in (int(x) for x in args.uniform_bits.split(",")):
            net.set_weight_bits({n: b for n in weight_names(net.cfg)})
            p = os.path.join(work, f"uniform{b}_noft", "model.safetensors")
            export_packed(net, p, extra_metadata=extra)
            packed.append(p)
    for i, p in enumerate(packed):
        name = os.path.basename(os.path.dirname(os.path.abspath(p))) or str(i)
        paths[f"torch_packed:{name}"] = p
        paths[f"onnx_lowbit:{name}"] = os.path.join(work, f"lowbit{i}.onnx")
        export_onnx(p, paths[f"onnx_lowbit:{name}"], accuracy_level=args.accuracy_level)
    cuts = load_cuts(args.data_dir, args.split)
    if args.num_cuts:
        cuts = cuts.subset(first=args.num_cuts)
    feats = sorted((np.asarray(c.load_features(), np.float32) for c in cuts), key=lambda f: -f.shape[0])
    audio = sum(f.shape[0] for f in feats) * 0.01
    arrays = {}
    # the batches decoding.decoder.compute_outputs makes (<= 32 cuts, 20000 frames), zero-padded
    for n, batch in enumerate(_batches([(None, f) for f in feats], 20000, 32)):
        x = np.zeros((len(batch), batch[0][1].shape[0], batch[0][1].shape[1]), np.float32)
        for b, (_, f) in enumerate(batch):
            x[b, : f.shape[0]] = f
        arrays[f"x{n}"], arrays[f"l{n}"] = x, np.array([f.shape[0] for _, f in batch], np.int64)
    data = os.path.join(work, "batches.npz")
    np.savez(data, n=len(arrays) // 2, **arrays)
    lf, rf, ls, rs = contexts(TDNNFConfig.from_dict(json.loads(read_header(args.fp32)["__metadata__"]["config"])))
    return paths, data, audio, len(feats), lf + rf + ls + rs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--fp32", help="fp32 packed model (.safetensors)")
    ap.add_argument("--packed", action="append", help="low-bit packed model (.safetensors); repeatable")
    ap.add_argument("--data-dir", default="data/synth_tel")
    ap.add_argument("--split", default="test")
    ap.add_argument("--uniform-bits", default="", help="comma list: also uniform b-bit models quantized from --fp32 "
                                                         "without fine-tuning (speed and memory only)")
    ap.add_argument("--num-cuts", type=int, default=0, help="first N cuts only (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the split per round (best kept)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    ap.add_argument("--chunk-frames", type=int, default=100)
    ap.add_argument("--accuracy-level", type=int, default=0, help="MatMulNBits accuracy_level of the low-bit export")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.data, args.threads, args.chunk_frames, args.context, args.repeats)
        return
    if not (args.fp32 and (args.packed or args.uniform_bits)):
        ap.error("--fp32 and --packed (or --uniform-bits) are required")
    with tempfile.TemporaryDirectory() as work:
        paths, data, audio, ncuts, context = prepare(args, work)
        runs = {b: [] for b in paths}
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for r in range(args.rounds):
            for b in paths:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", b.split(":")[0], paths[b],
                                      "--data", data,
                                      "--threads", str(args.threads), "--chunk-frames", str(args.chunk_frames),
                                      "--context", str(context),
                                      "--repeats", str(args.repeats)], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"worker {b} failed:\n{out.stderr[-3000:]}")
                runs[b].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds} {b}: forward {runs[b][-1]['forward_s']:.2f} s", file=sys.stderr)
        res = {}
        for b in paths:
            med = {k: statistics.median(x[k] for x in runs[b]) for k in runs[b][0] if k != "backend"}
            med["file_bytes"] = os.path.getsize(paths[b])
            med["forward_rtf"] = med["forward_s"] / audio
            res[b] = med
    base = res["torch_fp32"]
    print(f"{args.split}: {ncuts} cuts, {audio:.1f} s of audio; {args.threads} thread(s); median of {args.rounds} "
          f"rounds; low-bit models: {', '.join(k.split(':')[1] for k in res if k.startswith('onnx_lowbit'))}")
    print(f"| backend | file bytes | model RSS MiB | peak RSS MiB | forward RTF | 1 s chunk ms | "
          f"file x | model RSS x | peak RSS x | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b, r in res.items():
        print(f"| {b} | {r['file_bytes']:,} | {r['model_rss_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['forward_rtf']:.4f} | "
              f"{r['chunk_ms']:.2f} | {r['file_bytes'] / base['file_bytes']:.3f} | "
              f"{r['model_rss_mb'] / base['model_rss_mb']:.3f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | "
              f"{base['forward_s'] / r['forward_s']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"split": args.split, "cuts": ncuts, "audio_seconds": audio, "threads": args.threads,
                       "accuracy_level": args.accuracy_level,
                       "rounds": args.rounds, "fp32": args.fp32, "packed": args.packed, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
