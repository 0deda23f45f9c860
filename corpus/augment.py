"""Training-data augmentation of the synthetic corpus: reverberation, additive noise, telephone channel, gain.

The synthetic TTS voices are clean, wide-band and anechoic; real telephone speech is band-limited
(300-3400 Hz at 8 kHz), coded (G.711 mu-law, GSM 06.10), reverberant and noisy.  Each training utterance
gets a *plan* (:func:`plan_augmentation`): a small JSON-able dict of the effects drawn for it, e.g.
``{"noise": "pink", "snr_db": 10.0, "rt60_s": 0.43, "drr_db": 3.1, "telephone": "mulaw", "gain_db": -2.0}``
(keys of effects not applied are absent; ``{}`` is a clean utterance).  :func:`apply_augmentation`
applies a plan in a fixed order: reverb -> noise -> telephone band/codec -> gain.

* Config (:class:`AugmentConfig`, YAML via :func:`load_augment_config`): its defaults reproduce the
  corpus as it was before this module existed, byte for byte: half of the training utterances get white,
  pink or brown noise at 5/10/15/20 dB SNR, nothing else.
* Randomness: the plan's noise draws come from the caller's shared generator exactly as
  ``corpus.synth.plan`` always drew them (``random() < noise_prob``, then the type index, then the SNR
  index); the other effects draw only when their probability (or gain range) is non-zero.  The signals
  (noise, room impulse response) come from the per-utterance generator given to :func:`apply_augmentation`.
* Audio: float64 arrays of shape ``(n,)`` (mono samples in [-1, 1]) at ``sr`` Hz.  The telephone channel
  works at 8 kHz (FFT resampling there and back, band-pass, then the codec at 8 kHz); GSM 06.10 goes
  through ``sox`` (its ``gsm`` format), mu-law is computed here.
"""
from __future__ import annotations

import functools
import math
import shutil
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

NOISE_TYPES = ("white", "pink", "brown")
CODECS = ("none", "mulaw", "gsm")
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # flat pass band
TELEPHONE_EDGE_HZ = (200.0, 3600.0)  # raised-cosine skirts down to 0 at these frequencies
_PAD_S = 0.1  # zeros appended before FFT filtering/resampling, so the circular wrap-around stays in them
MAX_RT60_S = 3.0
MAX_ABS_GAIN_DB = 40.0

# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`plan_augmentation` draws per training utterance (defaults: noise only, as before).

    Probabilities are in [0, 1]; ranges are ``(low, high)`` pairs drawn uniformly (``low == high``: fixed).
    """

    noise_prob: float = 0.5
    noise_snrs_db: Tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)  # one drawn uniformly
    noise_types: Tuple[str, ...] = NOISE_TYPES  # one drawn uniformly
    reverb_prob: float = 0.0
    rt60_s: Tuple[float, float] = (0.2, 0.7)  # range, seconds for the reverberant energy to fall 60 dB
    direct_to_reverb_db: Tuple[float, float] = (0.0, 10.0)  # range, direct-path / reverberant-tail energy
    telephone_prob: float = 0.0
    codecs: Tuple[str, ...] = CODECS  # one drawn uniformly when the telephone channel is applied
    gain_db: Tuple[float, float] = (0.0, 0.0)  # range of a level change applied last

    def __post_init__(self):  # validate, and store numbers as float and lists as tuples
        def put(name, value):
            object.__setattr__(self, name, value)

        for name in ("noise_prob", "reverb_prob", "telephone_prob"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"augment config: {name} must be a number in [0, 1], got {p!r}")
            put(name, float(p))
        for name in ("noise_snrs_db", "noise_types", "rt60_s", "direct_to_reverb_db", "codecs", "gain_db"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"augment config: {name} must be a list, got {v!r}")
            put(name, tuple(v))
        put("noise_snrs_db", _floats("noise_snrs_db", self.noise_snrs_db))
        if not self.noise_snrs_db:
            raise ValueError("augment config: noise_snrs_db must list at least one SNR")
        _names("noise_types", self.noise_types, NOISE_TYPES)
        _names("codecs", self.codecs, CODECS)
        put("rt60_s", _range("rt60_s", self.rt60_s))
        if not 0.0 < self.rt60_s[0] <= self.rt60_s[1] <= MAX_RT60_S:
            raise ValueError(f"augment config: rt60_s must satisfy 0 < low <= high <= {MAX_RT60_S}, "
                             f"got {list(self.rt60_s)}")
        put("direct_to_reverb_db", _range("direct_to_reverb_db", self.direct_to_reverb_db))
        put("gain_db", _range("gain_db", self.gain_db))
        if max(map(abs, self.gain_db)) > MAX_ABS_GAIN_DB:
            raise ValueError(f"augment config: gain_db must lie within +-{MAX_ABS_GAIN_DB} dB, "
                             f"got {list(self.gain_db)}")

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], source: str = "augment config") -> "AugmentConfig":
        """Config from a mapping (YAML); unknown keys and bad values are a ``ValueError`` naming them."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a mapping of options, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        bad = sorted(set(d) - set(known))
        if bad:
            raise ValueError(f"{source}: unknown key(s) {bad}; known: {known}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{source}: {str(e).replace('augment config: ', '')}") from None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form (tuples as lists); ``from_dict(to_dict())`` gives the config back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def check_tools(self) -> None:
        """Raise ``RuntimeError`` if an effect this config can draw needs a program that is missing."""
        if self.telephone_prob > 0 and "gsm" in self.codecs:
            _require_gsm()


