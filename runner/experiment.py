"""An experiment's facts that both the stage runner (``run_experiments.Runner``) and the reports
(:class:`runner.report.Report`) read: where every system's and LM's files are, which sets are evaluated,
what each WER change is tested against, and whether a system is finished (its files exist)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from runner.config import ExperimentConfig, LMSystemSpec, SystemSpec


class Experiment:
    """``cfg``: a loaded experiment config (:func:`runner.config.load_config`); ``out``: its directory."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.splits: List[str] = list(cfg.splits)
        self.real = cfg.real_speech
        if self.real is not None and "real" in self.splits:
            raise ValueError("a split may not be called 'real' when real_speech is set")
        # every evaluated set: the corpus's splits, then "real" (the real-speech check set) if configured
        self.eval_sets: List[str] = self.splits + (["real"] if self.real is not None else [])
        # the system every WER change is tested against (e.g. fp32 given the same fine-tuning epochs)
        self.reference: str = cfg.reference

    @property
    def systems(self) -> List[SystemSpec]:
        return self.cfg.systems

    def sys_dir(self, name: str) -> Path:
        return self.out / name

    def runs(self, s: SystemSpec) -> List[Tuple[Path, Optional[int]]]:
        """(directory, seed) of each fine-tuning of ``s``: its own (seed None: the config's) first, then
        one ``seed<k>`` subdirectory per extra seed."""
        d = self.sys_dir(s.name)
        return [(d, None)] + [(d / f"seed{k}", k) for k in s.seeds]

    def fp32_model(self) -> Path:
        return self.sys_dir("fp32") / "model.pt"

    def finished(self, s: SystemSpec) -> bool:
        """Packed (size.json) and decoded on every evaluated set, in every run (:meth:`runs`)."""
        return all((d / "size.json").is_file() and all((d / f"decode_{sp}" / "wer.json").is_file()
                                                       for sp in self.eval_sets) for d, _ in self.runs(s))

    def finished_named(self, name: str) -> bool:
        return any(self.finished(s) for s in self.systems if s.name == name)

    # ---- the LM part
    def lm_systems(self) -> List[LMSystemSpec]:
        return list(self.cfg.lm.systems) if self.cfg.lm is not None else []

    def lm_dir(self, name: str) -> Path:
        return self.out / "lm" / name

    def lm_file(self, l: LMSystemSpec) -> Path:
        return self.lm_dir(l.name) / ("model.pt" if l.kind == "fp32" else "model.safetensors")

    def rescore_dir(self, am: str, lm_name: str) -> Path:
        return self.sys_dir(am) / f"rescore_{lm_name}"

    def lm_reference(self) -> Tuple[str, str]:
        """(acoustic system, LM system) every whole-system WER change is tested against."""
        lm = self.cfg.lm
        return tuple(lm.reference or [lm.acoustic[0], self.lm_systems()[0].name])
