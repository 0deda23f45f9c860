"""The embedded TTS corpus: tiny build layout, determinism, disjoint splits, lexicon coverage."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

import prepare_data
from corpus import tts
from corpus.synth import SIZES, plan, split_sentences
from lang.lexicon import Lexicon

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("flite", "festival", "espeak-ng", "sox")),
    reason="TTS programs (flite festival espeak-ng sox) not installed",
)


def _build(out: Path, *extra: str) -> None:
    rc = prepare_data.main(["--corpus", "synth", "--size", "tiny", "--out", str(out), "--seed", "0",
                            "--quiet", "--overwrite", *extra])
    assert rc == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synth_tiny"
    _build(out)
    return out


def _cuts(d: Path, split: str):
    from lhotse import CutSet

    return CutSet.from_file(d / ("cuts_%s.jsonl.gz" % split))


def _digest(d: Path) -> dict:
    files = [p for p in sorted(d.rglob("*")) if p.is_file() and p.name != "summary.json"]
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_layout_and_features(tiny):
    for name in ("cuts_train.jsonl.gz", "cuts_dev.jsonl.gz", "cuts_test.jsonl.gz", "lang/lexicon.txt",
                 "lang/phones.txt", "lm_train_text.txt", "lm_text.txt", "cmvn.json", "summary.json"):
        assert (tiny / name).is_file(), name
    train = _cuts(tiny, "train")
    ids = [c.id for c in train]
    assert any(i.endswith("_sp0.9") for i in ids) and any(i.endswith("_sp1.1") for i in ids)
    assert len(ids) == 3 * sum(1 for i in ids if "_sp" not in i)
    for c in list(train)[:5] + list(_cuts(tiny, "test"))[:2]:
        assert len(c.supervisions) == 1 and c.supervisions[0].speaker
        feats = c.load_features()
        assert feats.shape[1] == 40 and abs(feats.shape[0] - round(c.duration * 100)) <= 2
        assert c.features.storage_type == "lilcom_chunky" and c.sampling_rate == 16000
    cmvn = json.loads((tiny / "cmvn.json").read_text())
    assert len(cmvn["mean"]) == 40 and min(cmvn["std"]) > 0
    summary = json.loads((tiny / "summary.json").read_text())
    for split in ("train", "dev", "test"):
        st = summary["splits"][split]
        assert st["utterances"] > 0 and st["hours"] > 0 and st["speakers"] > 0 and st["vocabulary"] > 0
    assert summary["skipped_total"] == 0 and "total_s" in summary["build_time"]
    lm = (tiny / "lm_train_text.txt").read_text().splitlines()
    assert sorted(lm) == sorted(c.supervisions[0].text for c in train if "_sp" not in c.id)


def test_lm_text_extends_training_text_without_held_out_sentences(tiny):
    lm = (tiny / "lm_train_text.txt").read_text().splitlines()
    full = (tiny / "lm_text.txt").read_text().splitlines()
    assert full[: len(lm)] == lm and len(full) == len(lm) + SIZES["tiny"].lm_extra
    held = {c.supervisions[0].text for s in ("dev", "test") for c in _cuts(tiny, s)}
    assert not held & set(full)
    lex = Lexicon.load(tiny / "lang" / "lexicon.txt")
    lex.check(w for s in full for w in s.split())  # the lexicon covers the LM text
    summary = json.loads((tiny / "summary.json").read_text())
    assert summary["lm_text"]["sentences"] == len(full)
    assert summary["lm_text"]["extra_sentences"] == SIZES["tiny"].lm_extra


def test_speaker_and_sentence_disjoint(tiny):
    spk = {s: {c.supervisions[0].speaker for c in _cuts(tiny, s)} for s in ("train", "dev", "test")}
    txt = {s: {c.supervisions[0].text for c in _cuts(tiny, s)} for s in ("train", "dev", "test")}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not spk[a] & spk[b], (a, b)
        assert not txt[a] & txt[b], (a, b)
    engines = {c.supervisions[0].custom["engine"] for c in _cuts(tiny, "train")}
    assert engines == {"flite", "festival", "espeak"}


def test_lexicon_covers_every_word(tiny):
    lex = Lexicon.load(tiny / "lang" / "lexicon.txt")
    assert lex.phones[0] == "SIL"
    for split in ("train", "dev", "test"):
        for c in _cuts(tiny, split):
            text = c.supervisions[0].text
            assert text == text.upper() and "  " not in text and not any(ch.isdigit() for ch in text)
            lex.check(text.split())


def test_deterministic_same_seed(tiny, tmp_path):
    before = _digest(tiny)
    moved = tmp_path / "first"
    shutil.copytree(tiny, moved)
    _build(tiny)  # same seed, same directory -> byte-identical audio, features and manifests
    assert _digest(tiny) == before
    with gzip.open(tiny / "cuts_test.jsonl.gz") as a, gzip.open(moved / "cuts_test.jsonl.gz") as b:
        assert a.read() == b.read()


def test_plan_demo_sizes_disjoint():
    items, noise, lm_extra = plan("demo", seed=0)
    assert [len(items[s]) for s in ("train", "dev", "test")] == [SIZES["demo"].train, SIZES["demo"].dev, SIZES["demo"].test]
    spk = {s: {it.speaker.id for it in items[s]} for s in items}
    assert not spk["train"] & (spk["dev"] | spk["test"]) and not spk["dev"] & spk["test"]
    base = {it.speaker.base for it in items["train"]}
    assert len(base) >= 6 and len({b.engine for b in base}) >= 3
    txt = {s: {it.text for it in items[s]} for s in items}
    assert not txt["train"] & (txt["dev"] | txt["test"]) and not txt["dev"] & txt["test"]
    assert len({w for t in txt["train"] for w in t.split()}) >= 2000
    assert 0.3 < len(noise) / len(items["train"]) < 0.7 and all(k in txt or True for k in noise)
    assert len(tts.speakers_for_split("test")) == len(tts.BASE_VOICES)
    assert len(lm_extra) > 5 * len(items["train"])  # the decoding LM reads more text than the transcripts
    assert not set(lm_extra) & (txt["train"] | txt["dev"] | txt["test"])


def test_split_sentences_seeded():
    sents = ["S%d W" % i for i in range(100)]
    from corpus.synth import SizeSpec

    a = split_sentences(sents, SizeSpec(50, 10, 10), seed=1)
    assert a == split_sentences(sents, SizeSpec(50, 10, 10), seed=1)
    assert a != split_sentences(sents, SizeSpec(50, 10, 10), seed=2)
    assert len(set(a["train"]) | set(a["dev"]) | set(a["test"])) == 70
    assert a["lm_extra"] == []  # lm_extra defaults to 0
    b = split_sentences(sents, SizeSpec(50, 10, 10, lm_extra=100), seed=1)
    assert {k: b[k] for k in ("train", "dev", "test")} == {k: a[k] for k in ("train", "dev", "test")}
    assert len(b["lm_extra"]) == 30 and not set(b["lm_extra"]) & set(b["train"] + b["dev"] + b["test"])


def test_telephone_rate(tmp_path):
    out = tmp_path / "tel"
    _build(out, "--sample-rate", "8000", "--no-speed-perturb")
    c = next(iter(_cuts(out, "dev")))
    assert c.sampling_rate == 8000 and c.recording.sampling_rate == 8000
    assert c.load_features().shape[1] == 40


def test_noise_snr_and_reproducible():
    import numpy as np

    from corpus.synth import _utt_rng, add_noise

    x = 0.3 * np.sin(np.arange(16000) / 7.0)
    for kind in ("white", "pink", "brown"):
        for snr in (5.0, 20.0):
            y = add_noise(x, kind, snr, _utt_rng(0, "u1"))
            got = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
            assert abs(got - snr) < 0.5, (kind, snr, got)
            assert np.array_equal(y, add_noise(x, kind, snr, _utt_rng(0, "u1")))
    assert not np.array_equal(add_noise(x, "white", 5, _utt_rng(0, "u1")), add_noise(x, "white", 5, _utt_rng(0, "u2")))


def test_resume_redoes_only_missing_audio(tiny):
    before = _digest(tiny)
    wavs = sorted((tiny / "audio").glob("*.wav"))
    wavs[0].unlink()
    keep_mtime = wavs[-1].stat().st_mtime_ns
    rc = prepare_data.main(["--corpus", "synth", "--size", "tiny", "--out", str(tiny), "--seed", "0", "--quiet",
                            "--resume"])
    assert rc == 0 and _digest(tiny) == before
    assert wavs[-1].stat().st_mtime_ns == keep_mtime  # its chunk was not synthesised again
