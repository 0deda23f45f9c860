"""decode.py end to end on a tiny corpus with a stand-in model (no training needed)."""
import json
import sys
import types

import numpy as np
import pytest

import decode


def _corpus(tmp_path):
    d = tmp_path / "data"
    (d / "lang").mkdir(parents=True)
    (d / "lang" / "lexicon.txt").write_text("A AH\nA EY\nBEE B IY\nSEE S IY\n")
    (d / "lm_train_text.txt").write_text("A BEE\nSEE A BEE\nSEE A\n")
    return d


def test_build_graph_only(tmp_path, capsys):
    d = _corpus(tmp_path)
    assert decode.main(["--build-graph-only", "--data-dir", str(d), "--graph-cache", str(tmp_path / "g"),
                        "--lm-order", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_words"] == 3 and info["HCLG_states"] > 0
    assert (tmp_path / "g").exists()


def _fake_setup(tmp_path, monkeypatch):
    """A corpus of 3 cuts of "SEE A BEE" (test) and 2 (dev), and decode.py's model loader returning a
    stand-in whose output spells the right phones; a sequence whose first feature is > 1e3 gets NaN."""
    torch = pytest.importorskip("torch")
    sf = pytest.importorskip("soundfile")
    from lhotse import CutSet, Recording, SupervisionSegment

    from lang.lexicon import Lexicon

    d = _corpus(tmp_path)
    lex = Lexicon.load(d / "lang" / "lexicon.txt")
    cuts = []
    for i in range(3):
        path = tmp_path / f"r{i}.wav"
        sf.write(str(path), np.random.default_rng(i).normal(0, 0.1, 16000), 16000)
        cut = Recording.from_file(str(path), recording_id=f"r{i}").to_cut()
        cut.supervisions = [SupervisionSegment(f"s{i}", f"r{i}", 0, 1.0, text="SEE A BEE")]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(d / "cuts_test.jsonl.gz")
    CutSet.from_cuts(cuts[:2]).to_file(d / "cuts_dev.jsonl.gz")
    P = len(lex.phones)
    ph = [lex.phones.index(p) for p in ["S", "IY", "AH", "B", "IY"]]

    class FakeModel(torch.nn.Module):
        cmvn = None

        def forward(self, feats, lengths):
            out_lens = (lengths + 2) // 3
            T = int(out_lens.max())
            y = torch.full((feats.shape[0], T, 2 * P), -10.0)
            for b in range(feats.shape[0]):
                n = int(out_lens[b])
                for t in range(n):
                    seg = min(t * len(ph) // n, len(ph) - 1)
                    first = t == 0 or min((t - 1) * len(ph) // n, len(ph) - 1) != seg
                    y[b, t, 2 * ph[seg] + (0 if first else 1)] = 0.0
                if feats[b, 0, 0] > 1e3:
                    y[b, 1] = float("nan")
            return y, y, out_lens

    fake = types.ModuleType("training.checkpoint")
    fake.load_acoustic_model = lambda path, device="cpu": FakeModel()
    monkeypatch.setitem(sys.modules, "training.checkpoint", fake)
    return d


def test_decode_split_with_fake_model(tmp_path, monkeypatch):
    d = _fake_setup(tmp_path, monkeypatch)
    out = tmp_path / "exp" / "decode_test"
    rc = decode.main(["--model", "fake.pt", "--data-dir", str(d), "--split", "test", "--out", str(out),
                      "--graph-cache", str(tmp_path / "g"), "--no-progress"])
    assert rc == 0
    w = json.loads((out / "wer.json").read_text())
    assert w["wer"] == 0.0 and w["ref_words"] == 9 and w["rtf"] > 0
    assert w["num_failed"] == 0 and w["failed_utterances"] == []
    assert (out / "hyps.txt").read_text().splitlines()[0] == "r0 SEE A BEE"
    assert (out / "alignments.txt").exists() and (out / "refs.txt").exists()
    # a second system compared against the first: identical output -> p = 1
    rc = decode.main(["--model", "fake.pt", "--data-dir", str(d), "--split", "test",
                      "--out", str(tmp_path / "exp" / "b"), "--graph-cache", str(tmp_path / "g"),
                      "--no-progress", "--compare", str(out)])
    sig = json.loads((tmp_path / "exp" / "b" / "significance.json").read_text())
    assert sig["bootstrap"]["p_value"] == 1.0 and sig["mapsswe"]["p_value"] == 1.0
    w = json.loads((tmp_path / "exp" / "b" / "wer.json").read_text())
    assert w["compare"]["delta_wer"] == 0.0 and w["compare"]["mapsswe"]["p_value"] == 1.0
    # dev sweep from a YAML config (acoustic scales x LM weights on raw lattices)
    cfg = tmp_path / "decode.yaml"
    cfg.write_text("sweep_dev: true\nsweep-acoustic-scales: '0.5,1.0'\nsweep_lm_weights: '1,2'\n"
                   "sweep_word_insertion_penalties: '0,0.5'\n")
    rc = decode.main(["--config", str(cfg), "--model", "fake.pt", "--data-dir", str(d), "--split", "test",
                      "--out", str(tmp_path / "exp" / "c"), "--graph-cache", str(tmp_path / "g"),
                      "--no-progress"])
    sw = json.loads((tmp_path / "exp" / "c" / "sweep.json").read_text())
    assert len(sw["results"]) == 8 and sw["best"]["wer"] == 0.0
    assert {r["word_insertion_penalty"] for r in sw["results"]} == {0.0, 0.5}
    assert json.loads((tmp_path / "exp" / "c" / "wer.json").read_text())["sweep_best"]["wer"] == 0.0


def test_undecodable_utterances_are_named_and_scored_as_deletions(tmp_path, monkeypatch, caplog):
    """r1: NaN features; r2: the network's output is NaN; r0 decodes. WER counts 6 deletions of 9."""
    import decoding.decoder as decoder

    d = _fake_setup(tmp_path, monkeypatch)
    real = decoder._cut_features

    def features(cut, *a, **k):
        f = np.array(real(cut, *a, **k))
        if cut.id == "r1":
            f[5:8] = np.nan
        if cut.id == "r2":
            f[0, 0] = 1e4
        return f

    monkeypatch.setattr(decoder, "_cut_features", features)
    out = tmp_path / "exp" / "bad"
    with caplog.at_level("WARNING"):
        assert decode.main(["--model", "fake.pt", "--data-dir", str(d), "--split", "test", "--out", str(out),
                            "--graph-cache", str(tmp_path / "g"), "--no-progress"]) == 0
    w = json.loads((out / "wer.json").read_text())
    assert w["num_failed"] == 2
    assert w["failed_utterances"] == [{"id": "r1", "reason": "non-finite features"},
                                      {"id": "r2", "reason": "non-finite network output"}]
    assert (w["ref_words"], w["del"], w["sub"], w["ins"]) == (9, 6, 0, 0)
    assert w["wer"] == pytest.approx(100 * 6 / 9)
    assert "utterance r1: non-finite features" in caplog.text and "utterance r2" in caplog.text
    assert (out / "hyps.txt").read_text().splitlines() == ["r0 SEE A BEE", "r1", "r2"]


def test_decoder_failure_is_recorded_per_utterance(monkeypatch):
    import decoding.decoder as decoder

    def fake_decode(m, graph, config=None):
        if m[0, 0] < 0:
            raise RuntimeError("kaldi decoder\nexploded")
        if m[0, 0] > 1:
            return decoder.DecodeResult([], [], float("inf"), False, len(m), error="no surviving path")
        return decoder.DecodeResult(["A"], [1], 0.0, True, len(m))

    monkeypatch.setattr(decoder, "decode_matrix", fake_decode)
    failures = {}
    outs = {"u1": np.zeros((3, 2)), "u2": -np.ones((3, 2)), "u3": 2 * np.ones((3, 2))}
    hyps = decoder.decode_outputs(outs, graph=None, progress=False, failures=failures)
    assert hyps == {"u1": ["A"], "u2": [], "u3": []}
    assert failures == {"u2": "decoder error: kaldi decoder exploded", "u3": "no surviving path"}


def test_decode_matrix_refuses_non_finite_scores():
    import decoding.decoder as decoder

    class G:
        num_pdfs = 2

    m = np.zeros((4, 2), dtype=np.float32)
    m[2, 1] = np.inf
    res = decoder.decode_matrix(m, G())
    assert res.words == [] and res.error == "non-finite network output"
