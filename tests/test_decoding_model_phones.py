"""The phone list travels with the model: retrain.py records it in model.pt and in the packed file, and
decode.py builds its graph over the model's phones, whatever phones a corpus's lexicon happens to use."""
from __future__ import annotations

import json
import shutil

import pytest

from lang.lexicon import Lexicon
from tests.conftest import run_cli


def test_lexicon_over_an_explicit_phone_list():
    lex = Lexicon({"A": [("AH",)], "BE": [("B", "IY")], "ZOO": [("Z", "UW"), ("ZH", "UW")]})
    assert lex.phones == ["SIL", "AH", "B", "IY", "UW", "Z", "ZH"]
    model_phones = ["SIL", "AH", "B", "IY", "UW", "Z", "K"]  # no ZH, one phone the corpus does not use
    over, dropped = lex.with_phones(model_phones)
    assert over.phones == model_phones and dropped == []
    assert over.pronunciations("ZOO") == [("Z", "UW")]       # the pronunciation with ZH is left out
    over2, dropped2 = lex.with_phones(["SIL", "AH", "IY", "UW", "Z", "ZH"])
    assert dropped2 == ["BE"] and "BE" not in over2
    assert over.subset(["A"]).phones == model_phones           # subsets keep the explicit list
    with pytest.raises(ValueError, match="outside the phone list: ZH"):
        Lexicon({"X": [("ZH",)]}, ["SIL", "AH"])
    with pytest.raises(ValueError, match="start with SIL"):
        Lexicon({"A": [("AH",)]}, ["AH", "SIL"])
    from decoding.graph import extend_lexicon

    ext, added, skipped = extend_lexicon(over, ["KAY", "ZHA"], prons={"KAY": [("K", "IY")], "ZHA": [("ZH", "AH")]})
    assert ext.phones == model_phones and added == ["KAY"] and skipped == ["ZHA"]


def _variant(src, dst, drop_phone, extra_word=None):
    """A copy of a prepared corpus whose lexicon has no word with ``drop_phone`` (and optionally one word
    with a phone no model has); LM sentences with a dropped word are left out."""
    shutil.copytree(src, dst)
    lines = (dst / "lang" / "lexicon.txt").read_text().splitlines()
    kept = [l for l in lines if drop_phone not in l.split()[1:]]
    gone = {l.split()[0] for l in lines} - {l.split()[0] for l in kept}
    if extra_word:
        kept.append(extra_word)
    (dst / "lang" / "lexicon.txt").write_text("\n".join(kept) + "\n")
    for name in ("lm_text.txt", "lm_train_text.txt"):
        sents = (dst / name).read_text().splitlines()
        (dst / name).write_text("\n".join(s for s in sents if not set(s.split()) & gone) + "\n")
    return Lexicon.load(dst / "lang" / "lexicon.txt")


def test_decoding_uses_the_models_phones(tiny_corpus, small_train_config, tmp_path):
    from training.model_io import load_model_file

    model_dir = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", model_dir])
    corpus_phones = Lexicon.load(tiny_corpus / "lang" / "lexicon.txt").phones
    for f in ("model.pt", "model.safetensors"):
        assert load_model_file(model_dir / f).phones == corpus_phones
    assert "ZH" in corpus_phones
    # a corpus whose words lack ZH: 39 phones, the model has 40
    lacking = _variant(tiny_corpus, tmp_path / "no_zh", "ZH")
    assert len(lacking.phones) == len(corpus_phones) - 1
    # a corpus of as many phones as the model, but a different set: no ZH, one unknown phone QQ
    swapped = _variant(tiny_corpus, tmp_path / "swapped", "ZH", "QQWORD QQ AH")
    assert len(swapped.phones) == len(corpus_phones) and swapped.phones != corpus_phones
    for data, dropped in ((tmp_path / "no_zh", 0), (tmp_path / "swapped", 1)):
        out = tmp_path / f"dec_{data.name}"
        run_cli(["decode.py", "--model", model_dir / "model.safetensors", "--data-dir", data, "--split", "dev",
                 "--out", out, "--no-progress", "--beam", "8", "--graph-cache", tmp_path / "graphs"])
        w = json.load(open(out / "wer.json"))
        assert w["words_without_model_phones"] == dropped
        # the graph was built over the model's phones (2 pdfs each), in the model's order
        graph_dirs = sorted((tmp_path / "graphs").iterdir(), key=lambda p: p.stat().st_mtime)
        info = json.load(open(graph_dirs[-1] / "info.json"))
        assert info["phones"] == corpus_phones and info["num_pdfs"] == 2 * len(corpus_phones)


def test_a_model_without_phone_list_and_another_phone_set_is_a_clear_error(tiny_corpus, small_train_config,
                                                                            tmp_path):
    import torch

    model_dir = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 1,
             "--no-progress", "--out", model_dir])
    obj = torch.load(model_dir / "model.pt", weights_only=True)
    del obj["phones"]  # a file written before phone lists were recorded
    torch.save(obj, model_dir / "legacy.pt")
    _variant(tiny_corpus, tmp_path / "no_zh", "ZH")
    with pytest.raises(AssertionError, match="records no phone list"):
        run_cli(["decode.py", "--model", model_dir / "legacy.pt", "--data-dir", tmp_path / "no_zh", "--split",
                 "dev", "--out", tmp_path / "dec", "--no-progress", "--graph-cache", tmp_path / "graphs"])
