#!/usr/bin/env python
"""Export a packed acoustic model (``model.safetensors`` from retrain.py) as ONNX with low-bit kernels.

    python export_onnx.py --model exp/demo/uniform4/model.safetensors --out exp/demo/uniform4/model.onnx
    python decode.py --model exp/demo/uniform4/model.onnx --data-dir data/synth_tel --split test ...

Each weight matrix keeps its genotype's bit-width: 2/4/8-bit weights become onnxruntime ``MatMulNBits``
operators over the file's own codes and scales (1-bit weights ride on the 2-bit kernel, exactly); float
weights a ``MatMul``. ``--kernel float`` writes every weight as a float ``MatMul`` of the dequantized matrix
instead. The graph includes the model's CMVN, context handling, frame subsampling and chain output, so the
ONNX file alone maps raw features to pdf log-likelihoods (quant/onnx_export.py documents the format).
Prints a JSON summary (file bytes, per-weight kernels).

    python export_onnx.py --lm exp/lm/fp32/model.pt --out exp/lm/fp32/model.onnx   # the Transformer LM
    python rescore.py ... --lm exp/lm/fp32/model.onnx                              # rescoring through it
"""
from __future__ import annotations

import argparse
import json
import sys

from training.cli import HelpFormatter, add_debug_flag, run_main


def main(argv=None) -> int:
    from quant.onnx_export import ACCURACY_LEVELS, KERNELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="packed acoustic model (.safetensors) written by retrain.py")
    src.add_argument("--lm", help="Transformer LM (model.pt) written by train_lm.py: float32 graph (lm/onnx.py)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--kernel", choices=KERNELS, default="nbits",
                    help="nbits: low-bit weights stay packed (MatMulNBits); float: dequantized float MatMul")
    ap.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=0,
                    help="MatMulNBits accuracy_level: 0 = float32 arithmetic (exact to float rounding); "
                         "4 = int8 activations (faster on some CPUs, approximate)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if args.lm:
        from lm.onnx import export_lm_onnx

        print(json.dumps(export_lm_onnx(args.lm, args.out), indent=1))
        return 0
    from quant.onnx_export import export_onnx

    res = export_onnx(args.model, args.out, kernel=args.kernel, accuracy_level=args.accuracy_level)
    kinds = {}
    for w in res["weights"].values():
        key = f"{w['bits']}-bit -> {w['kernel']}" + (f" ({w['kernel_bits']}-bit)" if w["kernel"] == "MatMulNBits" else "")
        kinds[key] = kinds.get(key, 0) + 1
    print(json.dumps({"path": res["path"], "file_bytes": res["file_bytes"],
                      "packed_payload_bytes": res["packed_payload_bytes"], "weights_by_kernel": kinds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
