"""Load a prepared corpus directory and build the LF-MMI pieces every trainer needs.

A prepared directory (docs/INTERFACES.md) holds cuts with features, ``lang/lexicon.txt``,
``lm_train_text.txt`` and ``cmvn.json``. :func:`load_corpus` reads it; :func:`make_lfmmi` builds the
denominator graph (phone n-gram of the training transcripts composed with the chain topology), the
numerator-graph compiler and the loss.
"""
from __future__ import annotations

import hashlib
import logging
from functools import partial
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

from lang.lexicon import Lexicon
from lfmmi import LFMMILoss, LFMMIOptions, NumeratorCompiler, build_den_graph
from search_spaces.space import load_search_space
from training import distributed
from training.data import Cmvn, ResumableBatches, load_cuts, make_sampler

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    data_dir: Path
    lexicon: Any
    cmvn: Cmvn
    num_pdfs: int
    train_text: list

    def cuts(self, split: str):
        return load_cuts(self.data_dir, split)


def load_sections(path, allowed) -> Dict[str, Any]:
    """A YAML config made of named sections (e.g. train, lfmmi, quant); unknown sections are an error."""
    if path is None:
        return {}
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping of sections {sorted(allowed)}")
    bad = sorted(set(cfg) - set(allowed))
    if bad:
        raise ValueError(f"{path}: unknown section(s) {bad}; expected {sorted(allowed)}")
    return cfg


def config_section(path, parse, section):
    """``parse(section)`` with the config file named in its error: ``<path>: <message>``."""
    try:
        return parse(section)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path or 'built-in defaults'}: {e}") from None


def start_run(device: str, seed: int, out_dir, data_dir, space_name):
    """Common start of a training CLI: join torchrun's group if any, pick the device, seed every RNG,
    load the corpus and the search space sized to its pdfs. ``out_dir`` is not created here: the CLI
    claims it (:func:`training.rundir.claim_out_dir`) once it knows the run's identity.

    Returns ``(dist_info, torch_device, out_path, corpus, space)``."""
    import random

    import numpy as np
    import torch

    dinfo = distributed.setup(device)
    dev = distributed.local_device(device, dinfo)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = Path(out_dir)
    corpus = load_corpus(data_dir)
    space = load_search_space(space_name, num_pdfs=corpus.num_pdfs)
    return dinfo, dev, out, corpus, space


def load_corpus(data_dir) -> Corpus:
    d = Path(data_dir)
    for rel in ("lang/lexicon.txt", "cmvn.json", "lm_train_text.txt"):
        if not (d / rel).is_file():
            raise FileNotFoundError(f"{d / rel} not found: is {d} a prepared corpus (prepare_data.py)?")
    lexicon = Lexicon.load(d / "lang" / "lexicon.txt")
    text = [l.strip() for l in open(d / "lm_train_text.txt") if l.strip()]
    return Corpus(d, lexicon, Cmvn.load(d / "cmvn.json"), 2 * len(lexicon.phones), text)


def lfmmi_options(d: Optional[Dict[str, Any]]):
    """Split a YAML ``lfmmi:`` section into (LFMMIOptions, graph options)."""
    d = dict(d or {})
    graph = {"den_order": int(d.pop("den_order", 3)), "sil_prob": float(d.pop("sil_prob", 0.5))}
    known = {f.name for f in fields(LFMMIOptions)}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"unknown lfmmi option(s) {bad}; known: {sorted(known | set(graph))}")
    return LFMMIOptions(**d), graph


def make_lfmmi(corpus: Corpus, lfmmi_cfg: Optional[Dict[str, Any]] = None):
    """-> (loss_fn, numerator compiler, den graph)."""
    opts, g = lfmmi_options(lfmmi_cfg)
    den = build_den_graph(corpus.lexicon, corpus.train_text, order=g["den_order"], sil_prob=g["sil_prob"])
    log.info("den graph: %d states, %d arcs (phone %d-gram)", den.num_states, den.num_arcs, g["den_order"])
    if den.num_pdfs != corpus.num_pdfs:
        raise RuntimeError(f"den graph has {den.num_pdfs} pdfs, corpus expects {corpus.num_pdfs}")
    return LFMMILoss(den, opts), NumeratorCompiler(corpus.lexicon, sil_prob=g["sil_prob"]), den


def _held_out(cut, fraction: float) -> bool:
    """Deterministic split by recording (speed-perturbed copies follow their original)."""
    rec = cut.recording_id if getattr(cut, "recording_id", None) else cut.id
    for suf in ("_sp0.9", "_sp1.1"):
        rec = rec.replace(suf, "")
    h = int(hashlib.sha1(rec.encode()).hexdigest()[:8], 16)
    return (h % 10000) / 10000.0 < fraction


def split_train(cuts, held_out_fraction: float):
    """(train cuts, held-out cuts) for bi-level search; held-out keeps only unperturbed cuts."""
    if held_out_fraction <= 0:
        return cuts, None
    cuts = cuts.to_eager()
    train = cuts.filter(partial(_keep_train, fraction=held_out_fraction)).to_eager()
    held = cuts.filter(partial(_keep_held, fraction=held_out_fraction)).to_eager()
    return train, held


def _keep_train(cut, fraction: float) -> bool:
    return not _held_out(cut, fraction)


def _keep_held(cut, fraction: float) -> bool:
    return _held_out(cut, fraction) and "_sp" not in cut.id


def make_batches(cuts, corpus: Corpus, max_duration: float, shuffle: bool, seed: int, dist_info=None
                 ) -> ResumableBatches:
    world = dist_info.world_size if dist_info is not None else 1
    rank = dist_info.rank if dist_info is not None else 0
    return ResumableBatches(make_sampler(cuts, max_duration, shuffle, seed, world, rank), corpus.cmvn)
