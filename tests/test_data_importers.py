"""Switchboard and Kaldi-dir importers on small fake data, and every bad-input case."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import prepare_data
from corpus.validate import DataError
from lang.lexicon import Lexicon, OOVError

SENTS = ["HELLO WORLD", "THE CAT SAT ON THE MAT", "GOOD MORNING TO YOU", "I LIKE GREEN TEA",
         "WHERE IS THE STATION", "IT IS RAINING AGAIN"]


def _tone(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def make_kaldi_dir(root: Path, n_spk: int = 6, per_spk: int = 2, sr: int = 16000) -> Path:
    """wav.scp, text, utt2spk for n_spk speakers (one wav per utterance, no segments)."""
    d = root / "kaldi"
    (d / "wav").mkdir(parents=True)
    wav, text, u2s = [], [], []
    for s in range(n_spk):
        for u in range(per_spk):
            utt = "spk%d-utt%d" % (s, u)
            path = d / "wav" / (utt + ".wav")
            sf.write(str(path), _tone(1.0 + 0.1 * u, sr, s * 10 + u), sr, subtype="PCM_16")
            wav.append("%s %s" % (utt, path))
            text.append("%s %s" % (utt, SENTS[(s + u) % len(SENTS)].lower()))
            u2s.append("%s spk%d" % (utt, s))
    for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", u2s)):
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def _edit(d: Path, name: str, utt: str, new_value: str) -> None:
    lines = (d / name).read_text().splitlines()
    lines = [("%s %s" % (utt, new_value)).rstrip() if l.split()[0] == utt else l for l in lines]
    (d / name).write_text("\n".join(lines) + "\n")


def _prepare(*args: str) -> int:
    return prepare_data.main(["--quiet", "--jobs", "1", *args])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _cuts(out: Path, split: str):
    from lhotse import CutSet

    return CutSet.from_file(out / ("cuts_%s.jsonl.gz" % split))


def test_kaldi_dir_clean(tmp_path):
    d = make_kaldi_dir(tmp_path)
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out)) == 0
    s = _summary(out)
    assert s["skipped_total"] == 0
    spk = {k: {c.supervisions[0].speaker for c in _cuts(out, k)} for k in ("train", "dev", "test")}
    assert spk["dev"] and spk["test"] and not spk["train"] & (spk["dev"] | spk["test"])
    c = next(iter(_cuts(out, "train")))
    assert c.supervisions[0].text == c.supervisions[0].text.upper()
    assert c.load_features().shape[1] == 40
    assert (out / "lang" / "lexicon.txt").is_file() and (out / "cmvn.json").is_file()
    # no extra LM text: the decoding LM reads the training transcripts only
    assert (out / "lm_text.txt").read_text() == (out / "lm_train_text.txt").read_text()


def test_kaldi_dir_extra_lm_text(tmp_path):
    d = make_kaldi_dir(tmp_path)
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out)) == 0
    dev_text = next(iter(_cuts(out, "dev"))).supervisions[0].text
    extra = tmp_path / "extra.txt"
    extra.write_text("the dog sat on 2 mats\n\n%s\nHELLO QWXZPT WORLD\n" % dev_text.lower())
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--overwrite",
                    "--lm-extra-text", str(extra)) == 0
    train = (out / "lm_train_text.txt").read_text().splitlines()
    lm = (out / "lm_text.txt").read_text().splitlines()
    # normalised like the transcripts; a dev sentence and an out-of-lexicon sentence are dropped, counted
    assert lm == train + ["THE DOG SAT ON TWO MATS"]
    s = _summary(out)["lm_text"]
    assert (s["extra_sentences"], s["extra_dropped_heldout"], s["extra_dropped_oov"]) == (1, 1, 1)
    lex = Lexicon.load(out / "lang" / "lexicon.txt")
    assert "DOG" in lex and "MATS" in lex
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--overwrite",
                    "--lm-extra-text", str(tmp_path / "missing.txt")) == 2


def test_kaldi_dir_with_segments(tmp_path):
    d = tmp_path / "seg"
    (d).mkdir()
    sr = 16000
    wav, seg, text, u2s = [], [], [], []
    for s in range(4):
        rec = "rec%d" % s
        sf.write(str(d / (rec + ".wav")), _tone(3.0, sr, s), sr, subtype="PCM_16")
        wav.append("%s %s" % (rec, d / (rec + ".wav")))
        for u, (a, b) in enumerate(((0.0, 1.2), (1.5, 2.9))):
            utt = "spk%d-%s-%d" % (s, rec, u)
            seg.append("%s %s %.2f %.2f" % (utt, rec, a, b))
            text.append("%s %s" % (utt, SENTS[u + s]))
            u2s.append("%s spk%d" % (utt, s))
    for name, lines in (("wav.scp", wav), ("segments", seg), ("text", text), ("utt2spk", u2s)):
        (d / name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--no-speed-perturb") == 0
    cuts = list(_cuts(out, "train")) + list(_cuts(out, "dev")) + list(_cuts(out, "test"))
    assert len(cuts) == 8 and all(abs(c.duration - 1.3) < 0.15 for c in cuts)
    assert {c.id for c in cuts} == {l.split()[0] for l in seg}


def test_kaldi_bad_inputs_counted_and_listed(tmp_path):
    d = make_kaldi_dir(tmp_path, n_spk=6, per_spk=3)
    (d / "wav" / "spk0-utt0.wav").unlink()                                        # missing audio
    (d / "wav" / "spk1-utt0.wav").write_bytes(b"RIFF....WAVEgarbage" * 10)        # corrupt header
    flac = d / "wav" / "spk2-utt0.flac"                                          # corrupt data, valid header
    sf.write(str(flac), _tone(1.0, 16000, 3), 16000)
    b = bytearray(flac.read_bytes())
    for i in range(2000, len(b) - 100, 7):
        b[i] = (b[i] * 31 + 7) % 256
    flac.write_bytes(bytes(b))
    _edit(d, "wav.scp", "spk2-utt0", str(flac))
    _edit(d, "text", "spk3-utt0", "")                                             # empty transcript
    sf.write(str(d / "wav" / "spk4-utt0.wav"), _tone(0.1, 16000, 1), 16000)       # too short
    sf.write(str(d / "wav" / "spk5-utt0.wav"), _tone(1.0, 8000, 1), 8000)         # wrong rate
    _edit(d, "text", "spk5-utt1", "HELLO QWXZPT WORLD")                           # OOV word
    out = tmp_path / "out"
    # default --oov error: a clear error listing the word
    with pytest.raises(OOVError) as e:
        prepare_data.run(prepare_data.build_parser().parse_args(
            ["--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--quiet", "--jobs", "1"]))
    assert e.value.words == ["QWXZPT"] and "spk5-utt1" in str(e.value)
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--oov", "error") == 2
    # --oov skip: every bad utterance is counted and listed with its file
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--oov", "skip",
                    "--overwrite") == 0
    s = _summary(out)
    listed = {p["utterance"]: p for p in s["skipped"]}
    assert listed["spk0-utt0"]["reason"] == "missing_audio" and listed["spk0-utt0"]["file"].endswith("spk0-utt0.wav")
    assert listed["spk1-utt0"]["reason"] == "unreadable_audio"
    assert listed["spk2-utt0"]["reason"] == "corrupt_audio"
    assert listed["spk3-utt0"]["reason"] == "empty_transcript"
    assert listed["spk4-utt0"]["reason"] == "too_short"
    assert listed["spk5-utt1"]["reason"] == "oov" and "QWXZPT" in listed["spk5-utt1"]["detail"]
    assert s["skipped_total"] == 6 and sum(s["skipped_by_reason"].values()) == 6
    assert [p["utterance"] for p in s["resampled"]] == ["spk5-utt0"]
    kept = {c.supervisions[0].id: c for k in ("train", "dev", "test") for c in _cuts(out, k)}
    assert not set(listed) & set(kept)
    assert kept["spk5-utt0"].sampling_rate == 16000 and kept["spk5-utt0"].load_features().shape[1] == 40
    assert abs(kept["spk5-utt0"].load_audio().shape[1] - 16000) <= 1
    total = sum(s["splits"][k]["utterances"] for k in ("train", "dev", "test"))
    assert total == 18 - 6


def test_on_bad_error_names_file_and_utterance(tmp_path):
    d = make_kaldi_dir(tmp_path)
    (d / "wav" / "spk0-utt1.wav").unlink()
    with pytest.raises(DataError) as e:
        prepare_data.run(prepare_data.build_parser().parse_args(
            ["--corpus", "kaldi", "--data-dir", str(d), "--out", str(tmp_path / "o"), "--quiet",
             "--on-bad", "error", "--jobs", "1"]))
    assert "spk0-utt1" in str(e.value) and "spk0-utt1.wav" in str(e.value) and "missing_audio" in str(e.value)


def test_min_duration_is_a_parameter(tmp_path):
    d = make_kaldi_dir(tmp_path)  # utterances of 1.0 and 1.1 s
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--min-duration", "1.05",
                    "--no-speed-perturb") == 0
    assert _summary(out)["skipped_by_reason"]["too_short"] == 6


def test_missing_kaldi_file_is_clear_error(tmp_path):
    d = make_kaldi_dir(tmp_path)
    (d / "utt2spk").unlink()
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(tmp_path / "o")) == 2


# ----------------------------------------------------------------------------------- Switchboard
SWBD_LINES = {
    "A": ["{c}A-ms98-a-0001 0.000000 0.500000 [silence]",
          "{c}A-ms98-a-0002 0.500000 2.000000 hello [noise] how are you",
          "{c}A-ms98-a-0003 2.000000 3.500000 [laughter-yes] i th[e]- the cat sat on the mat"],
    "B": ["{c}B-ms98-a-0001 0.000000 1.400000 uh-huh good morning",
          "{c}B-ms98-a-0002 1.400000 3.000000 i like green tea",
          "{c}B-ms98-a-0003 3.000000 4.000000 [silence]"],
}


def make_switchboard(root: Path, convs=("2001", "2002", "2003", "2004")) -> tuple:
    """LDC97S62-like audio (2-channel 8 kHz NIST SPHERE) and MS98 transcripts laid out as lhotse reads them."""
    audio = root / "LDC97S62" / "swb1_d1" / "data"
    trans = root / "swb_ms98_transcriptions"
    audio.mkdir(parents=True)
    for i, c in enumerate(convs):
        sf.write(str(audio / ("sw0%s.sph" % c)), _tone(4.0, 8000, i, channels=2), 8000, format="NIST",
                 subtype="PCM_16")
        d = trans / c[:2] / c[2:]
        d.mkdir(parents=True)
        for side in "AB":
            lines = [l.format(c="sw" + c) for l in SWBD_LINES[side]]
            (d / ("sw%s%s-ms98-a-trans.text" % (c, side))).write_text("\n".join(lines) + "\n")
            (d / ("sw%s%s-ms98-a-word.text" % (c, side))).write_text("")
    (trans / "sw-ms98-dict.text").write_text(
        "#\n# Switchboard lexicon (fake)\n[laughter] lau\n[silence] sil\ncat k ae t\nsat s ae t\non aa n\n"
        "the dh ax\nthe dh iy\nmat m ae t\ni ay\nyes y eh s\nhello hh ax l ow\nhow hh aw\nare aa r\n"
        "you y uw\nuh-huh ax hh ax\ngood g uh d\nmorning m ao r n ih ng\nlike l ay k\ngreen g r iy n\n"
        "tea t iy\n")
    return root / "LDC97S62", trans


@pytest.fixture
def sph_backend(monkeypatch):
    """The importer switches lhotse to libsndfile for SPHERE (no sph2pipe here); undo that afterwards."""
    monkeypatch.delenv("LHOTSE_AUDIO_BACKEND", raising=False)
    yield
    from lhotse.audio.backend import set_current_audio_backend

    set_current_audio_backend("default")


def test_switchboard_fake_release(tmp_path, sph_backend):
    audio, trans = make_switchboard(tmp_path)
    out = tmp_path / "swbd"
    assert _prepare("--corpus", "switchboard", "--audio-dir", str(audio), "--transcripts-dir", str(trans),
                    "--out", str(out)) == 0
    s = _summary(out)
    assert s["sample_rate"] == 8000 and s["skipped_total"] == 0
    cuts = {k: list(_cuts(out, k)) for k in ("train", "dev", "test")}
    texts = {c.supervisions[0].text for k in cuts for c in cuts[k]}
    assert "YES I THE CAT SAT ON THE MAT" in texts and "HELLO HOW ARE YOU" in texts
    assert "UH-HUH GOOD MORNING" in texts
    assert all(c.sampling_rate == 8000 for k in cuts for c in cuts[k])
    chans = {c.supervisions[0].speaker[-1]: c.channel for k in cuts for c in cuts[k]}
    assert chans == {"A": 0, "B": 1}
    recs = {k: {c.recording.id for c in cuts[k]} for k in cuts}
    assert recs["dev"] and recs["test"] and not recs["train"] & (recs["dev"] | recs["test"])
    assert len(cuts["train"]) == 2 * 4 * 3 and cuts["train"][0].load_features().shape[1] == 40


def test_switchboard_missing_transcript_side(tmp_path, sph_backend):
    audio, trans = make_switchboard(tmp_path, convs=("2001", "2002", "2003"))
    (trans / "20" / "02" / "sw2002B-ms98-a-trans.text").unlink()
    assert _prepare("--corpus", "switchboard", "--audio-dir", str(audio), "--transcripts-dir", str(trans),
                    "--out", str(tmp_path / "o")) == 2


def test_switchboard_own_lexicon(tmp_path, sph_backend):
    audio, trans = make_switchboard(tmp_path, convs=("2001", "2002", "2003"))
    out = tmp_path / "swbd"
    assert _prepare("--corpus", "switchboard", "--audio-dir", str(audio), "--transcripts-dir", str(trans),
                    "--out", str(out), "--lexicon", "swbd", "--no-speed-perturb") == 0
    lex = Lexicon.load(out / "lang" / "lexicon.txt")
    assert lex.pronunciations("THE") == [("DH", "AX"), ("DH", "IY")] and lex.phones[0] == "SIL"
    assert "swbd" not in _summary(out)["lexicon_source"] or "sw-ms98-dict.text" in _summary(out)["lexicon_source"]
    # a word the lexicon lacks: clear error by default, counted skip with --oov skip
    (trans / "sw-ms98-dict.text").write_text((trans / "sw-ms98-dict.text").read_text().replace("tea t iy\n", ""))
    assert _prepare("--corpus", "switchboard", "--audio-dir", str(audio), "--transcripts-dir", str(trans),
                    "--out", str(out), "--lexicon", "swbd", "--overwrite") == 2
    assert _prepare("--corpus", "switchboard", "--audio-dir", str(audio), "--transcripts-dir", str(trans),
                    "--out", str(out), "--lexicon", "swbd", "--overwrite", "--oov", "skip") == 0
    s = _summary(out)
    assert s["skipped_by_reason"]["oov"] == 3 and all("TEA" in p["detail"] for p in s["skipped"])


def _segmented_dir(root: Path, n_rec: int = 7, sr: int = 16000) -> Path:
    """rec<s>.wav (3 s) per speaker s, two segments each (0.0-1.2 and 1.5-2.9 s); rec0 is stereo with a
    different tone in each channel."""
    d = root / "segkaldi"
    d.mkdir(parents=True)
    wav, seg, text, u2s = [], [], [], []
    for s in range(n_rec):
        rec = "rec%d" % s
        x = np.stack([_tone(3.0, sr, 100), _tone(3.0, sr, 200)], axis=1) if s == 0 else _tone(3.0, sr, s)
        sf.write(str(d / (rec + ".wav")), x, sr, subtype="PCM_16")
        wav.append("%s %s" % (rec, d / (rec + ".wav")))
        for u, (a, b) in enumerate(((0.0, 1.2), (1.5, 2.9))):
            utt = "spk%d-%s-%d" % (s, rec, u)
            seg.append("%s %s %.2f %.2f" % (utt, rec, a, b))
            text.append("%s %s" % (utt, SENTS[(u + s) % len(SENTS)]))
            u2s.append("%s spk%d" % (utt, s))
    for name, lines in (("wav.scp", wav), ("segments", seg), ("text", text), ("utt2spk", u2s)):
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def test_kaldi_importer_accounts_for_every_input_entry(tmp_path):
    d = _segmented_dir(tmp_path)
    # a repeated id (the first line is used), an utterance without speaker, an inverted segment, a segment
    # far past its recording, a small overshoot (clamped, kept), a truncated file, a header-only file and
    # a transcript line that is not UTF-8
    (d / "text").write_text((d / "text").read_text() + "spk1-rec1-0 SOMETHING ELSE\n")
    (d / "utt2spk").write_text("".join(l + "\n" for l in (d / "utt2spk").read_text().splitlines()
                                       if not l.startswith("spk2-rec2-1 ")))
    _edit(d, "segments", "spk3-rec3-0", "rec3 2.00 1.00")
    _edit(d, "segments", "spk3-rec3-1", "rec3 1.50 5.00")
    _edit(d, "segments", "spk1-rec1-1", "rec1 1.50 3.30")
    b = (d / "rec4.wav").read_bytes()
    (d / "rec4.wav").write_bytes(b[:len(b) // 2])
    (d / "rec6.wav").write_bytes(b[:44])
    raw = (d / "text").read_bytes().replace(b"spk5-rec5-1 " + SENTS[0].encode(), b"spk5-rec5-1 HELLO W\xffRLD")
    (d / "text").write_bytes(raw)
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--no-speed-perturb",
                    "--channel", "1") == 0
    s = _summary(out)
    reasons = {}
    for p in s["skipped"]:
        reasons.setdefault(p["reason"], []).append(p["utterance"])
    assert reasons == {"duplicate_id": ["spk1-rec1-0"], "missing_speaker": ["spk2-rec2-1"],
                       "bad_segment": ["spk3-rec3-0", "spk3-rec3-1"],
                       "truncated_audio": ["spk4-rec4-0", "spk4-rec4-1"],
                       "unreadable_audio": ["spk6-rec6-0", "spk6-rec6-1"], "bad_text": ["spk5-rec5-1"]}
    bad_text = next(p for p in s["skipped"] if p["reason"] == "bad_text")
    assert "text line" in bad_text["detail"] and "UTF-8" in bad_text["detail"]
    kept = {c.supervisions[0].id: c for k in ("train", "dev", "test") for c in _cuts(out, k)}
    assert sorted(kept) == ["spk0-rec0-0", "spk0-rec0-1", "spk1-rec1-0", "spk1-rec1-1", "spk2-rec2-0",
                            "spk5-rec5-0"]
    # the counts add up: 14 distinct utterances + 1 repeated line = kept + skipped
    assert s["input_entries"] == {"train": 15}
    assert len(kept) + s["skipped_total"] == 15
    assert sum(s["splits"][k]["utterances"] for k in ("train", "dev", "test")) == len(kept)
    assert kept["spk1-rec1-0"].supervisions[0].text == SENTS[1]          # the first line of the repeated id
    assert abs(kept["spk1-rec1-1"].duration - 1.5) < 0.02                # 1.5-3.3 clamped to 1.5-3.0
    # the stereo recording gives the chosen channel
    assert [p["utterance"] for p in s["channel_selected"]] == ["spk0-rec0-0", "spk0-rec0-1"]
    a = kept["spk0-rec0-0"].load_audio()
    ref, _ = sf.read(str(d / "rec0.wav"), frames=a.shape[1])
    assert a.shape[0] == 1 and np.allclose(a[0], ref[:, 1], atol=1e-4)


def test_kaldi_importer_channel_out_of_range_and_too_few_speakers(tmp_path):
    d = _segmented_dir(tmp_path, n_rec=4)
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out), "--no-speed-perturb",
                    "--channel", "2") == 0
    s = _summary(out)
    # the stereo rec0 has no channel 2 (skipped); mono recordings give their one channel
    assert s["skipped_by_reason"]["bad_channel"] == 2 and s["input_entries"] == {"train": 8}
    assert s["skipped_total"] == 2 and s["channel_selected_total"] == 0
    # 2 speakers: holding out speakers for dev and test is impossible -> a clear error naming the fix
    d2 = _segmented_dir(tmp_path / "two", n_rec=2)
    with pytest.raises(DataError, match="--dev-dir DEV --test-dir TEST"):
        prepare_data.run(prepare_data.build_parser().parse_args(
            ["--corpus", "kaldi", "--data-dir", str(d2), "--out", str(tmp_path / "o2"), "--quiet", "--jobs", "1"]))


def test_non_finite_audio_is_a_counted_skip(tmp_path):
    """A float WAV may hold NaN/inf samples: the utterance (and its speed-perturbed copies) is skipped and
    named, and CMVN stays finite."""
    d = make_kaldi_dir(tmp_path)
    x = _tone(1.0, 16000, 99)
    x[100:110] = np.nan
    bad = d / "wav" / "spk0-utt0.wav"
    sf.write(str(bad), x, 16000, subtype="FLOAT")
    out = tmp_path / "out"
    assert _prepare("--corpus", "kaldi", "--data-dir", str(d), "--out", str(out)) == 0
    s = _summary(out)
    assert s["skipped_by_reason"]["corrupt_audio"] == 1
    (p,) = [p for p in s["skipped"] if p["reason"] == "corrupt_audio"]
    assert p["utterance"] == "spk0-utt0" and "non-finite" in p["detail"]
    assert all(not c.id.startswith("spk0-utt0") for sp in ("train", "dev", "test") for c in _cuts(out, sp))
    cmvn = json.loads((out / "cmvn.json").read_text())
    assert np.isfinite(cmvn["mean"]).all() and np.isfinite(cmvn["std"]).all()
