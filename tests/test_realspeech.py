"""The real-speech check set (corpus.realspeech): index parsing, text normalisation, counted skips, the
evaluation-only prepared dir, the duration check, and the transcript verifier's outlier rule."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpus.realspeech import INDEX, SOUNDS, import_asterisk, prompt_text, read_index, split_of
from corpus.validate import SkipLog, duration_check


@pytest.mark.parametrize("raw,want", [
    ("Press 1 to mute, or # to exit.", ("PRESS ONE TO MUTE OR POUND TO EXIT", "")),
    ("press * to toggle pause", ("PRESS STAR TO TOGGLE PAUSE", "")),
    ("Call-Forward on No Answer.", ("CALL FORWARD ON NO ANSWER", "")),
    ("You are caller number 12", ("YOU ARE CALLER NUMBER TWELVE", "")),
    ("party's extension", ("PARTY'S EXTENSION", "")),
    ("at [@]", ("AT", "")),
    ("[this is a simple beep tone]", (None, "non_speech")),
    ("(10 seconds of silence)", (None, "non_speech")),
    ("<beep ascending>", (None, "non_speech")),
    ("dial 8500 now", (None, "ambiguous_text")),
    ("H.323", (None, "ambiguous_text")),
    ("3D audio enabled", (None, "ambiguous_text")),
])
def test_prompt_text(raw, want):
    assert prompt_text(raw) == want


def test_split_of_is_stable_and_balanced():
    names = ["prompt-%d" % i for i in range(400)]
    dev = [n for n in names if split_of(n) == "dev"]
    assert [split_of(n) for n in names] == [split_of(n) for n in names]
    assert 150 < len(dev) < 250


def _tone(path: Path, seconds: float, sr: int = 8000, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")


def fake_asterisk(root: Path) -> Path:
    """A miniature unpacked asterisk-core-sounds-en tree: 8 good prompts (two in a subdirectory), one without
    audio, one duplicate, two non-speech, one ambiguous, one unreadable file, one file with no index line."""
    lines = ["; Core Asterisk Sounds in English", "",
             "activated: Activated.", "cancelled: Cancelled.", "goodbye: Goodbye.",
             "auth-thankyou: Thank you.", "call-waiting: Call waiting.",
             "check-number-dial-again: Please check the number and dial again.",
             "digits/2: two", "digits/7: seven",
             "missing-file: This file is missing.", "activated: Activated again.",
             "beep: [this is a simple beep tone]", "silence/1: (1 second of silence)",
             "spy-h323: H.323", "broken: Broken file."]
    idx = root / INDEX
    idx.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(idx, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    snd = root / SOUNDS
    durations = {"activated": 0.9, "cancelled": 0.9, "goodbye": 0.8, "auth-thankyou": 0.8, "call-waiting": 1.0,
                 "check-number-dial-again": 2.2, "digits/2": 0.6, "digits/7": 0.7, "beep": 0.3, "silence/1": 1.0,
                 "spy-h323": 0.9, "unindexed": 1.0}
    for i, (name, sec) in enumerate(durations.items()):
        _tone(snd / (name + ".wav"), sec, seed=i)
    (snd / "broken.wav").write_bytes(b"not a wav file")
    return root


def test_import_asterisk_counts_every_entry(tmp_path):
    root = fake_asterisk(tmp_path / "root")
    assert len(read_index(root)) == 14
    log = SkipLog()
    splits = import_asterisk(root, 16000, log)
    kept = {c.id: c for name in ("dev", "test") for c in splits[name]}
    assert len(splits["train"]) == 0
    assert len(kept) == 8
    assert kept["asterisk_allison_digits_7"].supervisions[0].text == "SEVEN"
    assert kept["asterisk_allison_check-number-dial-again"].supervisions[0].text == \
        "PLEASE CHECK THE NUMBER AND DIAL AGAIN"
    reasons = sorted(p.reason for p in log.skipped)
    assert reasons == ["ambiguous_text", "duplicate_id", "missing_audio", "non_speech", "non_speech",
                       "unreadable_audio"]
    assert sum(log.inputs.values()) == 14
    assert log.unindexed == ["unindexed.wav"]
    for c in kept.values():  # each prompt in the split its name hashes to; recordings keep their 8 kHz
        assert c.recording.sampling_rate == 8000
        assert c in splits[split_of(c.supervisions[0].custom["prompt"])]


def test_prepare_asterisk_end_to_end(tmp_path):
    import prepare_data

    src = tmp_path / "src"
    fake_asterisk(src / "root")
    out = tmp_path / "real"
    rc = prepare_data.main(["--corpus", "asterisk", "--source-dir", str(src), "--out", str(out), "--jobs", "1",
                            "--quiet", "--oov", "skip"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["splits"]["train"]["utterances"] == 0
    assert s["splits"]["dev"]["utterances"] + s["splits"]["test"]["utterances"] == 8
    assert s["skipped_total"] == 6 and s["unindexed_audio_total"] == 1
    assert s["sample_rate"] == 16000 and s["resampled_total"] == 8
    assert not (out / "cmvn.json").exists()  # evaluation-only: models carry their own CMVN
    prompts = (out / "lm_prompts.txt").read_text().splitlines()
    assert len(prompts) == 8 and "THANK YOU" in prompts


def _cuts(durs_texts):
    from lhotse import MonoCut, SupervisionSegment

    out = []
    for i, (d, t) in enumerate(durs_texts):
        sup = SupervisionSegment(id="u%d" % i, recording_id="r%d" % i, start=0.0, duration=d, text=t)
        out.append(MonoCut(id="u%d" % i, start=0.0, duration=d, channel=0, supervisions=[sup]))
    return out


def test_duration_check_flags_a_transcript_that_does_not_fit():
    from lang.lexicon import Lexicon

    rng = np.random.default_rng(0)
    words = ["HELLO", "WORLD", "PLEASE", "ENTER", "YOUR", "NUMBER", "THANK", "YOU", "GOODBYE", "AGAIN"]
    lex = Lexicon.from_cmudict(words)
    rows = []
    for i in range(60):
        t = " ".join(rng.choice(words, size=int(rng.integers(1, 9))))
        n = sum(len(lex.pronunciations(w)[0]) for w in t.split())
        rows.append((0.3 + 0.09 * n * float(rng.uniform(0.9, 1.1)), t))
    clean = duration_check(_cuts(rows), lex)
    assert clean["outliers_total"] == 0
    assert abs(clean["s_per_phone"] - 0.09) < 0.01 and abs(clean["silence_s"] - 0.3) < 0.1
    rows[5] = (rows[5][0], " ".join(words * 3))  # a long transcript on a short clip
    bad = duration_check(_cuts(rows), lex)
    assert [o["utterance"] for o in bad["outliers"]] == ["u5"] and bad["outliers"][0]["z"] < -3.5


def test_transcript_verifier_outlier_rule():
    from verify_transcripts import robust_outliers

    rows = [("u%d" % i, 100, -0.10 - 0.01 * (i % 5)) for i in range(40)]
    rows.append(("bad", 100, -1.5))
    rows.append(("unscorable", 100, math.nan))
    stats, outl = robust_outliers(rows, 3.5)
    assert [o["utterance"] for o in outl] == ["unscorable", "bad"]
    assert stats["unscored"] == 1 and -0.13 < stats["median"] < -0.11


def test_verify_transcripts_cli_writes_a_report(tiny_corpus, small_train_config, tmp_path):
    """The forced-alignment check end to end on a briefly trained model: every utterance scored, the rotated
    transcripts scored too, the report written atomically."""
    from tests.conftest import run_cli

    exp = tmp_path / "m"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--out", exp, "--no-progress"])
    out = tmp_path / "check.json"
    run_cli(["verify_transcripts.py", "--model", exp / "model.pt", "--data-dir", tiny_corpus,
             "--train-data-dir", tiny_corpus, "--splits", "dev", "--shuffle-check", "--out", out])
    r = json.loads(out.read_text())
    n_dev = json.loads((Path(tiny_corpus) / "summary.json").read_text())["splits"]["dev"]["utterances"]
    dev = r["splits"]["dev"]
    assert dev["utterances"] == n_dev and dev["unscored"] == 0 and math.isfinite(dev["median"])
    assert dev["shuffled"]["utterances"] == n_dev and math.isfinite(dev["shuffled"]["median"])
    assert dev["duration_check"]["utterances"] == n_dev
    assert not Path(str(out) + ".tmp").exists()


def test_render_check_set_reads_the_same_transcripts_in_the_tts_test_voices(tmp_path):
    """scripts/render_check_set.py: every check-set utterance keeps its id and words, read at 8 kHz by the
    synthetic corpus's test voices, prepared like the check set."""
    import prepare_data
    from lhotse import CutSet

    from corpus import tts
    from tests.conftest import run_cli

    src = tmp_path / "src"
    fake_asterisk(src / "root")
    real = tmp_path / "real"
    assert prepare_data.main(["--corpus", "asterisk", "--source-dir", str(src), "--out", str(real), "--jobs", "1",
                              "--quiet", "--oov", "skip"]) == 0
    out = tmp_path / "rendered"
    run_cli(["scripts/render_check_set.py", "--real", real, "--out", out])
    voices = {v.id for v in tts.speakers_for_split("test")}
    for split in ("dev", "test"):
        want = {c.id: c.supervisions[0].text for c in CutSet.from_file(real / f"cuts_{split}.jsonl.gz")}
        got = CutSet.from_file(out / f"cuts_{split}.jsonl.gz")
        assert {c.id: c.supervisions[0].text for c in got} == want
        assert {c.supervisions[0].speaker for c in got} <= voices
        for c in got:
            info = sf.info(str(tmp_path / "rendered_raw" / "wav" / split / f"{c.id}.wav"))
            assert info.samplerate == 8000 and info.duration > 0.2
    assert json.loads((out / "summary.json").read_text())["sample_rate"] == 16000
