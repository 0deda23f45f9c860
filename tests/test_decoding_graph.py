"""HCLG construction and decoding on tiny graphs whose answers are known."""
import math

import numpy as np
import pytest

from decoding.decoder import DecoderConfig, decode_cuts, decode_matrix, raw_lattice, \
    best_path_with_lm_weight, sweep
from decoding.graph import DecodingGraph, add_disambig_symbols, extend_lexicon, get_graph, make_h_fst
from decoding.lm import BOS, EOS, NgramModel


class TinyLexicon:
    """The lang.lexicon.Lexicon protocol: phones (SIL first), words, pronunciations(word)."""

    silence_phone = "SIL"

    def __init__(self, prons):
        self._prons = {w: [tuple(p) for p in ps] for w, ps in prons.items()}
        self.phones = ["SIL"] + sorted({x for ps in self._prons.values() for p in ps for x in p} - {"SIL"})

    @property
    def words(self):
        return sorted(self._prons)

    def pronunciations(self, word):
        return list(self._prons[word])


LEX = {"A": [("AH",), ("EY",)], "BEE": [("B", "IY")], "BE": [("B", "IY")], "SEE": [("S", "IY")]}
TEXT = "A BEE\nSEE A BEE\nBE A SEE\nSEE A\n"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("g")
    (d / "text").write_text(TEXT)
    return get_graph(TinyLexicon(LEX), d / "cache", lm_text=d / "text", order=3)


def loglikes(lexicon, phones, frames=3, floor=-10.0):
    """Matrix favouring the chain-topology path: entry pdf 2k on a phone's first frame, then 2k+1."""
    idx = {p: i for i, p in enumerate(lexicon.phones)}
    P = len(lexicon.phones)
    rows = []
    for p in phones:
        for j in range(frames):
            r = np.full(2 * P, floor, np.float32)
            r[2 * idx[p] + (0 if j == 0 else 1)] = 0.0
            rows.append(r)
    return np.stack(rows)


def lm_cost(graph, words):
    """Viterbi cost of `words` through G: the best over back-off choices (Kaldi's G keeps the back-off
    arcs beside explicit n-grams, so a back-off path can beat the exact ARPA probability)."""
    lm = NgramModel.load_arpa(graph.directory + "/G.arpa")

    def state(h):  # G state reached: longest suffix that is a listed history
        h = h[-(lm.order - 1):]
        while h and not (h in lm.probs[len(h) - 1] and h[-1] != EOS):
            h = h[1:]
        return h

    states = {(BOS,): 0.0}
    for w in list(words) + [EOS]:
        new = {}
        for h, c in states.items():
            while True:
                ng = h + (w,)
                p = lm.probs[len(ng) - 1].get(ng, 0.0)
                if p > 0:
                    d = state(ng)
                    new[d] = min(new.get(d, math.inf), c - math.log(p))
                if not h:
                    break
                c -= math.log(lm.bows[len(h) - 1].get(h, 1.0))
                h = h[1:]
        states = new
    best = min(states.values())
    assert best <= -lm.sentence_logprob(words) + 1e-6
    return best


def test_decodable_reads_column_label_minus_one():
    import kaldi_decoder

    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = kaldi_decoder.DecodableCtc(m)
    assert d.log_likelihood(0, 1) == 0.0 and d.log_likelihood(1, 4) == 7.0


def test_h_topology_labels():
    import kaldifst

    H = make_h_fst(num_phones=2, num_disambig=0)  # pdfs 0..3, labels 1..4
    arcs = {(s, a.ilabel, a.olabel, a.nextstate) for s in range(H.num_states)
            for a in kaldifst.ArcIterator(H, s)}
    # entry of phone k (label 2k+1) writes phone id k+1 and enters state k+1; self-loop label 2k+2
    assert (0, 1, 1, 1) in arcs and (0, 3, 2, 2) in arcs and (1, 3, 2, 2) in arcs
    assert (1, 2, 0, 1) in arcs and (2, 4, 0, 2) in arcs
    assert not any(i == 2 and s != 1 for s, i, _, _ in arcs)  # self-loop pdf only inside its phone


def test_disambig_symbols():
    ents = [("BE", ("B", "IY")), ("BEE", ("B", "IY")), ("B", ("B",)), ("A", ("AH",))]
    out, max_k = add_disambig_symbols(ents)
    # homophones get #1 and #2; "B" is a prefix of "B IY" -> #1; "AH" needs none
    assert out == [("BE", ("B", "IY"), 1), ("BEE", ("B", "IY"), 2), ("B", ("B",), 1), ("A", ("AH",), 0)]
    assert max_k == 2