def _floats(name: str, v) -> Tuple[float, ...]:
    if not isinstance(v, tuple) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
        raise ValueError(f"augment config: {name} must be a list of numbers, got {v!r}")
    if not all(math.isfinite(a) for a in v):
        raise ValueError(f"augment config: {name} must be finite, got {list(v)}")
    return tuple(float(a) for a in v)


def _range(name: str, v) -> Tuple[float, float]:
    r = _floats(name, v)
    if len(r) != 2 or r[0] > r[1]:
        raise ValueError(f"augment config: {name} must be a range [low, high] with low <= high, got {list(v)}")
    return r[0], r[1]


def _names(name: str, v, allowed: Tuple[str, ...]) -> None:
    if not isinstance(v, tuple) or not v or not all(isinstance(a, str) for a in v):
        raise ValueError(f"augment config: {name} must be a non-empty list of names from {list(allowed)}, "
                         f"got {v!r}")
    bad = sorted(set(v) - set(allowed))
    if bad:
        raise ValueError(f"augment config: {name}: unknown {bad}; known: {list(allowed)}")


def load_augment_config(path: Union[str, Path]) -> AugmentConfig:
    """:class:`AugmentConfig` from a YAML file of its fields (an empty file gives the defaults)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"augment config {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    return AugmentConfig.from_dict(d, source=str(path))


# ------------------------------------------------------------------------------------------------ noise


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec = spec / (np.sqrt(f) if kind == "pink" else f)
    out = np.fft.irfft(spec, n)
    return out - out.mean()


def add_noise(samples: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``kind`` noise at ``snr_db`` relative to the mean power of ``samples`` (float in [-1, 1])."""
    noise = _noise(kind, len(samples), rng)
    p_sig = float(np.mean(samples ** 2)) + 1e-12
    p_noise = float(np.mean(noise ** 2)) + 1e-12
    noise *= np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10.0)))
    return np.clip(samples + noise, -1.0, 1.0)


# ----------------------------------------------------------------------------------------------- reverb


