"""An experiment config of ``run_experiments.py`` as typed records, checked when it loads.

:func:`load_config` reads the YAML into an :class:`ExperimentConfig`: its systems (:class:`SystemSpec`),
the optional real-speech check set (:class:`RealSpeech`) and the optional LM part (:class:`LMSection`
with :class:`LMSystemSpec`). An unknown key, a missing or wrongly typed value and a reference to a system
that does not exist are a ValueError naming the file and the key. The switches a system inherits from
the top level (``search_from_fp32``, ``finetune_from_fp32``, ``distill_from_fp32``) are resolved here,
once, so the stages read ``s.<switch>`` and never look in two places.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

KINDS = ("fp32", "uniform", "kl", "hessian", "nas", "onnx")
LM_KINDS = ("fp32", "uniform", "kl", "hessian", "nas")


def _keys(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(where: str, d: Dict[str, Any], cls) -> None:
    unknown = sorted(set(d) - set(_keys(cls)))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(_keys(cls))}")


def _check_types(where: str, obj) -> None:
    """Each field against its annotation (str, int, float, bool, list, their Optional forms)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        t = str(f.type)
        if v is None:
            if not t.startswith("Optional"):
                raise ValueError(f"{where}: {f.name} must be set")
            continue
        if "List" in t:
            ok, what = isinstance(v, list), "a list"
        elif "bool" in t:
            ok, what = isinstance(v, bool), "true or false"
        elif "int" in t:
            ok, what = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif "float" in t:
            ok, what = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif "str" in t:
            ok, what = isinstance(v, str), "a string"
        else:
            ok, what = True, ""
        if not ok:
            raise ValueError(f"{where}: {f.name} must be {what}, got {v!r}")


def _check_budget(where: str, s) -> None:
    """budget_ratio (a compression factor, >= 1) and budget_bytes (> 0) must be finite numbers."""
    for key, low, strict in (("budget_ratio", 1, False), ("budget_bytes", 0, True)):
        v = getattr(s, key)
        if v is None:
            continue
        if not (math.isfinite(v) and (v > low if strict else v >= low)):
            raise ValueError(f"{where}: {key} must be a finite number {'>' if strict else '>='} {low}, got {v!r}")