@pytest.mark.parametrize("phones,words", [
    (["S", "IY", "EY", "B", "IY"], ["SEE", "A", "BEE"]),  # alternative pronunciation of A
    (["SIL", "S", "IY", "AH", "B", "IY", "SIL"], ["SEE", "A", "BEE"]),  # silence at both ends
    (["S", "IY", "SIL", "AH", "SIL"], ["SEE", "A"]),  # silence between words and at the end
    (["SIL", "AH", "SIL", "S", "IY"], ["A", "SEE"]),  # an unseen bigram (LM back-off)
    (["AH", "AH", "EY"], ["A", "A", "A"]),  # a phone repeated across words: entry pdf again
])
def test_decode_known_sentence(graph, phones, words):
    lex = TinyLexicon(LEX)
    res = decode_matrix(loglikes(lex, phones), graph)
    assert res.words == words and res.reached_final
    # acoustic cost is 0 on the favoured path; graph cost = LM cost + silence choices
    # (p = 0.5 at the start and after each word: (len(words) + 1) * ln 2)
    expected = lm_cost(graph, words) + (len(words) + 1) * math.log(2.0)
    assert res.cost == pytest.approx(expected, abs=2e-3)
    lat = decode_matrix(loglikes(lex, phones), graph, DecoderConfig(lattice=True))
    assert lat.words == words


def test_homophones_resolved_by_lm(graph):
    lex = TinyLexicon(LEX)
    # "A B IY" : BEE follows A twice in the text, BE never does
    assert decode_matrix(loglikes(lex, ["AH", "B", "IY"]), graph).words == ["A", "BEE"]
    # sentence-initial: "B IY A S IY" -> the text has "BE A SEE"
    assert decode_matrix(loglikes(lex, ["B", "IY", "AH", "S", "IY"]), graph).words == ["BE", "A", "SEE"]


def test_acoustic_scale_and_torch_input(graph):
    torch = pytest.importorskip("torch")
    lex = TinyLexicon(LEX)
    m = torch.from_numpy(loglikes(lex, ["S", "IY", "AH"], floor=-1.0))
    # weak acoustics (1 nat per frame): at scale 10 they win, at scale 0.1 the graph prefers the
    # cheapest path of 9 frames, a single silence (an empty word sequence)
    assert decode_matrix(m, graph, DecoderConfig(acoustic_scale=10.0)).words == ["SEE", "A"]
    assert decode_matrix(m, graph, DecoderConfig(acoustic_scale=0.1)).words == []
    with pytest.raises(ValueError):
        decode_matrix(m[:, :3], graph)


def test_lattice_lm_weight(graph):
    lex = TinyLexicon(LEX)
    lat = raw_lattice(loglikes(lex, ["AH", "B", "IY"]), graph)
    assert best_path_with_lm_weight(lat, graph, 1.0) == ["A", "BEE"]
    assert best_path_with_lm_weight(lat, graph, 5.0) == ["A", "BEE"]


def test_graph_cache_roundtrip(graph, tmp_path):
    g2 = DecodingGraph.load(graph.directory)
    assert g2.words == graph.words and g2.num_pdfs == 2 * len(TinyLexicon(LEX).phones)
    assert g2.words[0] == "<eps>" and g2.words[-3:] == ["#0", BOS, EOS]
    # same lexicon + text -> same cache directory, loaded not rebuilt
    again = get_graph(TinyLexicon(LEX), str(graph.directory).rsplit("/", 1)[0],
                      lm_text=str(graph.directory).rsplit("/", 2)[0] + "/text")
    assert again.directory == graph.directory
    # an ARPA input gives the same graph
    from_arpa = get_graph(TinyLexicon(LEX), tmp_path / "c2", arpa=graph.directory + "/G.arpa")
    assert from_arpa.info["HCLG_states"] == graph.info["HCLG_states"]


def test_extend_lexicon_keeps_phone_set():
    lex = TinyLexicon(LEX)
    prons = {"SEA": [("S", "IY")], "ZOO": [("Z", "UW")], "AB": [("AH", "B"), ("AH", "ZH")]}
    new, added, skipped = extend_lexicon(lex, ["SEA", "ZOO", "AB", "A"], prons)
    assert added == ["AB", "SEA"] and skipped == ["ZOO"]
    assert new.phones == lex.phones and new.pronunciations("AB") == [("AH", "B")]


