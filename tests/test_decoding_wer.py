"""WER breakdown and alignments against hand-worked examples."""
import json

from decoding.wer import align_utterance, corpus_wer, write_results


def test_wer_breakdown_by_hand(tmp_path):
    refs = {"u1": "A B C D", "u2": "E F", "u3": "G"}
    hyps = {"u1": "A X C D Y",  # 1 substitution (B->X), 1 insertion (Y)
            "u2": "E",  # 1 deletion (F)
            "u3": "G"}  # correct
    # errors = 3, ref words = 4 + 2 + 1 = 7 -> WER = 300/7 = 42.857 %; SER = 2/3
    s = corpus_wer(refs, hyps)
    assert (s["sub"], s["del"], s["ins"], s["errors"], s["ref_words"]) == (1, 1, 1, 3, 7)
    assert abs(s["wer"] - 300 / 7) < 1e-9
    assert s["sentence_errors"] == 2 and abs(s["ser"] - 200 / 3) < 1e-9
    u = align_utterance("u1", refs["u1"], hyps["u1"])
    assert u.alignment == [("A", "A"), ("B", "X"), ("C", "C"), ("D", "D"), ("*", "Y")]
    out = write_results(str(tmp_path), refs, hyps, {"note": 1})
    assert json.loads((tmp_path / "wer.json").read_text())["errors"] == 3 and out["note"] == 1
    assert (tmp_path / "hyps.txt").read_text().splitlines()[1] == "u2 E"
    ali = (tmp_path / "alignments.txt").read_text()
    assert "u1 #csid 3 1 1 0" in ali  # correct, sub, ins, del


def test_empty_and_missing_hypotheses():
    # missing hypothesis counts as empty: 2 deletions of 2 words -> 100 %
    s = corpus_wer({"a": "X Y"}, {})
    assert (s["del"], s["wer"]) == (2, 100.0)
    s = corpus_wer({"a": ""}, {"a": "Z"})  # insertion on an empty reference
    assert (s["ins"], s["ref_words"], s["wer"]) == (1, 0, 0.0)