@dataclass
class SystemSpec:
    """One system of the table. ``kind``: fp32 (the baseline), uniform (``bits``), kl / hessian / nas
    (``budget_ratio`` or ``budget_bytes``), onnx (``onnx_from``: another system exported to ONNX)."""

    name: str
    kind: str
    group: Optional[str] = None                  # legend / table group (default: the kind)
    bits: Optional[int] = None                   # uniform
    budget_ratio: Optional[float] = None         # kl / hessian / nas: fp32 bytes / budget
    budget_bytes: Optional[float] = None
    genotype_from: Optional[str] = None          # the same genotype as another system (e.g. more epochs)
    retrain_config: Optional[str] = None         # instead of the experiment's retrain/finetune config
    retrain_args: List[Any] = field(default_factory=list)
    search_config: Optional[str] = None          # nas: instead of the experiment's search config
    # nas: the search's weights start from this system's model.pt (a system listed before it, e.g. a
    # uniform QAT model: the search then judges each layer's bits around that operating point) instead
    # of the fp32 baseline's
    search_from: Optional[str] = None
    search_args: List[Any] = field(default_factory=list)
    sensitivity_args: List[Any] = field(default_factory=list)
    search_bottleneck: bool = True
    search_from_fp32: Optional[bool] = None      # None: the experiment's
    finetune_from_fp32: Optional[bool] = None
    # nas: fine-tune from the search's own weights for the genotype (its search dir's subnet.pt; with
    # genotype_from, that system's search) instead of the fp32 baseline's
    finetune_from_search: bool = False
    distill_from_fp32: Optional[bool] = None
    quant_trainer: Optional[str] = None
    reference: Optional[str] = None              # the system its WER changes are tested against
    onnx_from: Optional[str] = None
    onnx_args: List[Any] = field(default_factory=list)
    space: Optional[str] = None                  # None: the experiment's (same network, other choices)
    # more fine-tunings of the same genotype, one per seed (retrain.py --seed k, in <name>/seed<k>/); the
    # table gives the mean over the system's own run and these, and tests the means (docs/FILE_FORMATS.md)
    seeds: List[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.group or self.kind


@dataclass
class RealSpeech:
    """A second test set of real human speech (prepare_data.py --corpus asterisk), decoded for every system."""

    data_dir: str
    split: str = "test"
    lm_text: Optional[str] = None
    decode_args: Optional[List[Any]] = None      # None: the experiment's decode_args


@dataclass
class LMSystemSpec:
    name: str
    kind: str
    bits: Optional[int] = None
    budget_ratio: Optional[float] = None
    budget_bytes: Optional[float] = None
    quant_args: List[Any] = field(default_factory=list)


@dataclass
class LMSection:
    """The Transformer LM half of the system (docs/LM.md)."""

    systems: List[LMSystemSpec]
    acoustic: List[str]                          # systems whose n-best lists every LM rescores
    reference: Optional[List[str]] = None        # [acoustic system, LM]; default the first of each
    train_config: Optional[str] = None
    quant_config: Optional[str] = None
    search_config: Optional[str] = None
    rescore_args: List[Any] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    data_dir: str
    systems: List[SystemSpec]
    space: str = "tdnnf_demo"
    splits: List[str] = field(default_factory=lambda: ["dev", "test"])
    retrain_config: Optional[str] = None
    search_config: Optional[str] = None
    finetune_config: Optional[str] = None        # every system but fp32 (QAT fine-tuning)
    retrain_args: List[Any] = field(default_factory=list)
    decode_args: List[Any] = field(default_factory=list)
    reference: str = "fp32"
    search_from_fp32: bool = True
    finetune_from_fp32: bool = True
    distill_from_fp32: bool = False
    device: Optional[str] = None
    out: Optional[str] = None
    real_speech: Optional[RealSpeech] = None
    lm: Optional[LMSection] = None

    def system(self, name: str) -> SystemSpec:
        for s in self.systems:
            if s.name == name:
                return s
        raise KeyError(name)

    @classmethod
    def from_dict(cls, d: Any, path: str = "config") -> "ExperimentConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping with keys data_dir and systems")
        for key in ("data_dir", "systems"):
            if key not in d:
                raise ValueError(f"{path}: missing required key {key!r}")
        _check_keys(path, d, cls)
        if not isinstance(d["systems"], list) or not all(isinstance(s, dict) for s in d["systems"]):
            raise ValueError(f"{path}: systems must be a list of mappings")
        top = dict(d)
        top["systems"] = [_system(path, i, s) for i, s in enumerate(d["systems"])]
        real = d.get("real_speech")
        if real is not None:
            if not isinstance(real, dict) or "data_dir" not in real:
                raise ValueError(f"{path}: real_speech must be a mapping with data_dir (and split, lm_text, "
                                 f"decode_args)")
            _check_keys(f"{path}: real_speech", real, RealSpeech)
            top["real_speech"] = RealSpeech(**real)
            _check_types(f"{path}: real_speech", top["real_speech"])
        cfg = cls(**top)
        _check_types(path, cfg)
        names = set()
        for s in cfg.systems:
            if s.name in names:
                raise ValueError(f"{path}: duplicate system name {s.name!r}")
            if s.kind == "onnx" and s.onnx_from not in names:
                raise ValueError(f"{path}: system {s.name} (onnx) needs onnx_from naming a system listed before it")
            if s.search_from is not None and (s.kind != "nas" or s.search_from not in names):
                raise ValueError(f"{path}: system {s.name}: search_from needs kind nas and a system listed "
                                 f"before it, got kind {s.kind!r}, search_from {s.search_from!r}")
            names.add(s.name)
            for k in ("search_from_fp32", "finetune_from_fp32", "distill_from_fp32", "space"):
                if getattr(s, k) is None:
                    setattr(s, k, getattr(cfg, k))
        if cfg.real_speech is not None and "real" in cfg.splits:
            raise ValueError(f"{path}: a split may not be called 'real' when real_speech is set")
        if d.get("lm") is not None:
            cfg.lm = _lm_section(path, d["lm"], names)
        return cfg


