"""n best distinct word sequences of a raw lattice, checked against enumerating every path."""
import math

import numpy as np
import pytest

from decoding.decoder import DecoderConfig, decode_matrix, raw_lattice
from decoding.graph import get_graph
from decoding.nbest import Hypothesis, ParsedLattice, lattice_nbest, nbest_from_parsed, nbest_outputs, \
    parse_lattice
from tests.test_decoding_graph import LEX, TEXT, TinyLexicon, loglikes


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("g")
    (d / "text").write_text(TEXT)
    return get_graph(TinyLexicon(LEX), d / "cache", lm_text=d / "text", order=3)


def ambiguous_matrix(floor=-1.0, frames=2, seed=0):
    """Weak acoustics for "BE A SEE" plus noise: many word sequences survive a small lattice beam."""
    m = loglikes(TinyLexicon(LEX), ["B", "IY", "AH", "S", "IY"], floor=floor, frames=frames)
    return m + np.random.default_rng(seed).uniform(-0.5, 0, size=m.shape).astype(np.float32)


def brute_force(lat: ParsedLattice, words, n):
    """Every path of the lattice; per scored word sequence its cheapest path's (graph, acoustic)."""
    skip = {i for i, w in enumerate(words) if i == 0 or w in ("#0", "<s>", "</s>")}
    out_arcs = {}
    for arc in lat.arcs:
        out_arcs.setdefault(arc[0], []).append(arc)
    best, paths = {}, 0

    def walk(s, seq, g, a, depth):
        nonlocal paths
        assert depth <= lat.num_states, "cycle"
        if s in lat.finals:
            paths += 1
            fg, fa = lat.finals[s]
            g2, a2 = g + fg, a + fa
            if seq not in best or g2 + a2 < sum(best[seq]):
                best[seq] = (g2, a2)
        for _s, d, w, ag, aa in out_arcs.get(s, ()):
            walk(d, seq if w in skip else seq + (w,), g + ag, a + aa, depth + 1)

    walk(lat.start, (), 0.0, 0.0, 0)
    ranked = sorted(best.items(), key=lambda kv: sum(kv[1]))[:n]
    return [(list(seq), g, a) for seq, (g, a) in ranked], paths


@pytest.mark.parametrize("floor,frames,lattice_beam,scale", [(-1.0, 2, 4.0, 1.0), (-1.0, 1, 8.0, 1.0),
                                                            (-2.0, 1, 6.0, 0.7)])
def test_nbest_equals_enumeration_of_all_paths(graph, floor, frames, lattice_beam, scale):
    m = ambiguous_matrix(floor, frames)
    cfg = DecoderConfig(acoustic_scale=scale, lattice_beam=lattice_beam)
    parsed = parse_lattice(raw_lattice(m, graph, cfg))
    ref, paths = brute_force(parsed, graph.words, 30)
    assert paths > 100 and len(ref) >= 5  # the case is not trivial
    got = nbest_from_parsed(parsed, graph.words, 30)
    assert [h.word_ids for h in got] == [r[0] for r in ref]
    assert len({tuple(h.words) for h in got}) == len(got)
    for h, (_seq, g, a) in zip(got, ref):
        assert h.words == graph.ids_to_words(h.word_ids)
        assert h.graph == pytest.approx(g, abs=1e-9) and h.acoustic == pytest.approx(a, abs=1e-9)
    # a shorter list is the head of the longer one
    assert [h.words for h in nbest_from_parsed(parsed, graph.words, 3)] == [h.words for h in got[:3]]
    # the 1-best is the decoder's best path (same words, same cost up to to_str's 6 digits)
    best = decode_matrix(m, graph, DecoderConfig(acoustic_scale=scale, lattice=True,
                                                 lattice_beam=lattice_beam))
    assert got[0].words == best.words
    assert got[0].total == pytest.approx(best.cost, abs=1e-3)


def test_acoustic_cost_is_the_scaled_network_output(graph):
    """On a clean matrix the best path of "SEE A" is known: acoustic = -scale * (sum of chosen cells)."""
    lex = TinyLexicon(LEX)
    m = loglikes(lex, ["S", "IY", "AH"], floor=-10.0)
    m[m == 0.0] = -0.25  # each frame's favoured cell
    for scale in (1.0, 2.0):
        h = lattice_nbest(raw_lattice(m, graph, DecoderConfig(acoustic_scale=scale)), graph.words, 5)[0]
        assert h.words == ["SEE", "A"]
        assert h.acoustic == pytest.approx(scale * 0.25 * m.shape[0], abs=1e-4)
        assert h.graph > 0 and isinstance(h, Hypothesis)


def test_hand_built_lattice_with_non_scored_words():
    import kaldifst

    words = ["<eps>", "A", "B", "#0", "<s>", "</s>", "<UNK>"]
    lat = kaldifst.Lattice()
    for _ in range(4):
        lat.add_state()
    lat.start = 0
    W = kaldifst.LatticeWeight
    # 0 -A-> 1 -B-> 3 (g 1 + 1, a 2 + 2); 0 -A-> 2 -<UNK>-> 3 ("A" again: g 0.5, a 1 + 5);
    # 0 -B-> 3 (g 3, a 0.25); final 3: (0.125, 0.5)
    lat.add_arc(0, kaldifst.LatticeArc(1, 1, W(1.0, 2.0), 1))
    lat.add_arc(1, kaldifst.LatticeArc(2, 2, W(1.0, 2.0), 3))
    lat.add_arc(0, kaldifst.LatticeArc(1, 1, W(0.5, 1.0), 2))
    lat.add_arc(2, kaldifst.LatticeArc(3, 6, W(0.0, 5.0), 3))
    lat.add_arc(0, kaldifst.LatticeArc(4, 2, W(3.0, 0.25), 3))
    lat.set_final(3, W(0.125, 0.5))
    got = lattice_nbest(lat, words, 10)
    assert [(h.words, h.graph, h.acoustic) for h in got] == [
        (["B"], 3.125, 0.75), (["A", "B"], 2.125, 4.5), (["A"], 0.625, 6.5)]
    assert lattice_nbest(lat, words, 1)[0].words == ["B"]
    assert lattice_nbest(kaldifst.Lattice(), words, 5) == []
    with pytest.raises(ValueError, match="n must be"):
        lattice_nbest(lat, words, 0)


def test_nbest_outputs_over_utterances(graph):
    outs = {"u1": ambiguous_matrix(), "u2": np.zeros((0, graph.num_pdfs), np.float32)}
    res = nbest_outputs(outs, graph, n=4, config=DecoderConfig(lattice_beam=4.0), progress=False)
    assert len(res["u1"]) == 4 and res["u2"] == []
    assert all(math.isfinite(h.total) for h in res["u1"])
    assert [h.total for h in res["u1"]] == sorted(h.total for h in res["u1"])
