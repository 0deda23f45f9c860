"""Synthetic-corpus augmentation (corpus.augment): each effect against an independent computation, the
config's checks, determinism, and the default config drawing exactly the original noise plan."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from corpus import augment as A
from corpus.augment import AugmentConfig

ROOT = Path(__file__).resolve().parents[1]
TEL_YAML = ROOT / "configs" / "corpus_telephone.yaml"
SR = 16000


def _speech_like(sr: int = SR, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """(n,) a voiced-speech stand-in: 120 Hz harmonics shaped by two formants, syllable-rate (4 Hz)
    envelope, a little noise; peak 0.5."""
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120.0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.exp(-((k * 120.0 - 700.0) / 300.0) ** 2) * np.sin(k * phase)
            + 0.5 * np.exp(-((k * 120.0 - 1800.0) / 400.0) ** 2) * np.sin(k * phase) for k in range(1, 30))
    x = x * (0.3 + 0.7 * np.sin(2 * np.pi * 4 * t) ** 2)
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return 0.5 * x / np.abs(x).max()


def _snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2)))


def _psd(x: np.ndarray, sr: int, seg: int = 1024):
    """Welch power spectrum (Hann window, 50% overlap): frequencies (seg/2+1,), power (seg/2+1,)."""
    w = np.hanning(seg)
    frames = [x[i:i + seg] * w for i in range(0, len(x) - seg + 1, seg // 2)]
    p = np.mean([np.abs(np.fft.rfft(f)) ** 2 for f in frames], axis=0)
    return np.fft.rfftfreq(seg, 1.0 / sr), p


# --------------------------------------------------------------------------------------------- reverb

@pytest.mark.parametrize("rt60", [0.25, 0.5, 0.9])
def test_rir_energy_decays_60db_in_rt60(rt60):
    rir = A.synthetic_rir(rt60, SR, 5.0, np.random.default_rng(1))
    tail = rir[1:]
    edc = np.cumsum(tail[::-1] ** 2)[::-1]  # Schroeder backward integration
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(1, len(rir)) / SR
    sel = (edc_db <= -5) & (edc_db >= -35)
    slope = np.polyfit(t[sel], edc_db[sel], 1)[0]  # dB/s
    assert abs(slope - (-60.0 / rt60)) < 0.15 * 60.0 / rt60, (slope, -60.0 / rt60)


@pytest.mark.parametrize("drr", [-3.0, 0.0, 4.5, 10.0])
def test_rir_direct_to_reverberant_ratio(drr):
    rir = A.synthetic_rir(0.4, SR, drr, np.random.default_rng(2))
    assert np.argmax(np.abs(rir)) == 0 or drr < 0  # the direct path leads
    got = 10 * np.log10(rir[0] ** 2 / np.sum(rir[1:] ** 2))
    assert abs(got - drr) < 1.0, got


def test_reverberate_matches_direct_convolution_and_keeps_rms():
    x = _speech_like()
    rir = A.synthetic_rir(0.3, SR, 3.0, np.random.default_rng(3))
    y = A.reverberate(x, rir)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-9)
    ref = np.convolve(x, rir)[: len(x)]  # time-domain convolution, truncated
    ref *= np.sqrt(np.mean(x ** 2) / np.mean(ref ** 2))
    assert np.max(np.abs(y - ref)) < 1e-9
    assert np.array_equal(A.reverberate(np.zeros(100), rir), np.zeros(100))


# ---------------------------------------------------------------------------------------- telephone

def test_telephone_band_limits_white_noise():
    x = 0.1 * np.random.default_rng(4).standard_normal(2 * SR)
    y = A.telephone_band(x, SR)
    assert y.shape == x.shape and np.isfinite(y).all()
    f, py = _psd(y, SR)
    _, px = _psd(x, SR)
    in_band = py[(f >= 500) & (f <= 3000)].mean()
    assert 10 * np.log10(py[f >= 3600].mean() / in_band) < -40
    assert 10 * np.log10(py[f >= 4200].mean() / in_band) < -60  # nothing survives above 8 kHz's Nyquist
    low = (f > 0) & (f < 200)
    assert 10 * np.log10(py[low].sum() / px[low].sum()) < -20  # below 200 Hz: reduced
    assert abs(10 * np.log10(in_band / px[(f >= 500) & (f <= 3000)].mean())) < 0.5  # pass band kept


def test_telephone_at_8k_and_every_codec_keeps_length():
    x8 = _speech_like(8000, 1.0)[:7777]
    for codec in ("none", "mulaw") + (("gsm",) if A.sox_has_gsm() else ()):
        for x, sr in ((x8, 8000), (_speech_like(SR, 0.7)[:11111], SR)):
            y = A.telephone(x, sr, codec)
            assert y.shape == x.shape and np.isfinite(y).all()
            assert np.corrcoef(x, y)[0, 1] > 0.5, codec
    with pytest.raises(ValueError, match="sample rate"):
        A.telephone_band(np.zeros(100), 4000)


def test_mulaw_roundtrip_error_is_relative_to_level():
    t = np.arange(SR) / SR
    full = 0.999 * np.sin(2 * np.pi * 441 * t)
    assert _snr_db(full, A.mulaw_roundtrip(full)) > 30
    # companding: at -40 dBFS mu-law still gives > 25 dB, while uniform 8-bit quantization (same 255 levels)
    # falls to ~10 dB; the quantization step grows with the level
    quiet = 0.01 * full
    mu, uni = _snr_db(quiet, A.mulaw_roundtrip(quiet)), _snr_db(quiet, np.round(quiet * 127) / 127)
    assert mu > 25 and mu > uni + 10, (mu, uni)
    err = np.abs(A.mulaw_roundtrip(full) - full)
    assert err[np.abs(full) > 0.5].max() > 5 * err[np.abs(full) < 0.05].max()
    assert A.mulaw_roundtrip(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    y = A.mulaw_roundtrip(np.array([-2.0, -1.0, 1.0, 3.0]))
    assert np.allclose(y, [-1, -1, 1, 1])
    assert len(np.unique(A.mulaw_roundtrip(np.linspace(-1, 1, 100001)))) <= 255


@pytest.mark.skipif(not A.sox_has_gsm(), reason="sox lacks the gsm audio format")
def test_gsm_roundtrip_keeps_length_and_waveform():
    for sr, n in ((SR, 12345), (8000, 8000)):
        x = _speech_like(sr, 1.0)[:n]
        y = A.gsm_roundtrip(x, sr)
        assert y.shape == x.shape and np.isfinite(y).all()
        assert np.corrcoef(x, y)[0, 1] > 0.5
        assert not np.allclose(x, y, atol=1e-3)  # it is lossy
        assert np.array_equal(y, A.gsm_roundtrip(x, sr))


def test_gsm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(A, "sox_has_gsm", lambda: False)
    with pytest.raises(RuntimeError, match="gsm"):
        A.gsm_roundtrip(np.zeros(800), 8000)
    with pytest.raises(RuntimeError, match="gsm"):
        AugmentConfig(telephone_prob=0.5).check_tools()
    AugmentConfig(telephone_prob=0.5, codecs=("none", "mulaw")).check_tools()
    AugmentConfig().check_tools()  # no telephone channel: gsm is never needed


# ------------------------------------------------------------------------------------- apply, plan

FULL = {"rt60_s": 0.4, "drr_db": 3.0, "noise": "pink", "snr_db": 10.0, "telephone": "mulaw", "gain_db": -2.0}


def test_apply_is_deterministic_per_utterance():
    from corpus.synth import _utt_rng

    x = _speech_like()
    plans = [FULL, dict(FULL, telephone="none"), {"rt60_s": 0.6, "drr_db": 0.0}, {"noise": "white", "snr_db": 5.0}]
    if A.sox_has_gsm():
        plans.append(dict(FULL, telephone="gsm"))
    for plan in plans:
        a = A.apply_augmentation(x, SR, plan, _utt_rng(0, "u1"))
        assert a.dtype == np.float64 and a.shape == x.shape and np.isfinite(a).all() and np.abs(a).max() <= 1
        assert np.array_equal(a, A.apply_augmentation(x, SR, plan, _utt_rng(0, "u1")))
        assert not np.array_equal(a, A.apply_augmentation(x, SR, plan, _utt_rng(0, "u2")))
        assert not np.array_equal(a, A.apply_augmentation(x, SR, plan, _utt_rng(1, "u1")))


def test_apply_order_and_each_effect():
    from corpus.synth import _utt_rng

    x = _speech_like()
    assert np.array_equal(A.apply_augmentation(x, SR, {}, _utt_rng(0, "u")), x)
    assert np.allclose(A.apply_augmentation(x, SR, {"gain_db": -6.0}, _utt_rng(0, "u")), x * 10 ** (-6 / 20))
    assert np.abs(A.apply_augmentation(x, SR, {"gain_db": 20.0}, _utt_rng(0, "u"))).max() == 1.0  # clipped
    # noise alone: exactly corpus.synth's old add_noise with the utterance generator
    plan = {"noise": "brown", "snr_db": 15.0}
    assert np.array_equal(A.apply_augmentation(x, SR, plan, _utt_rng(0, "u")),
                          A.add_noise(x, "brown", 15.0, _utt_rng(0, "u")))
    # reverb before noise: the room impulse response is drawn first from the same generator
    plan = {"rt60_s": 0.3, "drr_db": 2.0, "noise": "white", "snr_db": 10.0}
    rng = _utt_rng(0, "u")
    ref = A.add_noise(A.reverberate(x, A.synthetic_rir(0.3, SR, 2.0, rng)), "white", 10.0, rng)
    assert np.array_equal(A.apply_augmentation(x, SR, plan, _utt_rng(0, "u")), ref)
    # telephone after noise: the white noise is band-limited too
    y = A.apply_augmentation(x, SR, {"noise": "white", "snr_db": 0.0, "telephone": "none"}, _utt_rng(0, "u"))
    f, p = _psd(y, SR)
    assert 10 * np.log10(p[f >= 3600].mean() / p[(f >= 500) & (f <= 3000)].mean()) < -40


def _old_noise_draw(rng):
    """corpus.synth.plan's noise draws before corpus.augment existed."""
    if rng.random() < 0.5:
        kind = ("white", "pink", "brown")[int(rng.integers(3))]
        return kind, float((5.0, 10.0, 15.0, 20.0)[int(rng.integers(4))])
    return None


