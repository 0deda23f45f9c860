#!/usr/bin/env python
"""Benchmark: LM estimation, HCLG build (time, states, arcs, bytes) and decoding speed.

  python bench/bench_decode.py --vocab 3000 --sentences 20000 --order 3

Vocabulary: the first --vocab CMUdict words (alphabetic, single pronunciation kept plus variants);
text: Zipf-distributed random sentences (seeded) of 4-15 words. Decoding speed is measured on
random [T, num_pdfs] matrices whose best path follows the pronunciation of a training sentence.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from decoding.decoder import DecoderConfig, decode_matrix  # noqa: E402
from decoding.graph import get_graph  # noqa: E402
from decoding.lm import estimate  # noqa: E402
from lang.lexicon import Lexicon, cmudict_prons  # noqa: E402
from training.cli import HelpFormatter  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--vocab", type=int, default=3000)
    ap.add_argument("--sentences", type=int, default=20000)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--method", default="kn")
    ap.add_argument("--decode-utts", type=int, default=20)
    ap.add_argument("--beam", type=float, default=13.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lattice", action="store_true", help="time LatticeSimpleDecoder too")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    prons = cmudict_prons()
    words = sorted(w for w in prons if w.isalpha())
    words = [words[i] for i in sorted(rng.choice(len(words), a.vocab, replace=False))]
    lex = Lexicon({w: prons[w] for w in words})
    p = 1.0 / np.arange(1, a.vocab + 1) ** 1.1
    p /= p.sum()
    perm = rng.permutation(a.vocab)
    sents = [[words[perm[i]] for i in rng.choice(a.vocab, rng.integers(4, 16), p=p)]
             for _ in range(a.sentences)]
    res = {"vocab": a.vocab, "sentences": a.sentences, "order": a.order, "phones": len(lex.phones)}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "text"), "w") as f:
            f.write("\n".join(" ".join(s) for s in sents) + "\n")
        t0 = time.time()
        lm = estimate(sents, a.order, a.method, vocab=words)
        res["lm_seconds"] = round(time.time() - t0, 2)
        res["ngrams"] = [len(x) for x in lm.probs]
        t0 = time.time()
        g = get_graph(lex, os.path.join(tmp, "cache"), lm_text=os.path.join(tmp, "text"), order=a.order,
                      method=a.method)
        res["get_graph_seconds"] = round(time.time() - t0, 2)
        res.update({k: g.info[k] for k in ("LG_states", "LG_seconds", "HCLG_seconds", "G_states",
                                            "HCLG_states", "HCLG_arcs", "build_seconds")})
        res["HCLG_bytes"] = os.path.getsize(os.path.join(g.directory, "HCLG.fst"))
        t0 = time.time()
        get_graph(lex, os.path.join(tmp, "cache"), lm_text=os.path.join(tmp, "text"), order=a.order,
                  method=a.method)
        res["cached_load_seconds"] = round(time.time() - t0, 2)
        # decoding speed
        P = len(lex.phones)
        idx = {ph: i for i, ph in enumerate(lex.phones)}
        frames, dec_s, correct, lat_s, lat_correct = 0, 0.0, 0, 0.0, 0
        for i in range(a.decode_utts):
            s = sents[i]
            seq = ["SIL"] + [ph for w in s for ph in lex.pronunciations(w)[0]] + ["SIL"]
            rows = []
            for ph in seq:
                for j in range(int(rng.integers(2, 5))):
                    r = rng.normal(-8.0, 1.0, 2 * P).astype(np.float32)
                    r[2 * idx[ph] + (0 if j == 0 else 1)] = rng.normal(-1.0, 0.5)
                    rows.append(r)
            m = np.stack(rows)
            t0 = time.time()
            hyp = decode_matrix(m, g, DecoderConfig(beam=a.beam)).words
            dec_s += time.time() - t0
            if a.lattice:
                t0 = time.time()
                lat_hyp = decode_matrix(m, g, DecoderConfig(beam=a.beam, lattice=True)).words
                lat_s += time.time() - t0
                lat_correct += lat_hyp == s
            frames += len(m)
            correct += hyp == s
        res.update(decode_frames=frames, decode_seconds=round(dec_s, 3),
                   decode_ms_per_frame=round(1000 * dec_s / frames, 3),
                   decode_rtf_at_30ms_frames=round(dec_s / (frames * 0.03), 4),
                   decode_sentences_correct=f"{correct}/{a.decode_utts}")
        if a.lattice:
            res.update(lattice_decode_ms_per_frame=round(1000 * lat_s / frames, 3),
                       lattice_sentences_correct=f"{lat_correct}/{a.decode_utts}")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