def _system(path: str, i: int, d: Dict[str, Any]) -> SystemSpec:
    if d.get("kind") not in KINDS:
        raise ValueError(f"{path}: systems[{i}].kind must be one of {KINDS}, got {d.get('kind')!r}")
    if "name" not in d:
        raise ValueError(f"{path}: systems[{i}] needs a name")
    where = f"{path}: system {d['name']}"
    _check_keys(where, d, SystemSpec)
    s = SystemSpec(**d)
    _check_types(where, s)
    if s.kind == "uniform" and s.bits is None:
        raise ValueError(f"{where} (uniform) needs bits")
    if s.kind in ("kl", "hessian", "nas") and s.budget_ratio is None and s.budget_bytes is None:
        raise ValueError(f"{where} ({s.kind}) needs budget_ratio or budget_bytes")
    if s.finetune_from_search and s.kind != "nas":
        raise ValueError(f"{where} ({s.kind}): finetune_from_search needs kind nas (a system with a search)")
    _check_budget(where, s)
    if s.seeds:
        if s.kind in ("fp32", "onnx"):
            raise ValueError(f"{where} ({s.kind}): seeds are more fine-tunings of a compressed system; "
                             f"{s.kind} has none")
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in s.seeds) \
                or len(set(s.seeds)) != len(s.seeds):
            raise ValueError(f"{where}: seeds must be distinct integers >= 0, got {s.seeds!r}")
    return s


def _lm_section(path: str, lm: Any, am_names) -> LMSection:
    """Known keys, LM systems (exactly one fp32, listed first), acoustic systems that exist, a reference
    pair (acoustic system, LM system)."""
    if not isinstance(lm, dict) or not isinstance(lm.get("systems"), list) or not lm["systems"]:
        raise ValueError(f"{path}: lm must be a mapping with a non-empty list of systems")
    _check_keys(f"{path}: lm", lm, LMSection)
    systems, names = [], []
    for i, s in enumerate(lm["systems"]):
        if not isinstance(s, dict) or s.get("kind") not in LM_KINDS or "name" not in s:
            raise ValueError(f"{path}: lm.systems[{i}] needs a name and a kind in {LM_KINDS}")
        where = f"{path}: lm system {s['name']}"
        _check_keys(where, s, LMSystemSpec)
        spec = LMSystemSpec(**s)
        _check_types(where, spec)
        if spec.name in names:
            raise ValueError(f"{path}: duplicate lm system name {spec.name!r}")
        names.append(spec.name)
        if spec.kind == "uniform" and spec.bits is None:
            raise ValueError(f"{where} (uniform) needs bits")
        if spec.kind in ("kl", "hessian", "nas") and (spec.budget_ratio is None) == (spec.budget_bytes is None):
            raise ValueError(f"{where} ({spec.kind}) needs budget_ratio or budget_bytes")
        _check_budget(where, spec)
        systems.append(spec)
    if [s.kind for s in systems].count("fp32") != 1 or systems[0].kind != "fp32":
        raise ValueError(f"{path}: lm.systems needs exactly one fp32 LM, listed first (the others start from it)")
    ams = lm.get("acoustic")
    if not isinstance(ams, list) or not ams or not set(ams) <= set(am_names):
        raise ValueError(f"{path}: lm.acoustic must list systems of the config, got {ams!r}")
    ref = lm.get("reference")
    if ref is not None and (not isinstance(ref, list) or len(ref) != 2 or ref[0] not in ams or ref[1] not in names):
        raise ValueError(f"{path}: lm.reference must be [an lm.acoustic system, an lm system], got {ref!r}")
    out = LMSection(**{**lm, "systems": systems})
    _check_types(f"{path}: lm", out)
    return out


def load_config(path) -> ExperimentConfig:
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    return ExperimentConfig.from_dict(d, str(path))