def test_default_config_draws_the_original_noise_plan():
    old_rng, new_rng = np.random.default_rng(1), np.random.default_rng(1)
    old, new = [], []
    for i in range(200):  # interleaved with another draw on the same generator, as the speaker choice is
        old.append((int(old_rng.choice(7, p=np.full(7, 1 / 7))), _old_noise_draw(old_rng)))
        spk = int(new_rng.choice(7, p=np.full(7, 1 / 7)))
        plan = A.plan_augmentation(AugmentConfig(), new_rng)
        new.append((spk, (plan["noise"], plan["snr_db"]) if plan else None))
        assert set(plan) <= {"noise", "snr_db"}
    assert old == new and 40 < sum(n is not None for _, n in new) < 160
    assert old_rng.random() == new_rng.random()  # the generator is left in the same state


def test_synth_plan_default_equals_original_and_effects_keep_it():
    """corpus.synth.plan with the default config gives the original plan (re-implemented here); adding
    reverb/telephone/gain changes no speaker, sentence or noise draw."""
    from corpus import tts
    from corpus.synth import plan, split_sentences, SIZES
    from corpus.text import load_sentences
    from lang.lexicon import cmudict_prons

    cmu = cmudict_prons()
    by_split = split_sentences(load_sentences(lambda w: w in cmu), SIZES["tiny"], 0)
    rng = np.random.default_rng(1)
    items, noise = {}, {}
    for split in ("train", "dev", "test"):
        spk = tts.speakers_for_split(split)
        w = np.array([s.base.weight for s in spk], dtype=np.float64)
        lst = []
        for i, text in enumerate(by_split[split]):
            s = spk[i] if i < len(spk) else spk[int(rng.choice(len(spk), p=w / w.sum()))]
            utt = "%s_%s%05d" % (s.id, split, i)
            lst.append(tts.SynthItem(utt, text, s))
            if split == "train":
                d = _old_noise_draw(rng)
                if d:
                    noise[utt] = {"noise": d[0], "snr_db": d[1]}
        items[split] = lst
    got_items, got_plans, _ = plan("tiny", 0)
    assert got_items == items and got_plans == noise
    tel_items, tel_plans, _ = plan("tiny", 0, A.load_augment_config(TEL_YAML))
    assert tel_items == items
    assert {u: {k: p[k] for k in ("noise", "snr_db")} for u, p in tel_plans.items() if "noise" in p} == noise
    assert set(tel_plans) <= {it.utt_id for it in items["train"]}


