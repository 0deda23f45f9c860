"""The n best distinct word sequences of a raw lattice, each with its acoustic and graph cost.

kaldi-decoder's ``LatticeSimpleDecoder`` gives only the raw, state-level lattice
(``decoding.decoder.raw_lattice``): one path per alignment, input label = pdf + 1, output label = word
id (0 = epsilon), and per arc a ``LatticeWeight`` pair ``(graph, acoustic)``:

* ``graph``: the HCLG cost of the arc (n-gram LM of G plus the lexicon's silence and pronunciation
  costs; natural-log units, ``-ln p``);
* ``acoustic``: the negated network output of the frame, already multiplied by the acoustic scale
  (``-acoustic_scale * y(t, pdf)``).

A path's cost is ``graph + acoustic``, the quantity the decoder minimises. Many paths carry the same
words (different alignments, silences, pronunciations), so the n best paths are not an n-best list of
hypotheses. Here a hypothesis is a distinct word sequence and its costs are those of its best
alignment (the path of minimal ``graph + acoustic`` among the paths that carry those words):

1. ``Lattice.to_str()`` is parsed into arcs ``(src, dst, word, graph, acoustic)`` and final weights
   (kaldifst's algorithms and iterators do not accept a ``Lattice``; ``to_str`` prints weights with 6
   significant digits, so costs are the lattice's to about 1e-5 relative per arc).
2. A word acceptor (``StdVectorFst``, weight ``graph + acoustic`` per arc, epsilon where the arc has no
   scored word) is epsilon-removed, determinized (tropical semiring: one path per word sequence, with
   the cost of its best alignment) and searched with ``shortest_path(n)``.
3. For each hypothesis, a transducer (input label = arc index + 1, output label = word) is composed
   with the hypothesis's linear acceptor; the shortest path of the composition names the arcs of the
   best alignment, whose ``graph`` and ``acoustic`` values (plus the final weight of its last state)
   are summed in double precision.

Words that ``DecodingGraph.ids_to_words`` drops (``#0``, ``<s>``, ``</s>``, ``<...>``, ``[...]``,
``!...``) are treated as epsilon, so hypotheses are distinct in their scored words.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .decoder import raw_lattice
from .graph import _fst_from_arcs, _non_scored

Arc = Tuple[int, int, int, float, float]  # (src, dst, word id, graph cost, acoustic cost)


@dataclass
class Hypothesis:
    """One distinct word sequence of a lattice.

    words       the scored words (``DecodingGraph.ids_to_words`` of the best alignment's labels)
    word_ids    their ids in the graph's ``words.txt``
    acoustic    acoustic cost of the best alignment: ``-acoustic_scale * sum_t y(t, pdf_t)``
    graph       graph cost of the best alignment: HCLG's n-gram, silence and pronunciation costs
                (``-ln p``), final weight included
    Both in natural-log units; ``total = acoustic + graph`` is the decoder's objective (lower is
    better).
    """

    words: List[str]
    word_ids: List[int]
    acoustic: float
    graph: float

    @property
    def total(self) -> float:
        return self.acoustic + self.graph


@dataclass
class ParsedLattice:
    """A raw lattice as plain Python data (from ``Lattice.to_str()``)."""

    start: int
    num_states: int
    arcs: List[Arc]
    finals: Dict[int, Tuple[float, float]] = field(default_factory=dict)  # state -> (graph, acoustic)


def _weight(text: Optional[str]) -> Tuple[float, float]:
    if text is None:
        return 0.0, 0.0
    g, a = text.split(",")
    return float(g), float(a)


def parse_lattice(lattice) -> ParsedLattice:
    """Arcs ``(src, dst, word, graph, acoustic)`` and final weights of a ``kaldifst.Lattice``.

    ``to_str`` prints an arc as ``src dst ilabel olabel [graph,acoustic]`` and a final state as
    ``state [graph,acoustic]`` (a weight of zero cost is omitted)."""
    arcs: List[Arc] = []
    finals: Dict[int, Tuple[float, float]] = {}
    n = lattice.num_states
    if n == 0:
        return ParsedLattice(-1, 0, [], {})
    for line in lattice.to_str().splitlines():
        f = line.split()
        if not f:
            continue
        if len(f) in (4, 5):
            g, a = _weight(f[4] if len(f) == 5 else None)
            arcs.append((int(f[0]), int(f[1]), int(f[3]), g, a))
        elif len(f) in (1, 2):
            finals[int(f[0])] = _weight(f[1] if len(f) == 2 else None)
        else:
            raise ValueError(f"unexpected lattice line {line!r}")
    return ParsedLattice(int(lattice.start), n, arcs, finals)


def _scored_labels(words: Sequence[str]) -> List[int]:
    """Word id -> the label used for word sequences (0 for epsilon and non-scored tokens)."""
    return [0 if i == 0 or _non_scored(w) else i for i, w in enumerate(words)]


def _fst(num_states: int, start: int, arcs, finals: Dict[int, float]):
    return _fst_from_arcs(arcs, finals, num_states, start)


def nbest_from_parsed(lat: ParsedLattice, words: Sequence[str], n: int = 10) -> List[Hypothesis]:
    """The ``n`` best distinct word sequences of a parsed lattice, best (lowest ``total``) first.

    ``words``: the graph's symbol table (id -> word)."""
    import kaldifst

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if lat.num_states == 0 or not lat.finals:
        return []
    label = _scored_labels(words)
    finals = {s: g + a for s, (g, a) in lat.finals.items()}
    # 2. word acceptor -> distinct word sequences
    acc = _fst(lat.num_states, lat.start,
               ((s, d, label[w], label[w], g + a) for s, d, w, g, a in lat.arcs), finals)
    kaldifst.rmepsilon(acc)
    det = kaldifst.determinize(acc)
    best = kaldifst.shortest_path(det, n=n)
    seqs = []
    for path in kaldifst.convert_nbest_to_vector(best):
        ok, _i, olabels, _w = kaldifst.get_linear_symbol_sequence(path)
        if not ok:
            raise RuntimeError("an n-best path is not linear")
        seqs.append([int(x) for x in olabels if x != 0])
    # 3. split each hypothesis's cost: the arcs of its best alignment
    trans = _fst(lat.num_states, lat.start,
                 ((s, d, k + 1, label[w], g + a) for k, (s, d, w, g, a) in enumerate(lat.arcs)), finals)
    kaldifst.arcsort(trans, sort_type="olabel")
    hyps = []
    for seq in seqs:
        lin = _fst(len(seq) + 1, 0, ((k, k + 1, x, x, 0.0) for k, x in enumerate(seq)), {len(seq): 0.0})
        path = kaldifst.shortest_path(kaldifst.compose(trans, lin))
        ok, ilabels, _o, _w = kaldifst.get_linear_symbol_sequence(path)
        if not ok:
            raise RuntimeError("the best alignment of an n-best hypothesis is not linear")
        state, graph, acoustic = lat.start, 0.0, 0.0
        for k in ilabels:
            s, d, _w, g, a = lat.arcs[int(k) - 1]
            if s != state:
                raise RuntimeError("the arcs of a best alignment do not form a path")
            graph += g
            acoustic += a
            state = d
        fg, fa = lat.finals[state]
        ids = [int(k) for k in seq]
        hyps.append(Hypothesis([words[i] for i in ids], ids, acoustic + fa, graph + fg))
    # shortest_path(n) lists its paths in no guaranteed order
    hyps.sort(key=lambda h: (h.total, h.word_ids))
    return hyps


def lattice_nbest(lattice, words: Sequence[str], n: int = 10) -> List[Hypothesis]:
    """The ``n`` best distinct word sequences of a raw ``kaldifst.Lattice`` (see the module doc),
    best first; ``[]`` for an empty lattice (decoding failed). ``words``: ``DecodingGraph.words``."""
    return nbest_from_parsed(parse_lattice(lattice), words, n)


def nbest_outputs(outputs, graph, n: int = 10, config=None, progress: bool = True
                  ) -> Dict[str, List[Hypothesis]]:
    """{utterance id: n-best list} for network outputs ({id: [T, num_pdfs]}), decoded with ``graph``
    (``decoding.decoder.raw_lattice`` with ``config``: acoustic scale, beam, lattice beam)."""
    from tqdm import tqdm

    out = {}
    for uid in tqdm(list(outputs), desc="n-best", disable=not progress, leave=False):
        m = outputs[uid]
        out[uid] = [] if len(m) == 0 else lattice_nbest(raw_lattice(m, graph, config), graph.words, n)
    return out
