#!/usr/bin/env python
"""Build a genotype's network, train it with quantization-aware training, export the packed model.

    python retrain.py --data-dir data/synth_demo --space tdnnf_demo --genotype exp/search/genotype.json \
        --out exp/retrain
    python retrain.py ... --uniform-bits 4          # uniform-precision baseline
    python retrain.py ...                           # no genotype: the fp32 baseline (32 bits, max dims)
    torchrun --nproc_per_node 2 retrain.py ...      # DistributedDataParallel (gloo on CPU, nccl on CUDA)

Outputs in --out: ``model.pt`` (float weights, config, CMVN), ``model.safetensors`` (the packed low-bit
file whose bytes are the reported size), ``size.json`` (cost model vs bytes on disk), ``genotype.json``,
``checkpoint.pt`` and ``checkpoint.prev.pt`` (for --resume), ``run_identity.json`` (what the run is:
--resume refuses a directory holding another run), ``train_log.jsonl`` and TensorBoard logs under ``tb/``.
A second process on the same --out is refused (``.run.lock``, training/rundir.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from models.bottleneck_order import ORDER_METHODS
from models.tdnnf import build_model
from quant.admm import ADMMQuantizer
from quant.cost_model import fp32_bytes, model_size
from quant.options import TRAINERS, QuantOptions
from quant.packing import export_packed
from search_spaces.genotype import Genotype
from training import distributed
from training.checkpoint import has_checkpoint
from training.cli import HelpFormatter, add_debug_flag, number, run_main
from training.distill import DistillHook, DistillOptions
from training.experiment import config_section, lfmmi_options, load_sections, make_batches, make_lfmmi, start_run
from training.loop import TrainHook, TrainOptions, Trainer
from training.model_io import init_from, load_model_file, model_metadata, save_model_file
from training.rundir import abspath_or_none, check_identity, claim_out_dir, config_hash, genotype_hash

log = logging.getLogger("retrain")


class ADMMHook(TrainHook):
    """Runs :class:`quant.admm.ADMMQuantizer` inside the training loop."""

    name = "admm"

    def __init__(self, rho: float, update_every: int):
        self.rho, self.update_every = rho, update_every
        self.admm = None
        self._pending = None

    def on_fit_start(self, trainer):
        if self.admm is None:
            self.admm = ADMMQuantizer(trainer.raw_model, rho=self.rho)
            if self._pending is not None:
                self.admm.load_state_dict(self._pending)

    def extra_loss(self, trainer, batch, outputs):
        return self.admm.loss_term(trainer.raw_model).to(outputs[0].device) if self.admm.bits else None

    def after_optimizer_step(self, trainer):
        if trainer.step % self.update_every == 0:
            res = self.admm.update(trainer.raw_model)
            if res and trainer.dist.is_main:
                trainer.log_scalars("admm", {"mean_primal_residual": float(np.mean(list(res.values())))})

    def on_fit_end(self, trainer):
        self.admm.finalize(trainer.raw_model)

    def state_dict(self):
        return self.admm.state_dict() if self.admm is not None else {}

    def load_state_dict(self, state):
        if state:
            if self.admm is None:
                self._pending = state
            else:
                self.admm.load_state_dict(state)


def load_config(path):
    return load_sections(path, ("train", "lfmmi", "quant", "distill"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True, help="prepared corpus (prepare_data.py)")
    p.add_argument("--space", default="tdnnf_demo", help="search space name or YAML path")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--genotype", help="genotype JSON (train_search.py, KL/Hessian allocators)")
    g.add_argument("--uniform-bits", type=number(minimum=1, integer=True), help="uniform precision baseline (max bottlenecks)")
    p.add_argument("--config", default=None, help="YAML with train/lfmmi/quant sections")
    p.add_argument("--out", required=True)
    p.add_argument("--init-from", default=None, help="fine-tune from this float model.pt")
    p.add_argument("--bottleneck-order", choices=ORDER_METHODS, default="pca",
                   help="order the --init-from model's bottleneck units by importance before slicing "
                        "(models.bottleneck_order; default: %(default)s)")
    p.add_argument("--quant-trainer", choices=TRAINERS, default=None, help="override the config's quant.trainer")
    p.add_argument("--distill-from", default=None,
                   help="float teacher model.pt: add the frame-level KL to its chain output to the loss "
                        "(training.distill; weight and temperature from the config's distill: section)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=number(minimum=1, integer=True), default=None)
    p.add_argument("--max-steps", type=number(minimum=1, integer=True), default=None)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    topts = config_section(args.config, TrainOptions.from_dict, cfg.get("train"))
    topts = topts.replace(seed=args.seed, epochs=args.epochs, max_steps=args.max_steps)  # flags over YAML
    qopts = config_section(args.config, QuantOptions.from_dict, cfg.get("quant")).replace(trainer=args.quant_trainer)
    trainer_kind = qopts.trainer
    config_section(args.config, lfmmi_options, cfg.get("lfmmi"))  # checked now: an error names the file
    dopts = config_section(args.config, DistillOptions.from_dict, cfg.get("distill"))

    dinfo, device, out, corpus, space = start_run(args.device, topts.seed, args.out, args.data_dir, args.space)
    if args.genotype:
        geno = Genotype.load(args.genotype, space)
    elif args.uniform_bits is not None:
        geno = Genotype.uniform(space, args.uniform_bits)
    else:
        geno = Genotype.full_precision(space)
    mcfg = geno.to_config(space, num_pdfs=corpus.num_pdfs)
    model = build_model(mcfg)
    identity = {"kind": "retrain", "space": space.name,
                "architecture": "genotype" if args.genotype else (
                    f"uniform-{args.uniform_bits}bit" if args.uniform_bits is not None else "fp32"),
                "genotype_hash": genotype_hash(geno), "config_hash": config_hash(cfg, quant_trainer=trainer_kind),
                "data_dir": abspath_or_none(args.data_dir), "seed": topts.seed,
                "init_from": abspath_or_none(args.init_from), "distill_from": abspath_or_none(args.distill_from)}
    check_identity(out, identity, args.resume)  # fail fast; claimed below, once every input has loaded
    if args.init_from and not (args.resume and has_checkpoint(out / "checkpoint.pt")):
        init_from(model, args.init_from, args.bottleneck_order)

    loss_fn, compiler, den = make_lfmmi(corpus, cfg.get("lfmmi"))
    train = make_batches(corpus.cuts("train"), corpus, topts.max_duration, True, topts.seed, dinfo)
    valid = make_batches(corpus.cuts("dev"), corpus, topts.valid_max_duration, False, 0, dinfo)
    hooks = []
    if args.distill_from:
        teacher = load_model_file(args.distill_from)
        if (teacher.cfg.num_pdfs, teacher.cfg.feat_dim) != (mcfg.num_pdfs, mcfg.feat_dim):
            raise SystemExit(f"--distill-from {args.distill_from}: teacher has {teacher.cfg.num_pdfs} pdfs and "
                             f"{teacher.cfg.feat_dim}-dim features, the student {mcfg.num_pdfs} and {mcfg.feat_dim}")
        hooks.append(DistillHook(teacher, dopts))
        log.info("distilling from %s (weight %g, temperature %g)", args.distill_from, dopts.weight,
                 dopts.temperature)
    if trainer_kind == "admm":
        hooks.append(ADMMHook(float(qopts.admm_rho), qopts.admm_update_every))
    # the first write into --out: lock it, check and record what the run is
    claim_out_dir(out, identity, args.resume, dinfo.is_main)
    if dinfo.is_main:
        geno.save(str(out / "genotype.json"))
        log.info("architecture:\n%s", geno.summary(space))
    trainer = Trainer(model, loss_fn.to(device), compiler, train, valid, topts, out, device, dinfo, hooks,
                      show_progress=not args.no_progress)
    t0 = time.time()
    valid_stats = trainer.fit(resume=args.resume)
    train_seconds = time.time() - t0
    checksums = distributed.param_checksums(trainer.raw_model, dinfo) if dinfo.enabled else None
    model = trainer.raw_model.cpu().eval()

    if dinfo.is_main:
        save_model_file(model, out / "model.pt", corpus.cmvn, corpus.lexicon.phones)
        packed = out / "model.safetensors"
        payload = export_packed(model, str(packed), extra_metadata=model_metadata(corpus.cmvn, corpus.lexicon.phones))
        rep = model_size(model.cfg)
        # the reference is the fp32 model of the space's largest network (the fp32 baseline)
        base_fp32 = fp32_bytes(space.network.replace(num_pdfs=corpus.num_pdfs))
        size = {"predicted_bytes": rep.total_bytes, "payload_bytes": payload,
                "file_bytes": os.path.getsize(packed), "fp32_bytes": base_fp32,
                "compression_ratio": base_fp32 / payload, "per_layer": rep.per_layer,
                "parameters": model.num_parameters(include_xent=False),
                "train_seconds": train_seconds, "trainer": trainer_kind, "valid": valid_stats,
                "distill_from": args.distill_from,
                "skipped_sequences": trainer.skipped_sequences, "skipped_batches": trainer.skipped_batches,
                "den_graph": {"states": den.num_states, "arcs": den.num_arcs},
                "world_size": dinfo.world_size}
        if checksums is not None:
            size["ddp_param_checksums"] = checksums
        # size.json marks the system trained for run_experiments.py: written last, atomically
        tmp = out / "size.json.tmp"
        with open(tmp, "w") as f:
            json.dump(size, f, indent=1)
        os.replace(tmp, out / "size.json")
        log.info("exported %s: %d bytes payload (%.2fx smaller than the fp32 baseline's %d bytes); "
                 "trained in %.0f s", packed, payload, base_fp32 / payload, base_fp32, train_seconds)
    distributed.cleanup(dinfo)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