def test_plan_draws_each_effect_at_its_rate():
    cfg = A.load_augment_config(TEL_YAML)
    rng = np.random.default_rng(5)
    plans = [A.plan_augmentation(cfg, rng) for _ in range(3000)]
    assert json.loads(json.dumps(plans)) == plans
    counts = A.effect_counts(plans)
    for key, p in (("noise", 0.5), ("reverb", 0.4), ("telephone", 0.6), ("gain", 1.0)):
        assert abs(counts[key] / len(plans) - p) < 0.04, (key, counts)
    for c in cfg.codecs:
        assert abs(counts["telephone_" + c] / counts["telephone"] - 1 / len(cfg.codecs)) < 0.05
    rt = [p["rt60_s"] for p in plans if "rt60_s" in p]
    drr = [p["drr_db"] for p in plans if "rt60_s" in p]
    gain = [p["gain_db"] for p in plans]
    assert 0.2 <= min(rt) < 0.25 and 0.65 < max(rt) <= 0.7 and 0 <= min(drr) and max(drr) <= 10
    assert -6 <= min(gain) < -5.5 and 5.5 < max(gain) <= 6
    assert all(set(p) <= {"noise", "snr_db", "rt60_s", "drr_db", "telephone", "gain_db"} for p in plans)
    # a fixed gain is applied without a draw
    assert A.plan_augmentation(AugmentConfig(noise_prob=0.0, gain_db=(3.0, 3.0)), rng) == {"gain_db": 3.0}


