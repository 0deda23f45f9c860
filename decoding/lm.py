"""Word n-gram language model: a small estimator that writes ARPA, and an ARPA reader/scorer.

Two smoothing methods, both interpolated and written in back-off form:

* ``"kn"``  interpolated Kneser-Ney with one absolute discount per order, D = n1 / (n1 + 2 n2)
  (count-of-counts of the counts used at that order). The highest order uses raw counts; lower
  orders use continuation counts N1+(. h w) except for n-grams that start with ``<s>`` (nothing can
  precede them), which keep their raw counts.
* ``"wb"``  Witten-Bell on raw counts at every order.

For a history h with counts a(h w):
    p(w | h) = alpha(h, w) + gamma(h) * p(w | h')        (h' = h without its first word)
    KN: alpha = max(a - D, 0) / A(h),  gamma = D * N1+(h .) / A(h)
    WB: alpha = a / (A(h) + N1+(h .)),  gamma = N1+(h .) / (A(h) + N1+(h .))
with A(h) = sum_w a(h w). The order-1 distribution is interpolated with the uniform distribution
over the vocabulary (all words plus ``</s>``, never ``<s>``), so words of the vocabulary that the
text never shows still get probability. Because every lower-order distribution is normalised,
the ARPA back-off weight of h is exactly gamma(h), and the listed probability of a seen n-gram is
the interpolated p(w | h): the ARPA model equals the interpolated one.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

BOS = "<s>"
EOS = "</s>"

Ngram = Tuple[str, ...]


def read_sentences(path: str) -> List[List[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def _count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> List[Dict[Ngram, int]]:
    """counts[k-1][ngram] = raw count of the k-gram in <s> w1 .. wn </s> (k = 1..order)."""
    counts: List[Dict[Ngram, int]] = [defaultdict(int) for _ in range(order)]
    for words in sentences:
        toks = [BOS] + list(words) + [EOS]
        for i in range(1, len(toks)):  # position of the predicted token (never <s>)
            for k in range(1, order + 1):
                if i - k + 1 < 0:
                    break
                counts[k - 1][tuple(toks[i - k + 1: i + 1])] += 1
    # The <s> unigram is only a history: give it its count so its bow can be stored.
    return [dict(c) for c in counts]


def _kn_counts(raw: List[Dict[Ngram, int]]) -> List[Dict[Ngram, int]]:
    """Counts used at each order for Kneser-Ney (raw at the top, continuation below)."""
    order = len(raw)
    out: List[Dict[Ngram, int]] = [dict() for _ in range(order)]
    out[order - 1] = dict(raw[order - 1])
    for k in range(order - 1, 0, -1):  # k = length of the lower-order n-gram
        cont: Dict[Ngram, int] = defaultdict(int)
        for ng in raw[k]:  # (k+1)-grams: each distinct left extension counts once
            cont[ng[1:]] += 1
        lower: Dict[Ngram, int] = {}
        for ng, c in raw[k - 1].items():
            lower[ng] = c if ng[0] == BOS else cont.get(ng, 0)
        out[k - 1] = {ng: c for ng, c in lower.items() if c > 0}
    return out


def _discount(counts: Dict[Ngram, int]) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2.0 * n2), 0.05), 0.95)


class NgramModel:
    """Back-off n-gram model: logprob tables (natural log) and back-off weights."""

    def __init__(self, order: int, probs: List[Dict[Ngram, float]], bows: List[Dict[Ngram, float]]):
        self.order = order
        self.probs = probs  # probs[k-1][ngram] = p (linear) of listed k-grams
        self.bows = bows  # bows[k-1][ngram] = back-off weight (linear) of listed k-grams

    @property
    def vocab(self) -> List[str]:
        """Predictable tokens: every unigram except <s> (</s> included)."""
        return [ng[0] for ng in self.probs[0] if ng[0] != BOS]

    def prob(self, word: str, history: Sequence[str] = ()) -> float:
        """p(word | history) by the ARPA back-off rule."""
        h = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        bow = 1.0
        while True:
            ng = h + (word,)
            p = self.probs[len(ng) - 1].get(ng)
            if p is not None:
                return bow * p
            if not h:
                return 0.0  # word outside the vocabulary
            bow *= self.bows[len(h) - 1].get(h, 1.0)
            h = h[1:]

    def sentence_logprob(self, words: Sequence[str]) -> float:
        toks = [BOS] + list(words) + [EOS]
        return sum(math.log(max(self.prob(toks[i], toks[max(0, i - self.order + 1): i]), 1e-300))
                   for i in range(1, len(toks)))

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        lp = sum(self.sentence_logprob(s) for s in sentences)
        n = sum(len(s) + 1 for s in sentences)
        return math.exp(-lp / max(n, 1))

    # ---------------------------------------------------------------- ARPA text
    def to_arpa(self) -> str:
        lines = ["", "\\data\\"]
        for k in range(self.order):
            lines.append(f"ngram {k + 1}={len(self.probs[k])}")
        for k in range(self.order):
            lines.append("")
            lines.append(f"\\{k + 1}-grams:")
            for ng in sorted(self.probs[k]):
                p = self.probs[k][ng]
                lp = -99.0 if p <= 0.0 else math.log10(p)
                line = f"{lp:.7f}\t{' '.join(ng)}"
                if k < self.order - 1 and ng in self.bows[k]:
                    b = self.bows[k][ng]
                    line += f"\t{(-99.0 if b <= 0.0 else math.log10(b)):.7f}"
                lines.append(line)
        lines += ["", "\\end\\", ""]
        return "\n".join(lines)

    def write_arpa(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_arpa())

    @classmethod
    def from_arpa(cls, text: str) -> "NgramModel":
        probs: List[Dict[Ngram, float]] = []
        bows: List[Dict[Ngram, float]] = []
        k = 0
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                k = int(line[1:line.index("-")])
                while len(probs) < k:
                    probs.append({})
                    bows.append({})
                continue
            if k == 0:
                continue
            parts = line.split()
            lp = float(parts[0])
            ng = tuple(parts[1:1 + k])
            probs[k - 1][ng] = 0.0 if lp <= -99.0 else 10.0 ** lp
            if len(parts) > 1 + k:
                bows[k - 1][ng] = 10.0 ** float(parts[1 + k])
        return cls(len(probs), probs, bows)

    @classmethod
    def load_arpa(cls, path: str) -> "NgramModel":
        with open(path, encoding="utf-8") as f:
            return cls.from_arpa(f.read())


def estimate(sentences: Iterable[Sequence[str]], order: int = 3, method: str = "kn",
             vocab: Optional[Iterable[str]] = None) -> NgramModel:
    """Estimate an interpolated n-gram model (see module doc) from tokenised sentences.

    vocab: extra words that must be in the model (e.g. every lexicon word); words of the text are
    always included.
    """
    if order < 1:
        raise ValueError("order must be >= 1")
    if method not in ("kn", "wb"):
        raise ValueError(f"unknown smoothing method {method!r} (kn|wb)")
    sentences = [list(s) for s in sentences]
    raw = _count_ngrams(sentences, order)
    used = _kn_counts(raw) if method == "kn" else raw
    words = {ng[0] for ng in raw[0]} | set(vocab or ())
    words.discard(BOS)
    words.add(EOS)
    V = sorted(words)

    probs: List[Dict[Ngram, float]] = [dict() for _ in range(order)]
    bows: List[Dict[Ngram, float]] = [dict() for _ in range(order)]
    for k in range(1, order + 1):
        cnt = used[k - 1]
        D = _discount(cnt) if method == "kn" else 0.0
        by_hist: Dict[Ngram, List[Tuple[str, int]]] = defaultdict(list)
        for ng, c in cnt.items():
            if ng[-1] == BOS:
                continue
            by_hist[ng[:-1]].append((ng[-1], c))
        for h, items in by_hist.items():
            A = float(sum(c for _, c in items))
            T = float(len(items))
            if method == "kn":
                gamma = D * T / A
                alphas = [(w, max(c - D, 0.0) / A) for w, c in items]
            else:
                gamma = T / (A + T)
                alphas = [(w, c / (A + T)) for w, c in items]
            if k > 1:
                bows[k - 2][h] = gamma
            for w, a in alphas:
                lower = 1.0 / len(V) if k == 1 else _lower_prob(probs, bows, h[1:], w)
                probs[k - 1][h + (w,)] = a + gamma * lower
            if k == 1:
                seen = {w for w, _ in items}
                for w in V:
                    if w not in seen:
                        probs[0][(w,)] = gamma / len(V)
    probs[0][(BOS,)] = 0.0
    if order > 1 and (BOS,) not in bows[0]:
        bows[0][(BOS,)] = 1.0
    # every history that a higher order lists must carry a bow (1.0 if it had no continuation)
    return NgramModel(order, probs, bows)


def _lower_prob(probs, bows, h: Ngram, w: str) -> float:
    """p(w | h) from the already-built lower orders, by back-off."""
    bow = 1.0
    while True:
        ng = h + (w,)
        p = probs[len(ng) - 1].get(ng)
        if p is not None:
            return bow * p
        if not h:
            raise KeyError(w)
        bow *= bows[len(h) - 1].get(h, 1.0)
        h = h[1:]


def estimate_arpa(sentences: Iterable[Sequence[str]], order: int = 3, method: str = "kn",
                  vocab: Optional[Iterable[str]] = None) -> str:
    """ARPA text of `estimate(...)`."""
    return estimate(sentences, order, method, vocab).to_arpa()


def text_to_arpa(text_path: str, arpa_path: str, order: int = 3, method: str = "kn",
                 vocab: Optional[Iterable[str]] = None) -> NgramModel:
    """Training text (one sentence a line) -> ARPA file. Returns the model."""
    lm = estimate(read_sentences(text_path), order, method, vocab)
    lm.write_arpa(arpa_path)
    return lm
