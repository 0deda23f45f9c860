#!/usr/bin/env python
"""One command for the paper's comparison: every system at its size, decoded, in one table.

    python run_experiments.py --config configs/demo.yaml

For one corpus and a list of systems (fp32 baseline, uniform 8/4/2/1-bit, KL- and Hessian-sensitivity
mixed precision and NAS mixed precision at size budgets, bottleneck search on or off), it runs each
stage as its own command (search -> retrain -> export -> decode dev/test), writes a table (Markdown,
CSV, JSON) with bytes on disk, compression ratio against fp32, WER and the significance of each WER
change against fp32, and a plot of WER against model size. A stage whose output file exists is not
redone; an interrupted stage is continued with ``--resume``. So rerunning the command after a kill
picks up where it stopped. Several runners may work on one experiment at once (each system is
locked by the runner working on it; ``--only`` gives a runner its own list and order), e.g. to keep
both cores busy while one of them decodes.

A system of kind ``onnx`` (``onnx_from: <system>``, optional ``onnx_args`` for export_onnx.py) exports
another system's packed model to ONNX with low-bit kernels and decodes through onnxruntime, so the table
shows that the deployed file recognises what the packed model does; its bytes are the ONNX file's.

An ``lm:`` section adds the Transformer LM half of the system (docs/LM.md): ``systems`` (one ``fp32`` LM,
trained by train_lm.py with ``train_config``, then ``uniform`` / ``kl`` / ``hessian`` LMs quantized from
it by quantize_lm.py with ``quant_config``, and ``nas`` LMs searched by search_lm.py with ``search_config``
and then quantized the same way), ``acoustic`` (systems above whose n-best lists are rescored
with every LM: the fp32 LM's rescore.py run decodes, the others rescore the same lists), ``reference``
(``[acoustic system, LM]``, default the first of each) and ``rescore_args``. Outputs: ``lm/<name>/``,
``<system>/rescore_<lm>/`` and ``system_results.{md,csv,json}``: AM, LM and system bytes, the system
compression ratio ((fp32 AM + fp32 LM) / (AM + LM), on cost-model payloads and on files on disk), first-pass
and rescored WER, and the significance of each rescored WER against the reference pair and against the same acoustic
model with the fp32 LM. ``--only lm`` runs just this part.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from runner.config import ExperimentConfig, load_config
from runner.console import Console, run_stage, stop_on_sigterm
from runner.experiment import Experiment
from runner.report import Report
from runner.schedule import Scheduler, Task, current_scheduler
from training.cli import HelpFormatter, add_debug_flag, run_main

log = logging.getLogger("run_experiments")
PY = sys.executable
def run(cmd: List[str], log_file: Path, console: Optional[Console] = None, label: str = "") -> None:
    """Run a stage; its output goes to ``log_file`` (progress bars to the console); a failure stops the
    runner with that log's tail. Under ``--jobs`` (a task of :mod:`runner.schedule`) the console lines name
    the task and the stage gets its share of the CPU threads (``OMP_NUM_THREADS``)."""
    sched, env = current_scheduler(), None
    if sched is not None:
        if sched.stopping.is_set():
            raise RuntimeError("the runner is stopping")
        label = f"{threading.current_thread().name}: {label.strip()}"
        env = dict(os.environ, OMP_NUM_THREADS=str(sched.stage_threads()))
    log.info("$ %s", " ".join(cmd))
    if console is not None:
        console.line(f"    {label} ..." + (f" ({env['OMP_NUM_THREADS']} thread(s))" if env else ""))
    secs = run_stage(cmd, log_file, console, label.strip(), env=env)
    log.info("   done in %.0f s", secs)
    if console is not None:
        console.line(f"    {label} done in {secs:.0f} s")


def has_checkpoint(path: Path) -> bool:
    """``checkpoint.pt`` or the previous one it falls back to (training.checkpoint.load_latest)."""
    return path.is_file() or path.with_name(path.stem + ".prev" + path.suffix).is_file()



class SystemLock:
    """``<system dir>/.lock`` holding the owner's pid, so several runners can share one experiment:
    a system another live runner is working on is left to it. A lock whose process is gone is taken."""

    def __init__(self, d: Path):
        self.path = d / ".lock"

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return True
            except FileExistsError:
                if not self.stale():
                    return False  # a live runner owns it
                log.warning("removing stale lock %s", self.path)
                self.path.unlink(missing_ok=True)
        return False

    def stale(self) -> bool:
        """Whether the lock names no live process: a dead pid, or no pid at all (a runner killed between
        creating the file and writing its pid; os.kill(0, 0) would test this process group instead)."""
        try:
            pid = int(self.path.read_text().strip() or "0")
            if pid <= 0:
                raise ValueError(pid)
            os.kill(pid, 0)
            return False
        except (ValueError, ProcessLookupError, FileNotFoundError):
            return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


class Runner:
    """Runs the stages of every system (search/sensitivity -> retrain -> export -> decode) and of the LM
    part; the experiment's files and sets are :attr:`exp`'s, the tables and the plot :attr:`report`'s."""

    def __init__(self, cfg: Dict[str, Any], out: Path, device: str, console: Optional[Console] = None):
        self.cfg = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.from_dict(cfg)
        self.device = device
        self.console = console or Console(quiet=True)
        self.exp = Experiment(self.cfg, out)
        self.report = Report(self.exp, self.console)
        # stages draw their progress bars only when the console forwards them to a terminal
        self.progress_args = [] if self.console.live else ["--no-progress"]
        self.data_dir = self.cfg.data_dir
        self.retrain_config = self.cfg.retrain_config
        self.search_config = self.cfg.search_config
        self.extra_retrain = [str(a) for a in self.cfg.retrain_args]
        self.extra_decode = [str(a) for a in self.cfg.decode_args]

    def check_spaces(self) -> None:
        """Every system's space must have the experiment space's network: one fp32 baseline seeds them
        all and is the reference of every ratio. Raises ValueError naming the system."""
        from search_spaces.space import load_search_space  # brings torch: only when spaces differ

        names = {s.space for s in self.cfg.systems} - {self.cfg.space}
        if not names:
            return
        base = load_search_space(self.cfg.space).network
        same = {name: load_search_space(name).network == base for name in names}  # each space read once
        for s in self.cfg.systems:
            if not same.get(s.space, True):
                raise ValueError(f"system {s.name}: space {s.space!r} has another network than the "
                                 f"experiment's space {self.cfg.space!r} (use extends: {self.cfg.space})")

    def budget_bytes(self, s) -> int:
        if s.budget_bytes is not None:
            return int(s.budget_bytes)
        fp32 = json.load(open(self.exp.sys_dir("fp32") / "size.json"))["fp32_bytes"]
        return int(fp32 / float(s.budget_ratio))

    # ----------------------------------------------------------------- stages
    def genotype(self, s) -> Optional[Path]:
        """Write (or reuse) the system's genotype; None for fp32/uniform."""
        d = self.exp.sys_dir(s.name)
        g = d / "genotype_in.json"
        if s.kind in ("fp32", "uniform", "onnx") or g.is_file():
            return g if g.is_file() else None
        if s.genotype_from:  # the same genotype as another system (e.g. a longer fine-tuning)
            src = self.exp.sys_dir(s.genotype_from) / "genotype_in.json"
            if not src.is_file():
                raise RuntimeError(f"system {s.name}: genotype_from {s.genotype_from!r} has no genotype yet "
                                   f"(list that system first)")
            d.mkdir(parents=True, exist_ok=True)
            tmp = g.with_suffix(".tmp")
            tmp.write_text(src.read_text())
            tmp.replace(g)
            return g
        if s.kind in ("kl", "hessian"):
            cmd = [PY, "mixed_precision.py", "--model", str(self.exp.fp32_model()), "--data-dir", self.data_dir,
                   "--space", s.space, "--budget-bytes", str(self.budget_bytes(s)), "--out", str(g),
                   "--device", self.device]
            reuse = self.measured_sensitivity(s)
            if reuse is not None:  # same fp32 model, same measure: only the allocation differs
                cmd += ["--sensitivity-in", str(reuse)]
            else:
                cmd += ["--method", s.kind]
                if s.kind == "hessian" and self.retrain_config:
                    cmd += ["--config", self.retrain_config]  # the LF-MMI settings the model was trained with
            run(cmd + [str(a) for a in s.sensitivity_args], d / "log.txt", self.console,
                f"{s.kind} sensitivity and allocation")
        else:
            sd = d / "search"
            cmd = [PY, "train_search.py", "--data-dir", self.data_dir, "--space", s.space, "--out", str(sd),
                   "--budget-bytes", str(self.budget_bytes(s)), "--device", self.device] + self.progress_args
            search_config = s.search_config or self.search_config
            if search_config:
                cmd += ["--config", search_config]
            if s.search_from:
                start = self.exp.sys_dir(s.search_from) / "model.pt"
                if not start.is_file():
                    raise RuntimeError(f"system {s.name}: search_from {s.search_from!r} has no model yet "
                                       f"({start}); run that system first")
                cmd += ["--init-from", str(start)]
            elif s.search_from_fp32:
                cmd += ["--init-from", str(self.exp.fp32_model())]
            if s.distill_from_fp32:
                cmd += ["--distill-from", str(self.exp.fp32_model())]
            if not s.search_bottleneck:
                cmd += ["--no-bottleneck-search"]
            if has_checkpoint(sd / "checkpoint.pt"):
                cmd += ["--resume"]
            run(cmd + [str(a) for a in s.search_args], d / "log.txt", self.console, "search")
            tmp = g.with_suffix(".tmp")  # atomically: an existing genotype_in.json is used as it is
            tmp.write_text((sd / "genotype.json").read_text())
            tmp.replace(g)
        return g

    def measured_sensitivity(self, s) -> Optional[Path]:
        """A sensitivity JSON already measured by another system of this experiment with ``s``'s kind and
        search space (the space's widths are the ones measured)."""
        for o in self.cfg.systems:
            if o.kind == s.kind and o.space == s.space:
                f = self.exp.sys_dir(o.name) / "genotype_in.sensitivity.json"
                if f.is_file():
                    return f
        return None

    def retrain(self, s, genotype: Optional[Path]) -> None:
        """Train (fp32), fine-tune and export (the others) or export to ONNX each run of ``s`` that has no
        size.json yet: its own, then one per extra seed (:meth:`runner.experiment.Experiment.runs`)."""
        for d, seed in self.exp.runs(s):
            if (d / "size.json").is_file():
                continue
            if s.kind == "onnx":
                self.export_onnx(s)
            else:
                self.retrain_run(s, genotype, d, seed)

    def retrain_run(self, s, genotype: Optional[Path], d: Path, seed: Optional[int]) -> None:
        cmd = [PY, "retrain.py", "--data-dir", self.data_dir, "--space", s.space, "--out", str(d),
               "--device", self.device] + self.progress_args
        rc = self.retrain_config
        if s.kind != "fp32" and self.cfg.finetune_config:
            rc = self.cfg.finetune_config
        rc = s.retrain_config or rc
        if rc:
            cmd += ["--config", rc]
        if s.kind == "uniform":
            cmd += ["--uniform-bits", str(int(s.bits))]
        elif genotype is not None:
            cmd += ["--genotype", str(genotype)]
        if s.finetune_from_search:  # the weights the search trained for this genotype, unrotated
            cmd += ["--init-from", str(self.search_subnet(s)), "--bottleneck-order", "none"]
        elif s.kind != "fp32" and s.finetune_from_fp32:
            cmd += ["--init-from", str(self.exp.fp32_model())]
        if s.kind != "fp32" and s.distill_from_fp32:
            cmd += ["--distill-from", str(self.exp.fp32_model())]  # weight/temperature: the config's distill:
        if s.quant_trainer:
            cmd += ["--quant-trainer", s.quant_trainer]
        if has_checkpoint(d / "checkpoint.pt"):
            cmd += ["--resume"]
        what = "train" if s.kind == "fp32" else "fine-tune (QAT) and export"
        extra = self.extra_retrain + [str(a) for a in s.retrain_args]
        if seed is not None:  # last: over any --seed of the config's retrain_args
            extra += ["--seed", str(seed)]
            what += f" (seed {seed})"
        d.mkdir(parents=True, exist_ok=True)
        run(cmd + extra, d / "log.txt", self.console, what)

    def search_subnet(self, s) -> Path:
        """``subnet.pt`` of the search that gave ``s`` its genotype (its own, or ``genotype_from``'s)."""
        src, f = s.genotype_from or s.name, self.search_subnet_path(s)
        if not f.is_file():
            raise RuntimeError(f"system {s.name}: finetune_from_search needs {f}, which {src}'s search writes "
                               f"at its end (a search run before subnet.pt existed: rerun it)")
        return f

    def export_onnx(self, s) -> None:
        """Export ``onnx_from``'s packed model to ``model.onnx``; size.json gives the ONNX file's bytes."""
        d, src = self.exp.sys_dir(s.name), self.exp.sys_dir(s.onnx_from)
        if not (src / "size.json").is_file():
            raise RuntimeError(f"system {s.name}: onnx_from {s.onnx_from!r} has no model yet (list that "
                               f"system first)")
        d.mkdir(parents=True, exist_ok=True)
        onnx = d / "model.onnx"
        run([PY, "export_onnx.py", "--model", str(src / "model.safetensors"), "--out", str(onnx)]
            + [str(a) for a in s.onnx_args], d / "log.txt", self.console, "export ONNX")
        size = json.load(open(src / "size.json"))
        nbytes = onnx.stat().st_size
        (d / "genotype.json").write_text((src / "genotype.json").read_text())
        tmp = d / "size.json.tmp"
        tmp.write_text(json.dumps({"format": "onnx", "source": s.onnx_from, "file_bytes": nbytes,
                                   "payload_bytes": nbytes, "fp32_bytes": size["fp32_bytes"],
                                   "packed_file_bytes": size["file_bytes"]}, indent=1))
        tmp.replace(d / "size.json")

    def decode_command(self, name: str) -> List[str]:
        """decode.py's data options for evaluated set ``name`` (a split, or "real")."""
        if name != "real":
            return ["--data-dir", self.data_dir, "--split", name] + self.extra_decode
        r = self.exp.real
        cmd = ["--data-dir", str(r.data_dir), "--split", str(r.split)]
        if r.lm_text:
            cmd += ["--lm-text", str(r.lm_text)]
        return cmd + [str(a) for a in (r.decode_args if r.decode_args is not None else self.extra_decode)]

    def decode(self, s) -> None:
        for d, seed in self.exp.runs(s):
            for split in self.exp.eval_sets:
                dd = d / f"decode_{split}"
                if (dd / "wer.json").is_file():
                    continue
                onnx = s.kind == "onnx"  # onnxruntime's CPU provider
                cmd = [PY, "decode.py", "--model", str(d / ("model.onnx" if onnx else "model.safetensors")),
                       "--out", str(dd), "--device", "cpu" if onnx else self.device,
                       "--graph-cache", str(self.exp.out / "graphs")] + self.progress_args
                what = f"decode {split}" + ("" if seed is None else f" (seed {seed})")
                run(cmd + self.decode_command(split), d / "log.txt", self.console, what)

    # ----------------------------------------------------------------- table

    # ----------------------------------------------------------------- LM and whole system
    def run_lm(self, l) -> None:
        """Train the float LM (train_lm.py) or quantize it (quantize_lm.py) into out/lm/<name>."""
        d = self.exp.lm_dir(l.name)
        if self.lm_made(l):
            return
        lm = self.cfg.lm
        if l.kind == "fp32":
            cmd = [PY, "train_lm.py", "--data-dir", self.data_dir, "--out", str(d), "--device", self.device]
            if lm.train_config:
                cmd += ["--config", str(lm.train_config)]
            what = "train the LM"
        else:
            fp32 = self.exp.lm_systems()[0]
            cmd = [PY, "quantize_lm.py", "--init", str(self.exp.lm_file(fp32)), "--data-dir", self.data_dir, "--out",
                   str(d), "--device", self.device]
            if l.kind == "nas":  # search (search_lm.py), then QAT of its argmax bits
                sd = d / "search"
                if not (sd / "lm_bits.json").is_file():
                    scmd = [PY, "search_lm.py", "--init", str(self.exp.lm_file(fp32)), "--data-dir", self.data_dir,
                            "--out", str(sd), "--device", self.device]
                    scmd += (["--budget-ratio", str(l.budget_ratio)] if l.budget_ratio is not None
                             else ["--budget-bytes", str(int(l.budget_bytes))])
                    if lm.search_config:
                        scmd += ["--config", str(lm.search_config)]
                    if has_checkpoint(sd / "checkpoint.pt"):
                        scmd += ["--resume"]
                    d.mkdir(parents=True, exist_ok=True)
                    run(scmd + self.progress_args, d / "log.txt", self.console, "search the LM's bits")
                cmd += ["--method", "file", "--bits-from", str(sd / "lm_bits.json")]
            else:
                cmd += ["--method", l.kind]
            if l.kind == "uniform":
                cmd += ["--bits", str(int(l.bits))]
            elif l.kind == "nas":
                pass
            elif l.budget_ratio is not None:
                cmd += ["--budget-ratio", str(l.budget_ratio)]
            else:
                cmd += ["--budget-bytes", str(int(l.budget_bytes))]
            if lm.quant_config:
                cmd += ["--config", str(lm.quant_config)]
            what = f"quantize the LM ({l.kind})"
        if has_checkpoint(d / "checkpoint.pt"):
            cmd += ["--resume"]
        d.mkdir(parents=True, exist_ok=True)
        run(cmd + self.progress_args + [str(a) for a in l.quant_args], d / "log.txt", self.console, what)

    def run_rescore(self, am: str, l) -> None:
        """n-best rescoring of acoustic system ``am`` with LM ``l``: the fp32 LM's run decodes (rescore.py
        --model, decode_args for the first pass), every other LM rescores those n-best lists."""
        d = self.exp.rescore_dir(am, l.name)
        if (d / "rescore.json").is_file():
            return
        lm = self.cfg.lm
        first = self.exp.lm_systems()[0]
        cmd = [PY, "rescore.py", "--lm", str(self.exp.lm_file(l)), "--data-dir", self.data_dir, "--out", str(d),
               "--device", self.device]
        if l is first:
            cmd += ["--model", str(self.exp.sys_dir(am) / "model.safetensors"), "--graph-cache", str(self.exp.out / "graphs")]
            cmd += self.progress_args + self.extra_decode
        else:
            cmd += ["--nbest-from", str(self.exp.rescore_dir(am, first.name))]
        d.mkdir(parents=True, exist_ok=True)
        run(cmd + [str(a) for a in lm.rescore_args], d / "log.txt", self.console,
            f"rescore {am} with LM {l.name}")

    def lm_made(self, l) -> bool:
        """LM ``l`` is trained or quantized (its size and perplexity written)."""
        d = self.exp.lm_dir(l.name)
        return (d / "size.json").is_file() and (d / "ppl.json").is_file()

    def lm_rescored(self, l) -> bool:
        """Every acoustic system's n-best lists are rescored with LM ``l``."""
        return all((self.exp.rescore_dir(am, l.name) / "rescore.json").is_file() for am in self.cfg.lm.acoustic)

    def lm_finished(self, l) -> bool:
        return self.lm_made(l) and self.lm_rescored(l)

    def run_lm_part(self) -> List[Dict[str, Any]]:
        """Every LM system with its rescoring of every acoustic system, then the system table. Each LM is
        locked by the runner working on it (``lm/<name>/.lock``), so several runners can share the LM part;
        an LM's rescoring waits for the fp32 LM's n-best lists (left to a rerun when another runner is
        still making them)."""
        lm = self.cfg.lm
        waiting = [a for a in lm.acoustic if not self.exp.finished_named(a)]
        if waiting:
            self.console.line(f"LM rescoring waits for acoustic system(s) {', '.join(waiting)}: skipped here")
            return []
        first = self.exp.lm_systems()[0]
        left = []
        for l in self.exp.lm_systems():  # the fp32 LM first: its rescoring runs make the n-best lists
            if self.lm_finished(l):
                continue
            lock = SystemLock(self.exp.lm_dir(l.name))
            if not lock.acquire():
                self.console.line(f"LM {l.name} is being run by another runner: skipped here")
                left.append(l.name)
                continue
            try:
                self.console.line(f"LM {l.name} ({l.kind})")
                self.run_lm(l)
                if l is first or self.lm_rescored(first):  # its n-best lists exist
                    for am in lm.acoustic:
                        self.run_rescore(am, l)
                else:
                    self.console.line(f"LM {l.name}: rescoring waits for the fp32 LM's n-best lists")
                    left.append(l.name)
            finally:
                lock.release()
        if left:
            self.console.line(f"LM systems not finished here: {', '.join(left)}; rerun to complete the system table")
            return []
        return self.write_lm_table()

    def finished_rows(self) -> List[Dict[str, Any]]:
        """A row for every finished system of the config, in the config's order."""
        return [self.report.row(s) for s in self.cfg.systems if self.exp.finished(s)]

    def table_only(self) -> List[Dict[str, Any]]:
        """Write the table from the systems already finished; run nothing."""
        rows = self.finished_rows()
        missing = [s.name for s in self.cfg.systems if not self.exp.finished(s)]
        if missing:
            log.info("not finished (left out of the table): %s", missing)
        if rows:
            self.report.write_table(rows)
        if self.cfg.lm is not None:
            pairs = [(am, l) for am in self.cfg.lm.acoustic for l in self.exp.lm_systems()]
            done = [(am, l) for am, l in pairs if (self.exp.rescore_dir(am, l.name) / "rescore.json").is_file()
                    and (self.exp.lm_dir(l.name) / "size.json").is_file()]
            ref_am, ref_lm = self.exp.lm_reference()
            if done and (self.exp.rescore_dir(ref_am, ref_lm) / "rescore.json").is_file():
                self.report.write_system_table([self.report.system_row(am, l) for am, l in done])
        return rows

    def run_all(self, only: Optional[List[str]] = None, jobs: int = 1) -> List[Dict[str, Any]]:
        """Run every unfinished system (``only``: these, in this order; "lm": the LM part), one at a time,
        or with ``jobs`` > 1 as many side by side as their inputs allow (:meth:`run_parallel`)."""
        systems = self.cfg.systems
        order = sorted(systems, key=lambda s: s.kind != "fp32")  # fp32 first: others refer to it
        if only:
            by_name = {s.name: s for s in systems}
            unknown = [n for n in only if n not in by_name and n != "lm"]
            if unknown:
                raise ValueError(f"--only: no system(s) {unknown} in the config")
            order = [by_name[n] for n in only if n != "lm"]
        if not any(s.kind == "fp32" for s in systems):
            raise ValueError("the systems list needs an fp32 system (the reference of every comparison)")
        with_lm = self.cfg.lm is not None and (not only or "lm" in only)
        todo = [s.name for s in order if not self.exp.finished(s)]
        if todo:
            self.console.line(f"{len(todo)} of {len(order)} systems to run: {', '.join(todo)} (logs: {self.exp.out}/<system>/log.txt)")
        if jobs > 1:
            busy = self.run_parallel(order, todo, jobs, with_lm)
        else:
            busy = self.run_serial(order, todo)
        rows = self.finished_rows()
        if rows:  # once more with every row fresh (rows written early lacked the later reference's tests),
            # and with every finished system of the config: a run with --only does not shrink the table
            self.report.write_table(rows)
        if with_lm:
            if jobs > 1:
                self.write_lm_table()
            else:
                self.run_lm_part()
        if rows:  # the last lines: where the table, the plot and the TensorBoard logs are
            self.report.show_ending()
        if busy:
            self.console.line(f"not in the table yet (run by another runner): {', '.join(busy)}; rerun to complete it")
        return rows

    def run_serial(self, order, todo: List[str]) -> List[str]:
        """The systems one after the other; returns those left to another runner."""
        rows, busy = [], []
        for s in order:
            if not self.exp.finished(s) and self.needs_fp32(s) and not self.exp.finished_named("fp32"):
                self.console.line(f"{s.name} waits for the fp32 baseline (not finished yet): skipped here")
                busy.append(s.name)
                continue
            if not self.exp.finished(s):
                if not self.run_system(s, todo):
                    busy.append(s.name)
                    continue
            else:
                self.release_stale_lock(s)
            rows.append(self.report.row(s))
            self.report.write_table(rows, show=False)
        return busy

    def release_stale_lock(self, s) -> None:
        """Remove finished system ``s``'s lock if its runner is gone (killed after the system's last
        stage, before releasing it)."""
        lock = SystemLock(self.exp.sys_dir(s.name))
        if lock.path.is_file() and lock.stale():
            lock.release()

    def run_system(self, s, todo: List[str]) -> bool:
        """Every stage of system ``s`` (genotype, fine-tunings and exports, decodes) under its lock; False
        when another runner holds the lock."""
        lock = SystemLock(self.exp.sys_dir(s.name))
        if not lock.acquire():
            self.console.line(f"{s.name} is being run by another runner: skipped here")
            return False
        try:
            log.info("=== system %s (%s)", s.name, s.kind)
            self.console.line(f"[{todo.index(s.name) + 1}/{len(todo)}] {s.name} ({s.kind})")
            t0 = time.time()
            g = self.genotype(s)
            self.retrain(s, g)
            self.decode(s)
        finally:
            lock.release()
        self.console.line(f"    => {self.report.result_line(self.report.row(s))} ({time.time() - t0:.0f} s)")
        return True

    # ----------------------------------------------------------------- side by side (--jobs)
    def system_inputs(self, s) -> List[tuple]:
        """(what, file) pairs: the files of other systems that system ``s``'s stages read."""
        need = []
        if self.needs_fp32(s):
            need.append(("fp32", self.exp.sys_dir("fp32") / "size.json"))
        if s.genotype_from:  # the source's genotype; finetune_from_search: its search's subnet.pt too
            need.append((f"{s.genotype_from}'s genotype", self.exp.sys_dir(s.genotype_from) / "genotype_in.json"))
            if s.finetune_from_search:
                need.append((f"{s.genotype_from}'s search", self.search_subnet_path(s)))
        if s.search_from:
            need.append((s.search_from, self.exp.sys_dir(s.search_from) / "size.json"))
        if s.kind == "onnx":
            need.append((s.onnx_from, self.exp.sys_dir(s.onnx_from) / "size.json"))
        return need

    def search_subnet_path(self, s) -> Path:
        return self.exp.sys_dir(s.genotype_from or s.name) / "search" / "subnet.pt"

    def run_parallel(self, order, todo: List[str], jobs: int, with_lm: bool) -> List[str]:
        """The unfinished systems (and with ``with_lm`` the LM part) as tasks of a
        :class:`runner.schedule.Scheduler`: each starts once the files it reads exist, ``jobs`` at a time.
        Searches and sensitivity allocations start first (the fine-tunings that follow them are the
        longest chains), then the other systems in the config's order, then the LM steps; every task but
        the fp32 baseline's waits for it, so the baseline runs alone with every thread. Returns the
        systems left to another runner or never ready."""
        busy: List[str] = []
        tasks = []
        for s in order:
            if self.exp.finished(s):
                self.release_stale_lock(s)
                continue
            need = self.system_inputs(s)
            if s.kind != "fp32" and not any(w == "fp32" for w, _ in need):
                need.append(("fp32", self.exp.sys_dir("fp32") / "size.json"))

            def body(s=s):
                if not self.run_system(s, todo):
                    busy.append(s.name)

            tasks.append(Task(s.name, body, ready=lambda need=need: all(f.is_file() for _, f in need),
                              waits_for=", ".join(w for w, _ in need)))
        searches_first = sorted(tasks, key=lambda t: not self.makes_genotype(t.name))
        if with_lm:
            searches_first += self.lm_tasks()
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1)
        never = Scheduler(jobs=jobs, threads=threads).run(searches_first)
        for t in never:
            self.console.line(f"{t.name} waits for {t.waits_for} (not made by this run): skipped here")
            busy.append(t.name)
        return busy

    def makes_genotype(self, name: str) -> bool:
        s = next((s for s in self.cfg.systems if s.name == name), None)
        return s is not None and s.kind in ("nas", "kl", "hessian") and not s.genotype_from \
            and not (self.exp.sys_dir(s.name) / "genotype_in.json").is_file()

    def lm_tasks(self) -> List[Task]:
        """Two tasks per LM: make it (train or quantize), then rescore every acoustic system's n-best lists
        with it (the fp32 LM's rescoring makes the lists, so the others wait for it)."""
        lm, first, tasks = self.cfg.lm, self.exp.lm_systems()[0], []
        fp32_am = self.exp.sys_dir("fp32") / "size.json"

        def locked(l, what, fn):
            lock = SystemLock(self.exp.lm_dir(l.name))
            if not lock.acquire():
                self.console.line(f"LM {l.name} is being run by another runner: skipped here")
                return
            try:
                self.console.line(f"LM {l.name} ({l.kind}): {what}")
                fn()
            finally:
                lock.release()

        for l in self.exp.lm_systems():
            if not self.lm_made(l):
                # the AM's fp32 baseline first: it runs alone with every thread
                ready = (lambda: fp32_am.is_file()) if l is first else (lambda: self.lm_made(first) and fp32_am.is_file())
                tasks.append(Task(f"LM {l.name}", lambda l=l: locked(l, "make", lambda: self.run_lm(l)),
                                  ready=ready, waits_for="the fp32 AM" + ("" if l is first else f" and LM {first.name}")))
            if not self.lm_rescored(l):
                def rescore_all(l=l):
                    for am in lm.acoustic:
                        self.run_rescore(am, l)

                ready = (lambda l=l: self.lm_made(l) and all(self.exp.finished_named(a) for a in lm.acoustic)
                         and (l is first or self.lm_rescored(first)))
                tasks.append(Task(f"LM {l.name} rescoring", lambda l=l, f=rescore_all: locked(l, "rescore", f),
                                  ready=ready, after=[f"LM {l.name}"], waits_for=f"LM {l.name} and AM(s) {', '.join(lm.acoustic)}"
                                  + ("" if l is first else f" rescored with LM {first.name}")))
        return tasks

    def write_lm_table(self) -> List[Dict[str, Any]]:
        """The system table, when every LM has rescored every acoustic system."""
        if not all(self.lm_rescored(l) for l in self.exp.lm_systems()):
            self.console.line("LM systems not finished; rerun to complete the system table")
            return []
        rows = [self.report.system_row(am, l) for am in self.cfg.lm.acoustic for l in self.exp.lm_systems()]
        self.report.write_system_table(rows)
        return rows

    def needs_fp32(self, s) -> bool:
        if s.kind in ("fp32", "onnx"):
            return False
        if s.kind in ("kl", "hessian") or s.budget_ratio is not None:
            return True
        if s.kind == "nas" and s.search_from_fp32:
            return True
        return s.finetune_from_fp32 or s.distill_from_fp32



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default=None, help="default: the config's out, else exp/<config name>")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None, help="override the config's data_dir")
    p.add_argument("--only", default=None, help="comma-separated systems to run, in this order ('lm': the "
                   "config's LM systems, rescoring and system table)")
    p.add_argument("--table-only", action="store_true", help="only write the table of finished systems")
    p.add_argument("--compare", default=None, metavar="A:B,...",
                   help="only print WER changes of finished systems A against B on every evaluated set, with "
                        "MAPSSWE and paired-bootstrap p-values (runs nothing, writes nothing)")
    p.add_argument("--jobs", type=int, default=1, help="systems run side by side when their inputs allow "
                   "(each stage gets an equal share of OMP_NUM_THREADS, else of the CPUs); 1: one at a time")
    p.add_argument("--quiet", action="store_true", help="print only the table (no stage lines, no progress bars)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    stop_on_sigterm()  # a SIGTERM stops the running stage too, not only the runner
    # the console shows the stages and their progress; each stage's commands and output are in its log.txt
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    cfg = load_config(args.config)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    out = Path(args.out or cfg.out or f"exp/{Path(args.config).stem}")
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(cfg, out, args.device or cfg.device or "cpu", Console(quiet=args.quiet))
    runner.check_spaces()
    if args.compare:
        runner.report.print_comparisons([tuple(p.split(":")) for p in args.compare.split(",") if p])
    elif args.table_only:
        runner.table_only()
        runner.report.show_ending()
    else:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        runner.run_all(args.only.split(",") if args.only else None, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
