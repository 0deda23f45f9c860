"""Lang preparation for LF-MMI: chain topology, phone n-gram LM, denominator graph, numerator graphs.

Chain topology (docs/INTERFACES.md): phone index k has one HMM state and two pdfs, entry pdf 2k and
self-loop pdf 2k + 1; a phone lasting n >= 1 frames emits 2k once then 2k + 1 (n - 1) times.

Works with any lexicon object that has ``.phones`` (list, SIL first) and ``.pronunciations(word)``
(list of phone tuples), e.g. ``lang.lexicon.Lexicon``; :class:`DictLexicon` is a minimal stand-in.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .fsa import Fsa

__all__ = [
    "DictLexicon",
    "PhoneLM",
    "DenGraph",
    "NumeratorCompiler",
    "build_den_graph",
    "den_graph_from_phone_lm",
    "estimate_phone_lm",
    "transcripts_to_phone_seqs",
    "compute_initial_probs",
    "compose_with_den",
    "minimize_acceptor",
    "entry_pdf",
    "selfloop_pdf",
]

BOS = -1  # history marker for "sentence start"


def entry_pdf(phone_index: int) -> int:
    return 2 * phone_index


def selfloop_pdf(phone_index: int) -> int:
    return 2 * phone_index + 1


class DictLexicon:
    """Minimal Lexicon-protocol object: ``{word: [phone tuple, ...]}``; phones = SIL + sorted rest."""

    silence_phone = "SIL"

    def __init__(self, prons: Dict[str, List[Tuple[str, ...]]], phones: Optional[List[str]] = None) -> None:
        self._prons = {w: [tuple(p) for p in ps] for w, ps in prons.items()}
        if phones is None:
            rest = sorted({ph for ps in self._prons.values() for p in ps for ph in p} - {"SIL"})
            phones = ["SIL"] + rest
        self.phones = list(phones)

    def pronunciations(self, word: str) -> List[Tuple[str, ...]]:
        return self._prons[word]

    @classmethod
    def load(cls, path) -> "DictLexicon":
        """Kaldi lexicon.txt: ``WORD PH1 PH2 ...`` one pronunciation a line (a word may repeat)."""
        prons: Dict[str, List[Tuple[str, ...]]] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if parts:
                    prons.setdefault(parts[0], []).append(tuple(parts[1:]))
        return cls(prons)


def _phone_index(lexicon) -> Dict[str, int]:
    return {p: i for i, p in enumerate(lexicon.phones)}


def _silence_phone(lexicon) -> str:
    return getattr(lexicon, "silence_phone", lexicon.phones[0])


# ---------------------------------------------------------------------------------------- phone LM
class PhoneLM:
    """An n-gram phone LM as a deterministic automaton (no back-off arcs).

    ``states[i]`` is a history tuple (phone indices, possibly starting with BOS=-1); ``arcs`` are
    (src_state, phone, dst_state, prob); ``final_prob[i]`` is P(</s> | history).
    """

    def __init__(self, order: int, states: List[Tuple[int, ...]], arcs: List[Tuple[int, int, int, float]],
                 final_prob: List[float], start: int) -> None:
        self.order = order
        self.states = states
        self.arcs = arcs
        self.final_prob = final_prob
        self.start = start

    @property
    def num_states(self) -> int:
        return len(self.states)

    def log_prob(self, phones: Sequence[int]) -> float:
        """log P(phones </s>) under the LM (-inf if unseen)."""
        table = {(s, p): (d, pr) for s, p, d, pr in self.arcs}
        s = self.start
        lp = 0.0
        for p in phones:
            if (s, p) not in table:
                return -math.inf
            s, pr = table[(s, p)]
            lp += math.log(pr)
        f = self.final_prob[s]
        return lp + (math.log(f) if f > 0 else -math.inf)


def estimate_phone_lm(phone_seqs: Iterable[Sequence[int]], order: int = 3,
                      num_extra_states: Optional[int] = None,
                      weights: Optional[Iterable[float]] = None) -> PhoneLM:
    """Maximum-likelihood phone n-gram without smoothing (in the spirit of Kaldi's chain-est-phone-lm).

    Every history of length < order - 1 (the lower orders) is kept unpruned. Histories of full length
    order - 1 are kept too, unless ``num_extra_states`` is given, in which case only that many of the
    most frequent ones are kept; a pruned history's counts are merged into its back-off (its longest
    kept suffix). A transition from history h with phone p goes to the longest kept suffix of h + p.
    No probability mass is given to unseen n-grams.
    """
    if order < 1:
        raise ValueError("order must be >= 1")
    hist_len = order - 1
    counts: Dict[Tuple[int, ...], Dict[int, float]] = defaultdict(lambda: defaultdict(float))
    EOS = -2
    seqs = list(phone_seqs)
    ws = [1.0] * len(seqs) if weights is None else list(weights)
    for seq, w in zip(seqs, ws):
        hist: Tuple[int, ...] = (BOS,)
        for p in list(seq) + [EOS]:
            h = hist[-hist_len:] if hist_len > 0 else ()
            counts[h][int(p)] += w
            hist = hist + (int(p),)
    # pruning of the highest order
    full = [h for h in counts if hist_len > 0 and len(h) == hist_len and h[0] != BOS]
    if num_extra_states is not None and len(full) > num_extra_states:
        full.sort(key=lambda h: (-sum(counts[h].values()), h))
        for h in full[num_extra_states:]:
            c = counts.pop(h)
            b = h[1:]  # back-off state (created if needed: lower orders are always kept)
            for p, v in c.items():
                counts[b][p] += v
    if hist_len == 0:
        counts.setdefault((), defaultdict(float))
    state_list = sorted(counts.keys(), key=lambda h: (len(h), h))
    index = {h: i for i, h in enumerate(state_list)}

    def dest(h: Tuple[int, ...]) -> int:
        while h not in index:
            h = h[1:]
        return index[h]

    arcs: List[Tuple[int, int, int, float]] = []
    final_prob = [0.0] * len(state_list)
    for h in state_list:
        c = counts[h]
        tot = sum(c.values())
        for p in sorted(c):
            pr = c[p] / tot
            if p == EOS:
                final_prob[index[h]] = pr
            else:
                nh = (h + (p,))[-hist_len:] if hist_len > 0 else ()
                arcs.append((index[h], p, dest(nh), pr))
    start_hist = (BOS,) if hist_len > 0 else ()
    return PhoneLM(order, state_list, arcs, final_prob, index[start_hist])


def transcripts_to_phone_seqs(lexicon, transcripts: Iterable[str], sil_prob: float = 0.5
                              ) -> Tuple[List[List[int]], List[float]]:
    """Phone-index sequences for LM estimation, with weights.

    Each transcript gives (first pronunciation of each word) two weighted sequences: silence at both
    ends and between every pair of words (weight ``sil_prob``), and silence only at the ends (weight
    ``1 - sil_prob``), so the LM sees both word-boundary variants the numerator allows.
    """
    idx = _phone_index(lexicon)
    sil = idx[_silence_phone(lexicon)]
    seqs: List[List[int]] = []
    ws: List[float] = []
    for text in transcripts:
        words = text.split()
        if not words:
            continue
        prons = [[idx[p] for p in lexicon.pronunciations(w)[0]] for w in words]
        with_sil = [sil]
        without = [sil]
        for i, pr in enumerate(prons):
            with_sil += pr
            without += pr
            if i + 1 < len(prons):
                with_sil.append(sil)
        with_sil.append(sil)
        without.append(sil)
        if sil_prob > 0:
            seqs.append(with_sil)
            ws.append(sil_prob)
        if sil_prob < 1:
            seqs.append(without)
            ws.append(1.0 - sil_prob)
    return seqs, ws


# -------------------------------------------------------------------------------------- den graph
def compute_initial_probs(num_states: int, src: np.ndarray, dst: np.ndarray, logw: np.ndarray,
                          start: int, final_logw: Optional[np.ndarray] = None,
                          iters: int = 100) -> np.ndarray:
    """Kaldi's DenominatorGraph::SetInitialProbs.

    Normalise each state's out-going mass (arcs plus final prob), put all mass on the start state,
    propagate ``iters`` times (the final-prob share leaves the HMM; renormalise the rest each time),
    and average the iterates.
    """
    w = np.exp(logw)
    fin = np.zeros(num_states) if final_logw is None else np.where(np.isfinite(final_logw), np.exp(final_logw), 0.0)
    out = np.zeros(num_states)
    np.add.at(out, src, w)
    out = out + fin
    out_safe = np.where(out > 0, out, 1.0)
    p = w / out_safe[src]
    cur = np.zeros(num_states)
    cur[start] = 1.0
    avg = np.zeros(num_states)
    for _ in range(iters):
        nxt = np.zeros(num_states)
        np.add.at(nxt, dst, cur[src] * p)
        tot = nxt.sum()
        if tot <= 0:
            raise ValueError("compute_initial_probs: probability mass vanished (dead-end graph)")
        cur = nxt / tot
        avg += cur
    return avg / iters


class DenGraph:
    """Denominator graph: arcs (src, dst, pdf, log p), per-state initial probs; all states final (prob 1).

    Holds numpy arrays; :meth:`tensors` returns (and caches) torch tensors per device and dtype.
    """

    def __init__(self, fsa: Fsa, num_pdfs: int, init: Optional[np.ndarray] = None, init_mode: str = "kaldi",
                 lm_final_logw: Optional[np.ndarray] = None) -> None:
        self.fsa = fsa
        self.num_pdfs = int(num_pdfs)
        if fsa.max_label() >= self.num_pdfs:
            raise ValueError("DenGraph: pdf id >= num_pdfs")
        if init is None:
            if init_mode == "kaldi":
                init = compute_initial_probs(fsa.num_states, fsa.src, fsa.dst, fsa.logw, fsa.start, lm_final_logw)
            elif init_mode == "start":
                init = np.zeros(fsa.num_states)
                init[fsa.start] = 1.0
            else:
                raise ValueError(f"unknown init_mode {init_mode!r}")
        self.init = np.asarray(init, dtype=np.float64)
        if abs(self.init.sum() - 1.0) > 1e-6:
            raise ValueError("DenGraph: initial probs must sum to 1")
        self._cache: Dict[Tuple[str, str, bool], Dict[str, object]] = {}
        self.use_structure = True  # chain-structured fast path in the torch backend (same results)

    @property
    def num_states(self) -> int:
        return self.fsa.num_states

    @property
    def num_arcs(self) -> int:
        return self.fsa.num_arcs

    def save(self, path) -> None:
        """Writes an ``.npz`` (arcs, start, initial probs, num_pdfs)."""
        f = self.fsa
        np.savez(path, num_states=f.num_states, src=f.src, dst=f.dst, label=f.label, logw=f.logw,
                 start=f.start, init=self.init, num_pdfs=self.num_pdfs)

    @classmethod
    def load(cls, path) -> "DenGraph":
        z = np.load(path)
        fsa = Fsa(int(z["num_states"]), z["src"], z["dst"], z["label"], z["logw"], start=int(z["start"]))
        return cls(fsa, int(z["num_pdfs"]), init=z["init"])

    def with_init(self, mode_or_probs) -> "DenGraph":
        """A DenGraph on the same arcs with other initial probs ('start', 'kaldi' or an array)."""
        if isinstance(mode_or_probs, str):
            return DenGraph(self.fsa, self.num_pdfs, init_mode=mode_or_probs)
        return DenGraph(self.fsa, self.num_pdfs, init=np.asarray(mode_or_probs))

    def chain_structure(self) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """If every state's incoming non-self-loop arcs share one pdf and each state has at most one
        self-loop (true of chain-topology den graphs), returns per-state (entry_pdf, loop_pdf, loop_prob)
        (pdf 0 / prob 0 where a state has none); else None."""
        f = self.fsa
        S = f.num_states
        selfarc = f.src == f.dst
        entry_pdf = np.full(S, -1, dtype=np.int64)
        ok = True
        d, l_ = f.dst[~selfarc], f.label[~selfarc]
        entry_pdf[d] = l_
        if np.any(entry_pdf[d] != l_):
            ok = False
        # an arc i -> i with the entry pdf (phone k followed by phone k) is an entry arc too
        loop = selfarc & (f.label != entry_pdf[f.dst])
        loop_pdf = np.zeros(S, dtype=np.int64)
        loop_prob = np.zeros(S)
        ls = f.src[loop]
        if len(np.unique(ls)) != len(ls):
            ok = False
        loop_pdf[ls] = f.label[loop]
        loop_prob[ls] = np.exp(f.logw[loop])
        if not ok:
            return None
        return entry_pdf, loop_pdf, loop_prob

    def tensors(self, device, dtype) -> Dict[str, object]:
        """Torch tensors for the backends (cached per device and dtype). With ``use_structure`` (default)
        and a chain-structured graph, also sparse CSR matrices of the entry arcs for the fast path."""
        import torch

        key = (str(device), str(dtype), bool(self.use_structure))
        t = self._cache.get(key)
        if t is None:
            f = self.fsa
            t = {
                "src": torch.as_tensor(f.src, device=device),
                "dst": torch.as_tensor(f.dst, device=device),
                "pdf": torch.as_tensor(f.label, device=device),
                "prob": torch.as_tensor(np.exp(f.logw), dtype=dtype, device=device),
                "init": torch.as_tensor(self.init, dtype=dtype, device=device),
            }
            st = self.chain_structure() if self.use_structure else None
            if st is not None:
                import warnings

                entry_pdf, loop_pdf, loop_prob = st
                loop = (f.src == f.dst) & (f.label != entry_pdf[f.dst])
                S = f.num_states
                idx = torch.as_tensor(np.stack([f.dst[~loop], f.src[~loop]]))
                val = torch.as_tensor(np.exp(f.logw[~loop]), dtype=dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "sparse CSR is beta" (torch 1.13 .. 2.x)
                    try:
                        Pt = torch.sparse_coo_tensor(idx, val, (S, S)).coalesce()
                        P = torch.sparse_coo_tensor(idx.flip(0), val, (S, S)).coalesce()
                        t["Pt"] = Pt.to_sparse_csr().to(device)
                        t["P"] = P.to_sparse_csr().to(device)
                        t["entry_pdf"] = torch.as_tensor(np.maximum(entry_pdf, 0), device=device)
                        t["loop_pdf"] = torch.as_tensor(loop_pdf, device=device)
                        t["loop_prob"] = torch.as_tensor(loop_prob, dtype=dtype, device=device).unsqueeze(1)
                    except (RuntimeError, NotImplementedError):  # pragma: no cover - no CSR support
                        t.pop("Pt", None)
                        t.pop("P", None)
            self._cache[key] = t
        return t

    def __repr__(self) -> str:
        return f"DenGraph(states={self.num_states}, arcs={self.num_arcs}, pdfs={self.num_pdfs})"


def minimize_acceptor(fsa: Fsa, final_logw: np.ndarray, digits: int = 5) -> Tuple[Fsa, np.ndarray]:
    """Minimise a deterministic weighted acceptor without weight pushing (Kaldi MinimizeAcceptorNoPush:
    (label, weight) pairs encoded as symbols, weights quantised to ``digits`` decimals), by Moore
    partition refinement. Returns the quotient Fsa (same ``final`` convention) and its final_logw."""
    n = fsa.num_states
    q = np.round(fsa.logw, digits)
    qf = np.round(np.where(np.isfinite(final_logw), final_logw, -1e30), digits)
    out: List[List[int]] = [[] for _ in range(n)]
    for e, s_ in enumerate(fsa.src.tolist()):
        out[s_].append(e)
    lab = fsa.label.tolist()
    dst = fsa.dst.tolist()
    qw = q.tolist()
    fin0 = np.round(np.where(np.isfinite(fsa.final), fsa.final, -1e30), digits).tolist()
    keys = [(fin0[s_], qf[s_]) for s_ in range(n)]
    ids: Dict[object, int] = {}
    block = [ids.setdefault(k, len(ids)) for k in keys]
    nblocks = len(ids)
    while True:
        ids = {}
        new_block = []
        for s_ in range(n):
            sig = (block[s_], tuple(sorted((lab[e], qw[e], block[dst[e]]) for e in out[s_])))
            new_block.append(ids.setdefault(sig, len(ids)))
        block = new_block
        if len(ids) == nblocks:
            break
        nblocks = len(ids)
    rep = {}
    for s_ in range(n):
        rep.setdefault(block[s_], s_)
    b = np.asarray(block)
    keep = np.array([rep[block[s_]] == s_ for s_ in fsa.src.tolist()], dtype=bool)
    m = Fsa(nblocks, b[fsa.src[keep]], b[fsa.dst[keep]], fsa.label[keep], fsa.logw[keep], start=int(b[fsa.start]),
            final=np.array([fsa.final[rep[k]] for k in range(nblocks)]))
    return m, np.array([final_logw[rep[k]] for k in range(nblocks)])


def den_graph_from_phone_lm(lm: PhoneLM, num_phones: int, init_mode: str = "kaldi",
                            minimize: bool = True) -> DenGraph:
    """Compose the phone LM with the chain topology.

    Each LM state whose history ends in phone k is "inside phone k": it gets a self-loop (pdf 2k+1,
    prob 1). Each LM arc h --k--> h' becomes an entry arc h -> h' with pdf 2k and the LM probability.
    The BOS state (start) has no self-loop. All states are final (prob 1) for training; the LM's
    end-of-sentence mass only enters the initial-probability computation (as Kaldi's final-probs).
    """
    if lm.order < 2:
        raise ValueError("the den graph needs a phone LM of order >= 2 (the state must know its phone)")
    src, dst, pdf, lw = [], [], [], []
    for s, p, d, pr in lm.arcs:
        src.append(s)
        dst.append(d)
        pdf.append(entry_pdf(p))
        lw.append(math.log(pr))
    for i, h in enumerate(lm.states):
        if len(h) > 0 and h[-1] != BOS:
            src.append(i)
            dst.append(i)
            pdf.append(selfloop_pdf(h[-1]))
            lw.append(0.0)
    n = lm.num_states
    fsa = Fsa(n, src, dst, pdf, lw, start=lm.start, final=np.zeros(n))
    lm_final = np.array([math.log(f) if f > 0 else -np.inf for f in lm.final_prob])
    if minimize:
        fsa, lm_final = minimize_acceptor(fsa, lm_final)
    return DenGraph(fsa, 2 * num_phones, init_mode=init_mode, lm_final_logw=lm_final)


def build_den_graph(lexicon, transcripts: Iterable[str], order: int = 3, sil_prob: float = 0.5,
                    num_extra_states: Optional[int] = None, init_mode: str = "kaldi",
                    minimize: bool = True) -> DenGraph:
    """Phone n-gram (``order``) from the transcripts' phone sequences, composed with the chain topology,
    minimised as Kaldi's den FST (same weighted language, fewer states)."""
    seqs, ws = transcripts_to_phone_seqs(lexicon, transcripts, sil_prob)
    lm = estimate_phone_lm(seqs, order=order, num_extra_states=num_extra_states, weights=ws)
    return den_graph_from_phone_lm(lm, len(lexicon.phones), init_mode=init_mode, minimize=minimize)


# ------------------------------------------------------------------------------------ num graphs
class NumeratorCompiler:
    """Per-utterance numerator graphs over pdf ids from transcripts (no alignments needed).

    Graph = chain topology o lexicon (every pronunciation, prob 1 each) o transcript, with optional
    silence (probability ``sil_prob``) at both ends and between words. States: the start state plus
    one state per phone occurrence (with its self-loop); arcs into a phone state carry its entry pdf.

    With ``den_graph`` (a phone-LM den graph from :func:`den_graph_from_phone_lm`), each graph is also
    composed with it, as Kaldi composes the supervision with its normalization FST: paths get the
    phone-LM weights and the den initial probs, paths the den graph cannot produce are dropped, and
    log Z_num <= log Z_den (eta = 0), so the objective is <= 0. A transcript whose phone sequence the
    LM never saw may then become infeasible (skipped by the loss): use it with the LM's own text.
    """

    def __init__(self, lexicon, sil_prob: float = 0.5, den_graph: Optional["DenGraph"] = None) -> None:
        if not (0.0 <= sil_prob < 1.0):
            raise ValueError("sil_prob must be in [0, 1)")
        self.lexicon = lexicon
        self.sil_prob = sil_prob
        self.den_graph = den_graph
        self.phone_index = _phone_index(lexicon)
        self.sil = self.phone_index[_silence_phone(lexicon)]

    def compile_one(self, text: str) -> Fsa:
        src: List[int] = []
        dst: List[int] = []
        pdf: List[int] = []
        lw: List[float] = []
        phone_of: List[int] = [-1]  # state 0 = start (no phone)

        def new_state(ph: int) -> int:
            phone_of.append(ph)
            return len(phone_of) - 1

        def enter(frontier: List[Tuple[int, float]], ph: int) -> int:
            s = new_state(ph)
            for u, w in frontier:
                src.append(u)
                dst.append(s)
                pdf.append(entry_pdf(ph))
                lw.append(w)
            return s

        lsil = math.log(self.sil_prob) if self.sil_prob > 0 else -math.inf
        lnosil = math.log(1.0 - self.sil_prob)

        def opt_sil(frontier: List[Tuple[int, float]]) -> List[Tuple[int, float]]:
            if self.sil_prob <= 0:
                return frontier
            s = enter([(u, w + lsil) for u, w in frontier], self.sil)
            return [(u, w + lnosil) for u, w in frontier] + [(s, 0.0)]

        frontier: List[Tuple[int, float]] = [(0, 0.0)]
        words = text.split()
        frontier = opt_sil(frontier)
        for i, word in enumerate(words):
            prons = self.lexicon.pronunciations(word)
            new_frontier: List[Tuple[int, float]] = []
            seen = set()
            for pron in prons:
                pron = tuple(pron)
                if pron in seen or len(pron) == 0:
                    continue
                seen.add(pron)
                f = frontier
                s = -1
                for ph in pron:
                    s = enter(f, self.phone_index[ph])
                    f = [(s, 0.0)]
                new_frontier.append((s, 0.0))
            if not new_frontier:
                raise ValueError(f"word {word!r} has no non-empty pronunciation")
            frontier = new_frontier
            if i + 1 < len(words):
                frontier = opt_sil(frontier)
        frontier = opt_sil(frontier)
        n = len(phone_of)
        for s in range(1, n):
            src.append(s)
            dst.append(s)
            pdf.append(selfloop_pdf(phone_of[s]))
            lw.append(0.0)
        final = np.full(n, -np.inf)
        for u, w in frontier:
            final[u] = np.logaddexp(final[u], w)
        fsa = Fsa(n, src, dst, pdf, lw, start=0, final=final)
        if self.den_graph is not None:
            fsa = compose_with_den(fsa, self.den_graph)
        return fsa

    def compile(self, texts: Sequence[str]) -> List[Fsa]:
        if hasattr(self.lexicon, "check"):
            words = sorted({w for t in texts for w in t.split()})
            self.lexicon.check(words)  # raises OOVError listing all missing words
        return [self.compile_one(t) for t in texts]


def compose_with_den(num: Fsa, den: "DenGraph") -> Fsa:
    """Intersect a chain-topology numerator graph with a phone-LM den graph (pdf-level acceptors).

    The den graph must be deterministic on entry pdfs (one arc per (state, entry pdf), as built by
    :func:`den_graph_from_phone_lm`); self-loops (odd pdfs, weight 0 in both) stay on every product
    state. The product starts in every den state j with weight log init(j); den states are all final.
    """
    d = den.fsa
    table: Dict[Tuple[int, int], Tuple[int, float]] = {}
    for s_, t_, l_, w_ in zip(d.src.tolist(), d.dst.tolist(), d.label.tolist(), d.logw.tolist()):
        if l_ % 2 == 1:
            continue
        if (s_, l_) in table:
            raise ValueError("compose_with_den: den graph is not deterministic on entry pdfs")
        table[(s_, l_)] = (t_, w_)
    out_arcs: Dict[int, List[Tuple[int, int, float]]] = defaultdict(list)
    loop_pdf: Dict[int, int] = {}
    for s_, t_, l_, w_ in zip(num.src.tolist(), num.dst.tolist(), num.label.tolist(), num.logw.tolist()):
        if s_ == t_:
            loop_pdf[s_] = l_
        else:
            out_arcs[s_].append((t_, l_, w_))
    init_states = [(j, math.log(p)) for j, p in enumerate(den.init.tolist()) if p > 0]
    index: Dict[Tuple[int, int], int] = {}
    arcs: Dict[Tuple[int, int, int], float] = {}
    queue: List[Tuple[int, int]] = []

    def state(key: Tuple[int, int]) -> int:
        if key not in index:
            index[key] = len(index) + 1  # 0 is the product start
            queue.append(key)
        return index[key]

    def add(u: int, v: int, l_: int, w_: float) -> None:
        k = (u, v, l_)
        arcs[k] = float(np.logaddexp(arcs[k], w_)) if k in arcs else w_

    for (v, l_, w_) in out_arcs.get(num.start, []):
        for j, lj in init_states:
            hit = table.get((j, l_))
            if hit is not None:
                add(0, state((v, hit[0])), l_, w_ + lj + hit[1])
    while queue:
        u, h = queue.pop()
        su = index[(u, h)]
        for (v, l_, w_) in out_arcs.get(u, []):
            hit = table.get((h, l_))
            if hit is not None:
                add(su, state((v, hit[0])), l_, w_ + hit[1])
    n = len(index) + 1
    src = [k[0] for k in arcs]
    dst = [k[1] for k in arcs]
    lab = [k[2] for k in arcs]
    lw = list(arcs.values())
    final = np.full(n, -np.inf)
    final[0] = num.final[num.start]
    for (u, h), su in index.items():
        if u in loop_pdf:
            src.append(su)
            dst.append(su)
            lab.append(loop_pdf[u])
            lw.append(0.0)
        final[su] = num.final[u]
    return Fsa(n, src, dst, lab, lw, start=0, final=final)
