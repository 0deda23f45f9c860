#!/usr/bin/env python3
"""Do a prepared corpus's transcripts match its audio?  Forced-alignment scores with a trained model.

    python verify_transcripts.py --model exp/demo/fp32/model.pt --data-dir data/real_asterisk \\
        --train-data-dir data/synth_demo --out data/real_asterisk/transcript_check.json

For every utterance of ``--splits``, the LF-MMI objective per frame ``(log p(audio | transcript) -
log p(audio | any phone sequence)) / frames``: the numerator is the forced alignment of the transcript,
the denominator the phone-LM graph of the corpus the model was trained on (``--train-data-dir``).  It is
at most 0, near 0 where the transcript is the best explanation of the audio, and far below the rest
where the transcript does not belong to the audio.  Utterances whose robust z-score
``(x - median) / (1.4826 * MAD)`` is below ``-z_max`` are listed as outliers (nothing is dropped),
with the duration check of corpus.validate for comparison.  ``--shuffle-check`` scores the same
utterances with their transcripts rotated by one, a known mismatch, so the reader sees how far apart
a wrong transcript lands.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from training.cli import HelpFormatter

log = logging.getLogger("verify_transcripts")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True, help="acoustic model file (retrain.py / train output model.pt)")
    ap.add_argument("--data-dir", required=True, type=Path, help="the prepared corpus to check")
    ap.add_argument("--train-data-dir", required=True, type=Path,
                    help="the prepared corpus the model was trained on (its den graph)")
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--out", type=Path, help="JSON report (default DATA_DIR/transcript_check.json)")
    ap.add_argument("--z-max", type=float, default=3.5)
    ap.add_argument("--shuffle-check", action="store_true",
                    help="also score each utterance against its neighbour's transcript (a known mismatch)")
    ap.add_argument("--device", default="cpu")
    from training.cli import add_debug_flag

    add_debug_flag(ap)
    return ap


def score_utterances(model, cuts, lexicon, train_corpus, loss_fn, device="cpu", texts=None):
    """``[(cut id, frames, objf per frame)]`` for ``cuts`` (one forward per utterance) under ``loss_fn``
    (an LF-MMI loss over the training corpus's den graph); ``texts`` replaces the transcripts (same
    order) when given.  Utterances the loss cannot score get ``nan``."""
    import torch

    from lfmmi import NumeratorCompiler

    compiler = NumeratorCompiler(lexicon, sil_prob=0.5)
    if getattr(model, "cmvn_in_graph", False):  # an ONNX export normalises its input itself
        mean, std = torch.zeros(()), torch.ones(())
    else:
        cmvn = getattr(model, "cmvn", None) or train_corpus.cmvn
        mean = torch.as_tensor(cmvn.mean, dtype=torch.float32)
        std = torch.as_tensor(cmvn.std, dtype=torch.float32)
    out = []
    model.eval()
    with torch.no_grad():
        for i, c in enumerate(cuts):
            feats = (torch.from_numpy(c.load_features()).float() - mean) / std
            chain, xent, out_len = model(feats.unsqueeze(0).to(device), torch.tensor([feats.shape[0]]).to(device))
            text = texts[i] if texts is not None else c.supervisions[0].text
            _, st = loss_fn(chain, xent, out_len, compiler.compile([text]))
            ok = st["sequences"] > 0 and st["frames"] > 0 and st.get("skipped", 0) == 0
            out.append((c.id, int(out_len[0]), float(st["objf_per_frame"]) if ok else float("nan")))
    return out


def robust_outliers(rows, z_max):
    import numpy as np

    x = np.array([r[2] for r in rows], dtype=np.float64)
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return {}, []
    med = float(np.median(x[ok]))
    mad = float(np.median(np.abs(x[ok] - med))) or 1e-9
    stats = {"median": round(med, 4), "mad": round(mad, 4), "mean": round(float(x[ok].mean()), 4),
             "unscored": int((~ok).sum())}
    outl = []
    for (u, n, v) in rows:
        z = (v - med) / (1.4826 * mad) if np.isfinite(v) else float("-inf")
        if z < -z_max:
            outl.append({"utterance": u, "frames": n, "objf_per_frame": None if not np.isfinite(v) else round(v, 4),
                         "z": None if not np.isfinite(z) else round(float(z), 2)})
    outl.sort(key=lambda r: (r["z"] is not None, r["z"] if r["z"] is not None else 0))
    return stats, outl


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np
    from lhotse import load_manifest

    from decoding.cli import lexicon_for_model
    from lang.lexicon import Lexicon
    from training.checkpoint import load_acoustic_model
    from training.experiment import load_corpus, make_lfmmi

    t0 = time.time()
    model = load_acoustic_model(args.model, args.device)
    train_corpus = load_corpus(args.train_data_dir)
    loss_fn, _, _ = make_lfmmi(train_corpus, None)  # default den graph: phone 3-gram of the training text
    lexicon, dropped = lexicon_for_model(Lexicon.load(args.data_dir / "lang" / "lexicon.txt"), model)
    summary = json.loads((args.data_dir / "summary.json").read_text())
    report = {"model": str(args.model), "data_dir": str(args.data_dir), "z_max": args.z_max, "splits": {}}
    for split in [s for s in args.splits.split(",") if s]:
        path = args.data_dir / ("cuts_%s.jsonl.gz" % split)
        cuts = [c for c in load_manifest(path)
                if all(w not in dropped for w in c.supervisions[0].text.split())]
        if not cuts:
            continue
        rows = score_utterances(model, cuts, lexicon, train_corpus, loss_fn, args.device)
        stats, outl = robust_outliers(rows, args.z_max)
        entry = {"utterances": len(rows), **stats, "outliers_total": len(outl), "outliers": outl,
                 "duration_check": summary.get("duration_check", {}).get(split)}
        if args.shuffle_check and len(cuts) > 1:
            texts = [c.supervisions[0].text for c in cuts]
            wrong = score_utterances(model, cuts, lexicon, train_corpus, loss_fn, args.device, texts[1:] + texts[:1])
            w = np.array([r[2] for r in wrong])
            flagged = sum(1 for r in wrong if not np.isfinite(r[2])
                          or (r[2] - stats["median"]) / (1.4826 * stats["mad"]) < -args.z_max)
            entry["shuffled"] = {"median": round(float(np.nanmedian(w)), 4), "flagged": flagged,
                                 "utterances": len(wrong)}
        report["splits"][split] = entry
        log.info("%s: %d utterances, objf/frame median %.3f (MAD %.3f), %d outlier(s)%s", split, len(rows),
                 stats.get("median", float("nan")), stats.get("mad", float("nan")), len(outl),
                 "" if "shuffled" not in entry else "; rotated transcripts: median %.3f, %d/%d flagged" % (
                     entry["shuffled"]["median"], entry["shuffled"]["flagged"], entry["shuffled"]["utterances"]))
    report["seconds"] = round(time.time() - t0, 1)
    out = args.out or (args.data_dir / "transcript_check.json")
    tmp = Path(str(out) + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    from training.cli import run_main

    sys.exit(run_main(main))
