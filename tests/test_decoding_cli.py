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


def test_decode_split_with_fake_model(tmp_path, monkeypatch):
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
            return y, y, out_lens

    fake = types.ModuleType("training.checkpoint")
    fake.load_acoustic_model = lambda path, device="cpu": FakeModel()
    monkeypatch.setitem(sys.modules, "training.checkpoint", fake)
    out = tmp_path / "exp" / "decode_test"
    rc = decode.main(["--model", "fake.pt", "--data-dir", str(d), "--split", "test", "--out", str(out),
                      "--graph-cache", str(tmp_path / "g"), "--no-progress"])
    assert rc == 0
    w = json.loads((out / "wer.json").read_text())
    assert w["wer"] == 0.0 and w["ref_words"] == 9 and w["rtf"] > 0
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
    cfg.write_text("sweep_dev: true\nsweep-acoustic-scales: '0.5,1.0'\nsweep_lm_weights: '1,2'\n")
    rc = decode.main(["--config", str(cfg), "--model", "fake.pt", "--data-dir", str(d), "--split", "test",
                      "--out", str(tmp_path / "exp" / "c"), "--graph-cache", str(tmp_path / "g"),
                      "--no-progress"])
    sw = json.loads((tmp_path / "exp" / "c" / "sweep.json").read_text())
    assert len(sw["results"]) == 4 and sw["best"]["wer"] == 0.0
    assert json.loads((tmp_path / "exp" / "c" / "wer.json").read_text())["sweep_best"]["wer"] == 0.0