def test_decode_cuts_with_resampling(graph, tmp_path):
    torch = pytest.importorskip("torch")
    sf = pytest.importorskip("soundfile")
    from lhotse import CutSet, Recording, SupervisionSegment

    lex = TinyLexicon(LEX)
    cuts = []
    for i, dur in enumerate([1.0, 0.7]):
        path = tmp_path / f"r{i}.wav"
        sf.write(str(path), np.random.default_rng(i).normal(0, 0.1, int(8000 * dur)), 8000)
        rec = Recording.from_file(str(path), recording_id=f"r{i}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(f"s{i}", f"r{i}", 0, dur, text="SEE A")]
        cuts.append(cut)
    cuts = CutSet.from_cuts(cuts)
    seen = []

    def forward_fn(feats, lengths):
        seen.append(tuple(feats.shape))
        out_lens = (lengths + 2) // 3
        T = int(out_lens.max())
        y = torch.full((feats.shape[0], T, graph.num_pdfs), -10.0)
        for b in range(feats.shape[0]):
            n = int(out_lens[b])
            m = loglikes(lex, ["S", "IY", "AH"], frames=max(n // 3, 1))[:n]
            y[b, : m.shape[0]] = torch.from_numpy(m)
            y[b, m.shape[0]: n] = torch.from_numpy(m[-1])
        return y, None, out_lens

    hyps = decode_cuts(forward_fn, cuts, graph, sampling_rate=16000, progress=False)
    assert list(hyps) == [c.id for c in cuts] and all(h == ["SEE", "A"] for h in hyps.values())
    assert seen[0][2] == 40 and seen[0][1] == 100  # 1 s at 10 ms shift, 40-dim Fbank
    hyps2, outs = decode_cuts(forward_fn, cuts, graph, sampling_rate=16000, progress=False,
                              return_outputs=True)
    refs = {c.id: ["SEE", "A"] for c in cuts}
    res = sweep(outs, refs, graph, acoustic_scales=(0.5, 1.0), lm_weights=(1.0, 2.0), progress=False)
    assert res["best"]["wer"] == 0.0 and len(res["results"]) == 4


def test_resample_keeps_frequency():
    from decoding.decoder import resample

    t = np.arange(8000) / 8000.0
    y = resample(np.sin(2 * np.pi * 1000 * t), 8000, 16000)
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000.0)
    assert np.max(np.abs(y[100:-100] - ref[100:-100])) < 1e-3


def test_lm_weight_changes_the_answer(graph):
    lex = TinyLexicon(LEX)
    m = loglikes(lex, ["B", "IY", "AH"])
    idx = {p: i for i, p in enumerate(lex.phones)}
    m[0, 2 * idx["S"]] = -0.5  # "S" almost as likely as "B" on the first phone's 3 frames
    m[1:3, 2 * idx["S"] + 1] = -0.5
    lat = raw_lattice(m, graph)
    # acoustics alone: "BE A" (1.5 nats better); a heavy LM: "SEE A" ("SEE A" is a training sentence)
    assert best_path_with_lm_weight(lat, graph, 0.01) == ["BE", "A"]
    assert best_path_with_lm_weight(lat, graph, 20.0) == ["SEE", "A"]


@pytest.mark.parametrize("phones,words", [
    (["S", "IY", "EY", "B", "IY"], ["SEE", "A", "BEE"]),
    (["SIL", "AH", "SIL", "S", "IY"], ["A", "SEE"]),
])
def test_word_insertion_penalty_costs_each_word(graph, phones, words):
    """Same best path, its cost grows by exactly penalty x number of words (the known cost of
    test_decode_known_sentence plus the penalty); penalty 0 is the graph itself."""
    from decoding.graph import add_word_insertion_penalty

    lex = TinyLexicon(LEX)
    m = loglikes(lex, phones)
    base = lm_cost(graph, words) + (len(words) + 1) * math.log(2.0)
    for p in (0.0, 0.5, 2.0):
        for lattice in (False, True):
            res = decode_matrix(m, graph, DecoderConfig(word_insertion_penalty=p, lattice=lattice))
            assert res.words == words
            assert res.cost == pytest.approx(base + p * len(words), abs=2e-3)
    assert graph.penalized_fst(0.0) is graph.fst
    assert graph.penalized_fst(0.5) is graph.penalized_fst(0.5)  # built once
    # only word arcs change: same states and arcs, total weight moved by penalty x word arcs
    import kaldifst

    def arcs(f):
        return [(s, a.ilabel, a.olabel, a.nextstate, float(a.weight.value))
                for s in range(f.num_states) for a in kaldifst.ArcIterator(f, s)]
    a0, a1 = arcs(graph.fst), arcs(add_word_insertion_penalty(graph.fst, 1.5))
    assert [x[:4] for x in a0] == [x[:4] for x in a1]
    assert all(w1 == pytest.approx(w0 + (1.5 if ol else 0.0)) for (_, _, ol, _, w0), (*_, w1) in zip(a0, a1))
    with pytest.raises(ValueError):
        graph.penalized_fst(float("nan"))


def test_word_insertion_penalty_removes_weak_words(graph):
    """Weak acoustics for "S IY AH" (1 nat a frame off the path): a large penalty makes the empty
    hypothesis (one silence) cheaper than two words; a negative one never removes them."""
    lex = TinyLexicon(LEX)
    m = loglikes(lex, ["S", "IY", "AH"], floor=-1.0)
    assert decode_matrix(m, graph, DecoderConfig(acoustic_scale=10.0)).words == ["SEE", "A"]
    assert decode_matrix(m, graph, DecoderConfig(acoustic_scale=10.0, word_insertion_penalty=100.0)).words == []
    assert decode_matrix(m, graph, DecoderConfig(acoustic_scale=10.0, word_insertion_penalty=-1.0)).words == \
        ["SEE", "A"]
    outs = {"u": m}
    res = sweep(outs, {"u": ["SEE", "A"]}, graph, acoustic_scales=(10.0,), progress=False,
                word_insertion_penalties=(0.0, 100.0))
    assert [r["word_insertion_penalty"] for r in res["results"]] == [0.0, 100.0]
    assert [r["wer"] for r in res["results"]] == [0.0, 100.0] and res["best"]["word_insertion_penalty"] == 0.0