def synthetic_rir(rt60_s: float, sr: int, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Room impulse response ``(ceil(rt60_s * sr) + 1,)``: a unit direct-path impulse at index 0, then a
    Gaussian-noise tail (from index 1) whose energy envelope falls 60 dB in ``rt60_s`` seconds, scaled so
    that (direct energy) / (tail energy) = ``drr_db`` dB."""
    if not rt60_s > 0 or sr <= 0:
        raise ValueError(f"synthetic_rir needs rt60_s > 0 and sr > 0, got {rt60_s}, {sr}")
    n_tail = int(math.ceil(rt60_s * sr))
    t = np.arange(1, n_tail + 1, dtype=np.float64) / sr
    tail = rng.standard_normal(n_tail) * 10.0 ** (-3.0 * t / rt60_s)  # amplitude -60 dB at rt60
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / float(np.sum(tail ** 2)))
    return np.concatenate([[1.0], tail])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``x`` (n,) convolved with ``rir`` (m,) by FFT, the first n samples (the tail past the end is
    dropped), scaled to ``x``'s RMS (an all-zero ``x`` stays zero)."""
    n = len(x)
    if n == 0:
        return np.zeros(0)
    size = 1 << (n + len(rir) - 2).bit_length()  # power of two >= n + m - 1
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[:n]
    r_in, r_out = _rms(x), _rms(y)
    return y * (r_in / r_out) if r_out > 0 else np.zeros(n)


# -------------------------------------------------------------------------------------- telephone channel


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """FFT resampling of ``x`` (n,) to ``n * sr_out / sr_in`` samples (must be an integer): an ideal
    low-pass at the lower Nyquist frequency (the signal is treated as periodic)."""
    n = len(x)
    if sr_in == sr_out:
        return x.copy()
    n_out, rem = divmod(n * sr_out, sr_in)
    if rem:
        raise ValueError(f"{n} samples at {sr_in} Hz is not a whole number of samples at {sr_out} Hz")
    spec = np.fft.rfft(x)
    k = min(len(spec), n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    out[:k] = spec[:k]
    if k == n_out // 2 + 1 and n_out % 2 == 0:
        out[-1] = 0.0  # the new Nyquist bin would alias; drop it
    return np.fft.irfft(out, n_out) * (n_out / n)


def _band_pass(x: np.ndarray, sr: int) -> np.ndarray:
    """Zero-phase FFT band-pass of ``x`` (n,): gain 1 in TELEPHONE_BAND_HZ, raised-cosine skirts to 0 at
    TELEPHONE_EDGE_HZ, 0 outside."""
    (lo0, hi0), (lo1, hi1) = TELEPHONE_EDGE_HZ, TELEPHONE_BAND_HZ
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    g = np.zeros_like(f)
    g[(f >= lo1) & (f <= hi1)] = 1.0
    up = (f > lo0) & (f < lo1)
    g[up] = 0.5 - 0.5 * np.cos(np.pi * (f[up] - lo0) / (lo1 - lo0))
    down = (f > hi1) & (f < hi0)
    g[down] = 0.5 + 0.5 * np.cos(np.pi * (f[down] - hi1) / (hi0 - hi1))
    return np.fft.irfft(np.fft.rfft(x) * g, len(x))


def _via_8k(x: np.ndarray, sr: int, at_8k) -> np.ndarray:
    """``x`` (n,) at ``sr`` Hz -> 8 kHz -> ``at_8k`` -> back to ``sr`` Hz, (n,).  Zeros are appended first
    (at least _PAD_S s, to a length that maps to whole 8 kHz samples) and cut off at the end."""
    if sr < TELEPHONE_RATE:
        raise ValueError(f"the telephone channel needs a sample rate >= {TELEPHONE_RATE} Hz, got {sr}")
    n = len(x)
    step = sr // math.gcd(sr, TELEPHONE_RATE)
    total = n + int(math.ceil(_PAD_S * sr))
    total += (-total) % step
    xp = np.concatenate([np.asarray(x, dtype=np.float64), np.zeros(total - n)])
    y8 = at_8k(_resample(xp, sr, TELEPHONE_RATE))
    return _resample(y8, TELEPHONE_RATE, sr)[:n]


def telephone_band(x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` (n,) at ``sr`` Hz (>= 8000) through a telephone channel without codec: resampled to 8 kHz,
    band-passed to 300-3400 Hz (skirts 200-300 and 3400-3600 Hz), resampled back; (n,) float64."""
    return _via_8k(x, sr, lambda y: _band_pass(y, TELEPHONE_RATE))


def mulaw_roundtrip(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """``x`` (n,) (clipped to [-1, 1]) mu-law compressed, quantised to 8 bits (255 levels, mid-tread, so
    0 stays 0) and expanded back; (n,) float64.  The step grows with the level: relative error is roughly
    constant over a wide dynamic range."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    c = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    q = np.round(c * 127.0) / 127.0
    return np.sign(q) * np.expm1(np.abs(q) * math.log1p(mu)) / mu


@functools.lru_cache(maxsize=1)
def sox_has_gsm() -> bool:
    """Whether ``sox`` is installed and lists the ``gsm`` audio format."""
    if shutil.which("sox") is None:
        return False
    r = subprocess.run(["sox", "-h"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("AUDIO FILE FORMATS:"):
            return "gsm" in line.split(":", 1)[1].split()
    return False


def _require_gsm() -> None:
    if not sox_has_gsm():
        raise RuntimeError("codec 'gsm' needs sox with the gsm audio format (sox -h lists AUDIO FILE FORMATS); "
                           "install libsox-fmt-all or leave 'gsm' out of codecs")


def _gsm_8k(x: np.ndarray) -> np.ndarray:
    """``x`` (n,) at 8 kHz through a GSM 06.10 encoder and decoder (sox); (n,) float64."""
    _require_gsm()
    raw = ["-t", "raw", "-e", "floating-point", "-b", "64", "-r", str(TELEPHONE_RATE), "-c", "1"]
    pcm = np.clip(np.asarray(x, dtype="<f8"), -1.0, 1.0).tobytes()
    enc = subprocess.run(["sox", "-R", "-D", *raw, "-", "-t", "gsm", "-"], input=pcm, capture_output=True)
    if enc.returncode != 0:
        raise RuntimeError("sox GSM encoding failed: %s" % enc.stderr.decode(errors="replace").strip())
    dec = subprocess.run(["sox", "-R", "-D", "-t", "gsm", "-r", str(TELEPHONE_RATE), "-c", "1", "-", *raw, "-"],
                         input=enc.stdout, capture_output=True)
    if dec.returncode != 0:
        raise RuntimeError("sox GSM decoding failed: %s" % dec.stderr.decode(errors="replace").strip())
    y = np.frombuffer(dec.stdout, dtype="<f8").astype(np.float64)  # whole 160-sample frames
    return np.concatenate([y, np.zeros(max(0, len(x) - len(y)))])[: len(x)]


def gsm_roundtrip(x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` (n,) at ``sr`` Hz (>= 8000) resampled to 8 kHz, GSM 06.10 encoded and decoded (sox), resampled
    back; (n,) float64.  ``RuntimeError`` if sox lacks the gsm format."""
    _require_gsm()
    return _via_8k(x, sr, _gsm_8k)


def _codec_8k(codec: str):
    if codec == "none":
        return lambda y: y
    if codec == "mulaw":
        return mulaw_roundtrip
    if codec == "gsm":
        return _gsm_8k
    raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")


def telephone(x: np.ndarray, sr: int, codec: str) -> np.ndarray:
    """``x`` (n,) at ``sr`` Hz through the telephone channel: 8 kHz, 300-3400 Hz band, then ``codec``
    (none | mulaw | gsm) at 8 kHz, back to ``sr``; (n,) float64."""
    code = _codec_8k(codec)
    return _via_8k(x, sr, lambda y: code(_band_pass(y, TELEPHONE_RATE)))


# ----------------------------------------------------------------------------------------- plan, apply


def _uniform(rng: np.random.Generator, lo_hi: Tuple[float, float], digits: int) -> float:
    lo, hi = lo_hi
    return round(float(rng.uniform(lo, hi)), digits) if hi > lo else float(lo)


def plan_augmentation(cfg: AugmentConfig, rng: np.random.Generator,
                      effect_rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
    """Draw the effects of one utterance: a JSON-able dict with ``noise`` (type) and ``snr_db``;
    ``rt60_s`` and ``drr_db``; ``telephone`` (the codec: none | mulaw | gsm); ``gain_db`` -- keys only for
    the effects applied (``{}``: clean).

    ``rng`` always gives ``random() < noise_prob`` and, when noise is applied, the type index then the SNR
    index (the draws of the original corpus).  Reverb, telephone and gain draw from ``effect_rng`` (default
    ``rng``), and only when their probability is > 0 (gain: when its range is not a single value).
    Drawn values are rounded (rt60 to 1 ms, DRR and gain to 0.01 dB) so that the plan is exact."""
    plan: Dict[str, Any] = {}
    if rng.random() < cfg.noise_prob:
        plan["noise"] = cfg.noise_types[int(rng.integers(len(cfg.noise_types)))]
        plan["snr_db"] = float(cfg.noise_snrs_db[int(rng.integers(len(cfg.noise_snrs_db)))])
    er = rng if effect_rng is None else effect_rng
    if cfg.reverb_prob > 0 and er.random() < cfg.reverb_prob:
        plan["rt60_s"] = _uniform(er, cfg.rt60_s, 3)
        plan["drr_db"] = _uniform(er, cfg.direct_to_reverb_db, 2)
    if cfg.telephone_prob > 0 and er.random() < cfg.telephone_prob:
        plan["telephone"] = cfg.codecs[int(er.integers(len(cfg.codecs)))]
    if cfg.gain_db != (0.0, 0.0):
        plan["gain_db"] = _uniform(er, cfg.gain_db, 2)
    return plan


def apply_augmentation(x: np.ndarray, sr: int, plan: Dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``x`` (n,) float samples at ``sr`` Hz with ``plan``'s effects applied in the order reverb -> noise ->
    telephone band/codec -> gain; (n,) float64, finite, clipped to [-1, 1].  ``rng`` (per utterance) gives
    the room impulse response, then the noise signal."""
    y = np.asarray(x, dtype=np.float64)
    if "rt60_s" in plan:
        y = reverberate(y, synthetic_rir(float(plan["rt60_s"]), sr, float(plan["drr_db"]), rng))
    if "noise" in plan:
        y = add_noise(y, plan["noise"], float(plan["snr_db"]), rng)
    if "telephone" in plan:
        y = telephone(y, sr, plan["telephone"])
    if "gain_db" in plan:
        y = y * 10.0 ** (float(plan["gain_db"]) / 20.0)
    y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(y, -1.0, 1.0)


def effect_counts(plans) -> Dict[str, int]:
    """Utterances per effect over an iterable of plans: ``noise``, ``reverb``, ``telephone``,
    ``telephone_<codec>``, ``gain`` and ``clean`` (no effect)."""
    counts: Dict[str, int] = {"clean": 0, "noise": 0, "reverb": 0, "telephone": 0, "gain": 0}
    for c in CODECS:
        counts["telephone_" + c] = 0
    for p in plans:
        counts["clean"] += not p
        counts["noise"] += "noise" in p
        counts["reverb"] += "rt60_s" in p
        counts["gain"] += "gain_db" in p
        if "telephone" in p:
            counts["telephone"] += 1
            counts["telephone_" + p["telephone"]] += 1
    return counts
