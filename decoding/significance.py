"""Significance tests between two systems decoded on the same utterances.

* MAPSSWE (NIST matched-pairs sentence-segment word error test, Gillick & Cox 1989). Segments as
  NIST sc_stats: both systems are aligned to the reference; a stretch of >= `min_good` reference words
  that both systems recognise correctly (no insertion between them) separates segments, and so does
  every utterance boundary; segments where neither system errs are dropped (`nist_segments`).
  `segments="utterance"` uses whole utterances instead. On the per-segment error counts:
  Z_i = errors_A(i) - errors_B(i);  mu = mean(Z);  s^2 = sum (Z_i - mu)^2 / (n - 1);
  W = mu / (s / sqrt(n)) ~ N(0, 1) under H0 (no difference); two-sided p = erfc(|W| / sqrt 2).
  The confidence interval of the WER difference is (n / N_ref) * (mu +- z * s / sqrt n) * 100.
* Paired bootstrap (Bisani & Ney, ICASSP 2004): resample utterances with replacement B times; in each
  replicate compute delta = WER_A - WER_B on the same resampled utterances. Reports the percentile
  confidence interval of delta, the probability of improvement poi = P*(delta > 0) (B better than
  A), and a two-sided p-value 2 * min(P*(delta <= 0), P*(delta >= 0)). With few utterances the
  bootstrap distribution can be enumerated exactly (all n^n ordered resamples).
* Means over runs (`compare_run_means`): when each system was trained several times (fine-tuning seeds),
  per-utterance errors are averaged over each system's runs and both tests run on those averages with
  utterances as segments (NIST segments differ from one pair of runs to the next). The unit of sampling
  is the utterance; averaging over k runs shrinks, but does not remove, the spread between runs, which
  the caller reports beside the test.

Errors per utterance come from decoding/wer.py (substitutions + deletions + insertions).
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .wer import EPS, Words, read_text_file, utterance_errors


def _z_quantile(conf: float) -> float:
    """Standard normal quantile for a two-sided interval of coverage conf (bisection on erfc)."""
    target = 1.0 - conf  # two-sided tail mass
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.erfc(mid / math.sqrt(2.0)) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mapsswe(errors_a: Sequence[int], errors_b: Sequence[int], ref_words: Optional[int] = None,
            conf: float = 0.95) -> Dict[str, float]:
    """Matched-pairs test on per-segment error counts. Positive mu: A makes more errors than B."""
    za = np.asarray(errors_a, dtype=np.float64)
    zb = np.asarray(errors_b, dtype=np.float64)
    if za.shape != zb.shape or za.ndim != 1:
        raise ValueError("errors_a and errors_b must be 1-D and the same length")
    n = len(za)
    if n < 2:
        raise ValueError("MAPSSWE needs at least 2 segments")
    z = za - zb
    mu = float(z.mean())
    var = float(((z - mu) ** 2).sum() / (n - 1))
    se = math.sqrt(var / n)
    if se == 0.0:
        w = 0.0 if mu == 0.0 else math.copysign(math.inf, mu)
        p = 1.0 if mu == 0.0 else 0.0
    else:
        w = mu / se
        p = math.erfc(abs(w) / math.sqrt(2.0))
    zq = _z_quantile(conf)
    out = {"test": "mapsswe", "segments": n, "mean_diff": mu, "std_diff": math.sqrt(var), "W": w,
           "p_value": p, "mean_diff_ci": [mu - zq * se, mu + zq * se], "conf": conf,
           "significant": bool(p < 1.0 - conf)}
    if ref_words:
        k = 100.0 * n / ref_words
        out["wer_diff"] = k * mu
        out["wer_diff_ci"] = [k * (mu - zq * se), k * (mu + zq * se)]
    return out


def _error_tokens(alignment, n_ref: int):
    """Per reference position: word errors (n_ref) and insertions per gap (n_ref + 1)."""
    word_err = [0] * n_ref
    ins = [0] * (n_ref + 1)
    r = 0
    for a, b in alignment:
        if a == EPS:
            ins[r] += 1
        else:
            word_err[r] = 0 if a == b else 1
            r += 1
    return word_err, ins


def nist_segments(refs: Mapping[str, Words], hyps_a: Mapping[str, Words], hyps_b: Mapping[str, Words],
                  min_good: int = 2):
    """Per-segment error counts [(errors_a, errors_b, ref_words)] with NIST-style segmentation.

    Each utterance is a token sequence gap_0 w_0 gap_1 ... w_{n-1} gap_n; a token is clean when both
    systems are right there (a word both recognise, a gap where neither inserts). Maximal clean runs
    holding >= min_good words separate segments; the other maximal stretches are the segments.
    """
    ua = {u.utt_id: u for u in utterance_errors(refs, hyps_a)}
    ub = {u.utt_id: u for u in utterance_errors(refs, hyps_b)}
    segs = []
    for utt in sorted(refs):
        n = ua[utt].ref_words
        wa, ia = _error_tokens(ua[utt].alignment, n)
        wb, ib = _error_tokens(ub[utt].alignment, n)
        # tokens: (err_a, err_b, is_word)
        toks = []
        for i in range(n + 1):
            toks.append((ia[i], ib[i], False))
            if i < n:
                toks.append((wa[i], wb[i], True))
        clean = [ea == 0 and eb == 0 for ea, eb, _ in toks]
        sep = [False] * len(toks)
        i = 0
        while i < len(toks):
            if clean[i]:
                j = i
                while j < len(toks) and clean[j]:
                    j += 1
                if sum(1 for k in range(i, j) if toks[k][2]) >= min_good:
                    for k in range(i, j):
                        sep[k] = True
                i = j
            else:
                i += 1
        cur = None
        for k, (ea, eb, is_word) in enumerate(toks + [(0, 0, False)]):
            if k == len(toks) or sep[k]:
                if cur is not None and (cur[0] or cur[1]):
                    segs.append(tuple(cur))
                cur = None
                continue
            if cur is None:
                cur = [0, 0, 0]
            cur[0] += ea
            cur[1] += eb
            cur[2] += int(is_word)
    return segs


def paired_bootstrap(errors_a: Sequence[int], errors_b: Sequence[int], ref_words: Sequence[int],
                     num_samples: int = 10000, conf: float = 0.95, seed: int = 0,
                     exact_limit: int = 100000) -> Dict[str, float]:
    """Paired bootstrap on per-utterance errors and reference lengths.

    Uses the exact enumeration of all n^n resamples when n^n <= exact_limit, else `num_samples`
    random resamples (numpy Generator seeded with `seed`).
    """
    ea = np.asarray(errors_a, dtype=np.float64)
    eb = np.asarray(errors_b, dtype=np.float64)
    nr = np.asarray(ref_words, dtype=np.float64)
    n = len(ea)
    if not (len(eb) == n == len(nr)) or n == 0:
        raise ValueError("errors_a, errors_b, ref_words must be non-empty and the same length")
    exact = n ** n <= exact_limit
    if exact:
        idx = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(num_samples, n))
    sa, sb, sn = ea[idx].sum(1), eb[idx].sum(1), nr[idx].sum(1)
    ok = sn > 0
    wa = np.where(ok, 100.0 * sa / np.maximum(sn, 1), 0.0)
    wb = np.where(ok, 100.0 * sb / np.maximum(sn, 1), 0.0)
    delta = wa - wb
    lo_q, hi_q = 100.0 * (1 - conf) / 2, 100.0 * (1 + conf) / 2
    N = nr.sum()
    poi = float((delta > 0).mean())
    p = min(1.0, 2.0 * min(float((delta <= 0).mean()), float((delta >= 0).mean())))
    return {"test": "paired_bootstrap", "exact": exact, "samples": int(len(idx)),
            "wer_a": 100.0 * ea.sum() / N if N else 0.0, "wer_b": 100.0 * eb.sum() / N if N else 0.0,
            "wer_diff": 100.0 * (ea.sum() - eb.sum()) / N if N else 0.0,
            "wer_diff_ci": [float(np.percentile(delta, lo_q)), float(np.percentile(delta, hi_q))],
            "wer_a_ci": [float(np.percentile(wa, lo_q)), float(np.percentile(wa, hi_q))],
            "wer_b_ci": [float(np.percentile(wb, lo_q)), float(np.percentile(wb, hi_q))],
            "poi": poi, "p_value": p, "conf": conf, "significant": bool(p < 1.0 - conf)}


def compare_systems(refs: Mapping[str, Words], hyps_a: Mapping[str, Words], hyps_b: Mapping[str, Words],
                    num_samples: int = 10000, conf: float = 0.95, seed: int = 0) -> Dict[str, dict]:
    """Both tests for system A vs B on the utterances of `refs` (missing hypotheses = empty)."""
    ua = utterance_errors(refs, hyps_a)
    ub = utterance_errors(refs, hyps_b)
    e_a = [u.errors for u in ua]
    e_b = [u.errors for u in ub]
    nref = [u.ref_words for u in ua]
    out: Dict[str, dict] = {"utterances": len(ua), "ref_words": int(sum(nref))}  # type: ignore
    out["bootstrap"] = paired_bootstrap(e_a, e_b, nref, num_samples, conf, seed)
    segs = nist_segments(refs, hyps_a, hyps_b)
    if len(segs) >= 2:
        out["mapsswe"] = mapsswe([x[0] for x in segs], [x[1] for x in segs], sum(nref), conf)
    else:  # fewer than 2 segments with errors: no evidence of any difference
        out["mapsswe"] = {"test": "mapsswe", "segments": len(segs), "p_value": 1.0, "significant": False,
                          "wer_diff": 100.0 * (sum(e_a) - sum(e_b)) / max(sum(nref), 1)}
    if len(ua) >= 2:
        out["mapsswe_utterance"] = mapsswe(e_a, e_b, sum(nref), conf)
    return out


def compare_run_means(refs: Mapping[str, Words], runs_a: Sequence[Mapping[str, Words]],
                      runs_b: Sequence[Mapping[str, Words]], num_samples: int = 10000, conf: float = 0.95,
                      seed: int = 0) -> Dict[str, dict]:
    """System A (its runs' hypotheses ``runs_a``, k_a >= 1 of them) against system B (``runs_b``) on the
    utterances of ``refs``: per utterance, the errors are averaged over each system's runs; ``wer_a`` /
    ``wer_b`` are the means of the runs' WERs (%), ``wer_diff`` their difference; "mapsswe" (utterance
    segments) and "bootstrap" test it on the averaged errors. With one run each this is
    :func:`compare_systems`'s "mapsswe_utterance" and "bootstrap"."""
    if not runs_a or not runs_b:
        raise ValueError("compare_run_means needs at least one run of each system")
    ua = [utterance_errors(refs, h) for h in runs_a]
    ea = np.mean([[u.errors for u in utts] for utts in ua], axis=0)
    eb = np.mean([[u.errors for u in utterance_errors(refs, h)] for h in runs_b], axis=0)
    nref = [u.ref_words for u in ua[0]]
    n_words = int(sum(nref))
    out: Dict[str, dict] = {"utterances": len(nref), "ref_words": n_words, "runs_a": len(runs_a),  # type: ignore
                            "runs_b": len(runs_b)}
    out["bootstrap"] = paired_bootstrap(ea, eb, nref, num_samples, conf, seed)
    if len(nref) >= 2:
        out["mapsswe"] = mapsswe(ea, eb, n_words, conf)
    else:
        out["mapsswe"] = {"test": "mapsswe", "segments": len(nref), "p_value": 1.0, "significant": False}
    k = 100.0 / max(n_words, 1)
    out["wer_a"], out["wer_b"] = k * float(ea.sum()), k * float(eb.sum())  # type: ignore
    out["wer_diff"] = out["wer_a"] - out["wer_b"]  # type: ignore
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    """python -m decoding.significance DIR_A DIR_B: compare two decode dirs (refs.txt, hyps.txt)."""
    import argparse
    import os

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("dir_a")
    ap.add_argument("dir_b")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args(argv)
    refs = read_text_file(os.path.join(a.dir_a, "refs.txt"))
    res = compare_systems(refs, read_text_file(os.path.join(a.dir_a, "hyps.txt")),
                          read_text_file(os.path.join(a.dir_b, "hyps.txt")), a.samples, seed=a.seed)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