# -------------------------------------------------------------------------------------------- config

def test_config_from_dict_and_yaml(tmp_path):
    assert AugmentConfig.from_dict({}) == AugmentConfig() == AugmentConfig.from_dict(None)
    cfg = A.load_augment_config(TEL_YAML)
    assert (cfg.noise_prob, cfg.reverb_prob, cfg.telephone_prob, cfg.gain_db) == (0.5, 0.4, 0.6, (-6.0, 6.0))
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())
    p = tmp_path / "a.yaml"
    p.write_text("reverb_prob: 1\nrt60_s: [0.3, 0.3]\ngain_db: [0, 0]\n")
    c = A.load_augment_config(p)
    assert c.reverb_prob == 1.0 and c.rt60_s == (0.3, 0.3) and c.gain_db == (0.0, 0.0)
    p.write_text("")
    assert A.load_augment_config(p) == AugmentConfig()
    p.write_text("reverb_prob: [0.3\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        A.load_augment_config(p)
    p.write_text("revreb_prob: 0.3\nnoise_prob: 0.2\nfoo: 1\n")
    with pytest.raises(ValueError, match=r"a\.yaml: unknown key\(s\) \['foo', 'revreb_prob'\]"):
        A.load_augment_config(p)
    with pytest.raises(FileNotFoundError):
        A.load_augment_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bad, match", [
    ({"noise_prob": 1.5}, "noise_prob must be a number in \\[0, 1\\]"),
    ({"reverb_prob": -0.1}, "reverb_prob"),
    ({"telephone_prob": "0.5"}, "telephone_prob"),
    ({"telephone_prob": True}, "telephone_prob"),
    ({"rt60_s": [0.0, 0.5]}, "rt60_s must satisfy 0 < low"),
    ({"rt60_s": [-0.2, 0.5]}, "rt60_s"),
    ({"rt60_s": [0.7, 0.2]}, "rt60_s must be a range"),
    ({"rt60_s": [0.2, 0.5, 0.7]}, "rt60_s must be a range"),
    ({"rt60_s": 0.5}, "rt60_s must be a list"),
    ({"direct_to_reverb_db": [10, 0]}, "direct_to_reverb_db"),
    ({"gain_db": [-6, float("nan")]}, "gain_db must be finite"),
    ({"gain_db": [-60, 0]}, "gain_db must lie within"),
    ({"noise_snrs_db": []}, "noise_snrs_db"),
    ({"noise_types": ["white", "purple"]}, "noise_types: unknown \\['purple'\\]"),
    ({"codecs": ["mulaw", "opus"]}, "codecs: unknown \\['opus'\\]"),
    ({"codecs": []}, "codecs"),
    ("noise_prob: 0.5", "expected a mapping"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig.from_dict(bad)


# ---------------------------------------------------------------------------------------- end to end

def test_prepare_data_rejects_a_bad_augment_config_before_writing(tmp_path, capsys):
    import prepare_data

    bad = tmp_path / "bad.yaml"
    bad.write_text("telephone_prob: 0.5\ncodec: [gsm]\n")
    out = tmp_path / "out"
    assert prepare_data.main(["--corpus", "synth", "--size", "tiny", "--out", str(out), "--augment-config",
                              str(bad)]) == 2
    assert "unknown key(s) ['codec']" in capsys.readouterr().err and not out.exists()
    assert prepare_data.main(["--corpus", "kaldi", "--data-dir", str(tmp_path), "--out", str(out),
                              "--augment-config", str(TEL_YAML)]) == 2
    assert "--corpus synth only" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(any(shutil.which(p) is None for p in ("flite", "festival", "espeak-ng", "sox")),
                    reason="TTS programs (flite festival espeak-ng sox) not installed")
def test_prepare_data_tiny_with_telephone_recipe(tmp_path):
    """prepare_data.py --augment-config end to end (about 20 s): training cuts carry their plans, dev/test
    are clean, summary.json counts the effects, a telephone utterance is band-limited."""
    import gzip

    import soundfile as sf

    import prepare_data
    from corpus.synth import plan

    out = tmp_path / "tel"
    assert prepare_data.main(["--corpus", "synth", "--size", "tiny", "--out", str(out), "--quiet", "--jobs", "1",
                              "--no-speed-perturb", "--augment-config", str(TEL_YAML)]) == 0
    cfg = A.load_augment_config(TEL_YAML)
    _, plans, _ = plan("tiny", 0, cfg)
    keys = {"noise", "snr_db", "rt60_s", "drr_db", "telephone", "gain_db"}

    def customs(split):
        with gzip.open(out / ("cuts_%s.jsonl.gz" % split), "rt") as f:
            cuts = [json.loads(line) for line in f]
        return {c["id"]: {k: v for k, v in c["supervisions"][0]["custom"].items() if k in keys} for c in cuts}

    train = customs("train")
    assert {u: p for u, p in train.items() if p} == plans
    assert not any(customs("dev").values()) and not any(customs("test").values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["augment"]["config"] == cfg.to_dict()
    assert summary["augment"]["counts"] == A.effect_counts(train.values())
    assert summary["augment"]["counts"]["telephone"] > 0 and summary["augment"]["config_file"] == str(TEL_YAML)
    utt = next(u for u, p in plans.items() if p.get("telephone") and "gain_db" in p)
    y, sr = sf.read(str(out / "audio" / (utt + ".wav")))
    f, p = _psd(y, sr)
    assert sr == SR and 10 * np.log10(p[f >= 3700].mean() / p[(f >= 500) & (f <= 3000)].mean()) < -40
