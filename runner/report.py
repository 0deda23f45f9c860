"""The experiment runner's reports: the results table (Markdown, CSV, JSON), the WER-vs-size plot, the
significance of each WER change, the whole-system table of acoustic model x LM rescoring, the console's
result lines and ending. ``run_experiments.Runner`` runs the stages and holds one :class:`Report`; the
report reads only the files the stages wrote (``size.json``, ``genotype.json``, ``decode_<set>/``,
``rescore_<lm>/rescore.json``, ``lm/<name>/size.json``; docs/FILE_FORMATS.md).
"""
from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from decoding.significance import compare_run_means, compare_systems
from decoding.wer import corpus_wer, read_text_file
from runner.console import Console
from runner.experiment import Experiment

log = logging.getLogger("run_experiments")


def compare_dirs(d: Path, ref_dir: Path):
    """(MAPSSWE p, paired-bootstrap p, WER change in points) of the hypotheses in ``d`` against those in
    ``ref_dir`` (each holding refs.txt and hyps.txt of one evaluated set)."""
    refs = read_text_file(str(d / "refs.txt"))
    hyp, base = read_text_file(str(d / "hyps.txt")), read_text_file(str(ref_dir / "hyps.txt"))
    cmp = compare_systems(refs, hyp, base)
    delta = corpus_wer(refs, hyp)["wer"] - corpus_wer(refs, base)["wer"]
    return cmp["mapsswe"]["p_value"], cmp["bootstrap"]["p_value"], delta


def compare_run_dirs(dirs: List[Path], ref_dirs: List[Path]):
    """:func:`compare_dirs` for systems fine-tuned more than once: the change of the runs' mean WER and
    the tests of :func:`decoding.significance.compare_run_means` (utterance segments); with one run each,
    :func:`compare_dirs` itself (NIST segments)."""
    if len(dirs) == 1 and len(ref_dirs) == 1:
        return compare_dirs(dirs[0], ref_dirs[0])
    refs = read_text_file(str(dirs[0] / "refs.txt"))
    cmp = compare_run_means(refs, [read_text_file(str(d / "hyps.txt")) for d in dirs],
                            [read_text_file(str(d / "hyps.txt")) for d in ref_dirs])
    return cmp["mapsswe"]["p_value"], cmp["bootstrap"]["p_value"], cmp["wer_diff"]


def wer_cell(r: Dict[str, Any], sp: str, unit: str = "") -> str:
    """A row's WER on ``sp``: the mean over its runs, with their sample standard deviation and count."""
    runs = r.get(f"wer_{sp}_runs") or [r[f"wer_{sp}"]]
    if len(runs) == 1:
        return f"{r[f'wer_{sp}']:.2f}{unit}"
    return f"{r[f'wer_{sp}']:.2f}{unit} ±{statistics.stdev(runs):.2f} ({len(runs)} runs)"


class Report:
    """Tables, plot and significance of an experiment (:class:`runner.experiment.Experiment`: its files
    and evaluated sets), written to its directory and shown on ``console``."""

    def __init__(self, exp: Experiment, console: Console):
        self.exp, self.console = exp, console

    def row(self, s) -> Dict[str, Any]:
        d = self.exp.sys_dir(s.name)
        size = json.load(open(d / "size.json"))
        geno = json.load(open(d / "genotype.json"))
        bits = [l["bits"] for l in geno["layers"]]
        dims = [l["bottleneck"] for l in geno["layers"] if l.get("bottleneck")]
        r = {"system": s.name, "kind": s.kind, "group": s.label, "bits": "/".join(str(b) for b in bits),
             "mean_bits": sum(bits) / len(bits), "bottlenecks": "/".join(str(x) for x in dims),
             "bytes": size["file_bytes"], "payload_bytes": size["payload_bytes"],
             "ratio": size["fp32_bytes"] / size["payload_bytes"]}
        runs = [rd for rd, _ in self.exp.runs(s)]
        r["runs"] = len(runs)
        for split in self.exp.eval_sets:
            wers = [json.load(open(rd / f"decode_{split}" / "wer.json"))["wer"] for rd in runs]  # percent
            r[f"wer_{split}"] = sum(wers) / len(wers)
            r[f"wer_{split}_runs"] = wers
            r[f"p_{split}"], r[f"p_boot_{split}"], r[f"delta_{split}"] = self.significance(
                s.name, split, s.reference)
        r["reference"] = s.reference or self.exp.reference
        return r

    def significance(self, name: str, split: str, reference: Optional[str] = None):
        """(MAPSSWE p, paired-bootstrap p, WER change in points) of ``name`` against ``reference`` (default:
        the experiment's reference system) on ``split``; Nones for the reference itself or while the
        reference is not decoded."""
        reference = reference or self.exp.reference
        dirs, ref_dirs = self.decode_dirs(name, split), self.decode_dirs(reference, split)
        if name == reference or not all((d / "hyps.txt").is_file() for d in ref_dirs):
            return None, None, None
        return compare_run_dirs(dirs, ref_dirs)

    def decode_dirs(self, name: str, split: str) -> List[Path]:
        """``decode_<split>`` of every run of system ``name`` (one, or one per fine-tuning seed)."""
        s = next((x for x in self.exp.systems if x.name == name), None)
        runs = self.exp.runs(s) if s is not None else [(self.exp.sys_dir(name), None)]
        return [d / f"decode_{split}" for d, _ in runs]

    def system_row(self, am: str, l) -> Dict[str, Any]:
        """One (acoustic model, LM) system: bytes of each (cost-model payloads, and the files on disk), the
        system ratio against the fp32 AM + fp32 LM on both counts, first-pass and rescored WER, and the
        rescored WER's change against the reference pair and against the same AM with the fp32 LM.

        The file ratio counts what the payload ratio leaves out: packing headers, scales' metadata and the
        LM's vocabulary (stored in each LM file, float or packed)."""
        rep = json.load(open(self.exp.rescore_dir(am, l.name) / "rescore.json"))
        am_size = json.load(open(self.exp.sys_dir(am) / "size.json"))
        lm_size = json.load(open(self.exp.lm_dir(l.name) / "size.json"))
        am_fp32 = json.load(open(self.exp.sys_dir("fp32") / "size.json"))["fp32_bytes"]
        fp32_lm = self.exp.lm_systems()[0].name
        lm_fp32 = json.load(open(self.exp.lm_dir(fp32_lm) / "size.json"))["bytes"]
        total = am_size["payload_bytes"] + lm_size["bytes"]
        fp32_files = (json.load(open(self.exp.sys_dir("fp32") / "size.json"))["file_bytes"]
                      + self.exp.lm_file(self.exp.lm_systems()[0]).stat().st_size)
        files = am_size["file_bytes"] + self.exp.lm_file(l).stat().st_size
        r = {"am": am, "lm": l.name, "lm_kind": l.kind, "lm_bits_per_weight": lm_size["bits_per_weight"],
             "am_bytes": am_size["payload_bytes"], "lm_bytes": lm_size["bytes"], "system_bytes": total,
             "am_ratio": am_fp32 / am_size["payload_bytes"], "lm_ratio": lm_fp32 / lm_size["bytes"],
             "system_ratio": (am_fp32 + lm_fp32) / total, "system_file_bytes": files,
             "system_file_ratio": fp32_files / files, "lm_weight": rep["weights"]["lm_weight"],
             "alpha": rep["weights"]["alpha"]}
        ref_am, ref_lm = self.exp.lm_reference()
        for split in ("dev", "test"):
            r[f"first_{split}"] = rep[split]["wer"]["first_pass"]["wer"]
            r[f"wer_{split}"] = rep[split]["wer"]["rescored"]["wer"]
            r[f"oracle_{split}"] = rep[split]["wer"]["oracle"]["wer"]
            for key, (a, b) in (("", (ref_am, ref_lm)), ("lm_", (am, fp32_lm))):
                if (am, l.name) == (a, b):
                    r[f"p_{key}{split}"] = r[f"p_boot_{key}{split}"] = r[f"delta_{key}{split}"] = None
                    continue
                r[f"p_{key}{split}"], r[f"p_boot_{key}{split}"], r[f"delta_{key}{split}"] = compare_dirs(
                    self.exp.rescore_dir(am, l.name) / split / "rescored", self.exp.rescore_dir(a, b) / split / "rescored")
        return r

    def write_system_table(self, rows: List[Dict[str, Any]]) -> None:
        """system_results.{md,csv,json}: every acoustic model x LM combination."""
        with open(self.exp.out / "system_results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        json.dump(rows, open(self.exp.out / "system_results.json", "w"), indent=1)
        ref_am, ref_lm = self.exp.lm_reference()
        fp32_lm = self.exp.lm_systems()[0].name
        head = ["acoustic model", "LM", "LM bits/weight", "AM bytes", "LM bytes", "system bytes", "system ratio",
                "system file bytes", "file ratio"]
        for sp in ("dev", "test"):
            head += [f"{sp} 1st pass", f"{sp} rescored", f"{sp} vs {ref_am}+{ref_lm} (p)", f"{sp} vs same AM+{fp32_lm} (p)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def cell(r, key, sp):
            if r.get(f"p_{key}{sp}") is None:
                return "(reference)" if key == "" or r["lm"] == fp32_lm else "-"
            return f"{r[f'delta_{key}{sp}']:+.2f} (p={r[f'p_{key}{sp}']:.3f})"

        for r in rows:
            cells = [r["am"], r["lm"], f"{r['lm_bits_per_weight']:.2f}", f"{r['am_bytes']:,}", f"{r['lm_bytes']:,}",
                     f"{r['system_bytes']:,}", f"{r['system_ratio']:.1f}x", f"{r['system_file_bytes']:,}",
                     f"{r['system_file_ratio']:.1f}x"]
            for sp in ("dev", "test"):
                cells += [f"{r[f'first_{sp}']:.2f}", f"{r[f'wer_{sp}']:.2f}", cell(r, "", sp), cell(r, "lm_", sp)]
            lines.append("| " + " | ".join(cells) + " |")
        (self.exp.out / "system_results.md").write_text("\n".join(lines) + "\n")
        self.console.line(f"system table (acoustic model x LM, n-best rescoring): {self.exp.out / 'system_results.md'}")
        print("\n".join(lines), flush=True)

    def lossless(self, r: Dict[str, Any]) -> bool:
        """No significant WER *increase* against the row's reference on any evaluated set, the real-speech
        set included: the change is not significant (MAPSSWE p >= 0.05) or it is a decrease. The reference
        itself counts as lossless."""
        return all(r.get(f"p_{sp}") is None or r[f"p_{sp}"] >= 0.05 or r[f"delta_{sp}"] <= 0
                   for sp in self.exp.eval_sets)

    def result_line(self, r: Dict[str, Any]) -> str:
        """One line for a finished system: size, ratio, WER per split and its change against the reference."""
        parts = [f"{r['system']}: {r['bytes']:,} bytes ({r['ratio']:.1f}x)"]
        for sp in self.exp.eval_sets:
            cell = f"{sp} {wer_cell(r, sp, '%')}"
            if r.get(f"p_{sp}") is not None:
                cell += f" ({r[f'delta_{sp}']:+.2f} vs {r['reference']}, p={r[f'p_{sp}']:.3f})"
            parts.append(cell)
        return ", ".join(parts)

    def show_ending(self) -> None:
        """The last lines: where the table and plot are, and how to look at the search in TensorBoard."""
        c = self.console
        c.line(f"table: {self.exp.out / 'results.md'} (also .csv, .json)")
        if (self.exp.out / "system_results.md").is_file():
            c.line(f"system table (acoustic model x LM): {self.exp.out / 'system_results.md'} (also .csv, .json)")
        c.line(f"plot:  {self.exp.out / 'wer_vs_size.png'} (test WER against bytes on disk; dashed: the reference "
               f"{self.exp.reference}; hollow markers: not lossless, a significant increase (p < 0.05) on some set)")
        c.line(f"TensorBoard: tensorboard --logdir {self.exp.out}")
        if any(s.kind == "nas" for s in self.exp.systems):
            c.line("    searched bit allocations (<system>/search/tb): images arch/bits_heatmap, arch/dims_heatmap "
                   "(probability of each choice per layer, the derived argmax outlined); scalars arch/argmax_mb, "
                   "arch/expected_mb, arch/target_mb, arch/entropy_mean, arch/bits/<layer>/<b>")
        c.line("    results: image results/wer_vs_size; training curves: <system>/tb (train/*, valid/*)")

    def write_table(self, rows: List[Dict[str, Any]], show: bool = True) -> None:
        keys = list(rows[0].keys())
        with open(self.exp.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        json.dump(rows, open(self.exp.out / "results.json", "w"), indent=1)
        head = ["system", "bits per layer", "bottlenecks", "bytes on disk", "ratio"]
        for sp in self.exp.eval_sets:
            head += [f"{sp} WER %", f"{sp} dWER vs {self.exp.reference} (p)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["system"], r["bits"], r["bottlenecks"] or "-", f"{r['bytes']:,}", f"{r['ratio']:.1f}x"]
            for sp in self.exp.eval_sets:
                cells.append(wer_cell(r, sp))
                if r["system"] == self.exp.reference:
                    cells.append("(reference)")
                    continue
                if r.get(f"p_{sp}") is None:
                    cells.append("-")
                else:
                    other = "" if r["reference"] == self.exp.reference else f"; vs {r['reference']}"
                    cells.append(f"{r[f'delta_{sp}']:+.2f} (p={r[f'p_{sp}']:.3f}{other})")
            lines.append("| " + " | ".join(cells) + " |")
        (self.exp.out / "results.md").write_text("\n".join(lines) + "\n")
        if show:
            print("\n".join(lines), flush=True)
        self.plot(rows)

    def plot(self, rows) -> None:
        split = "test" if "test" in self.exp.splits else self.exp.splits[0]
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover
            log.warning("matplotlib not installed: no plot")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = list(dict.fromkeys(r["group"] for r in rows))
        for grp in groups:
            pts = sorted((r["bytes"], r[f"wer_{split}"], self.lossless(r)) for r in rows if r["group"] == grp)
            line, = ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], "-", label=grp)
            for b, w, ok in pts:  # filled: lossless (no significant increase on any set); hollow: not
                ax.plot([b / 1e6], [w], "o", color=line.get_color(), markerfacecolor=line.get_color() if ok else "none")
        ref = next((r for r in rows if r["system"] == self.exp.reference), None)
        if ref is not None:
            ax.axhline(ref[f"wer_{split}"], color="gray", linestyle="--", linewidth=1,
                       label=f"{self.exp.reference} (reference)")
        ax.set_title("filled: lossless vs its reference (no significant WER increase, p < 0.05, on any set)", fontsize=8)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("model size on disk (MB)")
        ax.set_ylabel(f"{split} WER (%)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.exp.out / "wer_vs_size.png", dpi=120)
        try:
            from torch.utils.tensorboard import SummaryWriter

            w = SummaryWriter(str(self.exp.out / "tb"))
            w.add_figure("results/wer_vs_size", fig)
            w.close()
        except Exception as e:  # pragma: no cover
            log.warning("TensorBoard figure not written: %s", e)
        plt.close(fig)

    def print_comparisons(self, pairs) -> None:
        """A Markdown table of ``(a, b)`` pairs of finished systems: WER change a - b and both p-values per
        evaluated set."""
        names = {s.name for s in self.exp.systems if self.exp.finished(s)}
        bad = [p for p in pairs if len(p) != 2 or not set(p) <= names]
        if bad:
            raise ValueError(f"--compare: pairs must be A:B of finished systems ({sorted(names)}); got {bad}")
        print("| system | against | set | dWER (points) | MAPSSWE p | bootstrap p |")
        print("|---|---|---|---|---|---|")
        for a, b in pairs:
            for sp in self.exp.eval_sets:
                p, pb, d = self.significance(a, sp, b)
                print(f"| {a} | {b} | {sp} | {d:+.2f} | {p:.3f} | {pb:.3f} |")
