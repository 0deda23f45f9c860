#!/usr/bin/env python
"""Benchmark: one supernet training step vs one plain full-precision step of the largest subnet.

Same batch, same process, interleaved: the supernet (train mode: a fresh Gumbel sample of every layer's
bit and bottleneck weights, composite weights sum_b w_b Q_b(W) with per-rank quantization, one matmul
per layer) does forward + backward (network weights and architecture logits); the baseline is the
standalone ``models.tdnnf.TDNNF`` at 32 bits and the largest bottlenecks (the supernet's shapes) doing
forward + backward. Prints the median step times and the ratio supernet / plain (goal <= 1.3).

Sampling modes (``--sampling``, a comma-separated list, each timed against the same plain arm):

* ``soft``: soft Gumbel samples, gradients to weights and logits (the single-level / EdMIPS step);
* ``hard``: hard straight-through samples with gradients to the logits (the bi-level architecture step:
  every candidate's quantized copy is computed, without autograd, for the logits' gradient);
* ``hard-weight``: hard samples treated as constants (``SuperNet.arch_grad = False``, the bi-level weight
  step): only the sampled subnet is computed.

A bi-level search iteration is one ``hard-weight`` step on a training batch plus one ``hard`` step on a
held-out batch.

The loss is a simple one by default (mean square of the chain output + the xent NLL of random targets);
``--loss lfmmi`` uses ``lfmmi.LFMMILoss`` on the test fixture graphs instead (the same cost in both arms,
so it lowers the ratio; the default isolates the model).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_supernet.py --space tdnnf_demo --batch 16 --frames 300
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training.cli import HelpFormatter  # noqa: E402

import torch  # noqa: E402

from lfmmi.graphs import DictLexicon, NumeratorCompiler, build_den_graph  # noqa: E402
from lfmmi.loss import LFMMILoss, LFMMIOptions  # noqa: E402
from models.tdnnf import TDNNF  # noqa: E402
from search_spaces import load_search_space  # noqa: E402
from supernet import SuperNet  # noqa: E402


def simple_loss(chain, xent, out_lengths, targets):
    return chain.square().mean() + torch.nn.functional.nll_loss(xent.reshape(-1, xent.shape[-1]), targets.reshape(-1))


def make_lfmmi(B, T_in, seed):
    """LF-MMI loss and numerator graphs from tests/fixtures/lfmmi (lengths fit the transcripts)."""
    fix = os.path.join(ROOT, "tests", "fixtures", "lfmmi")
    lex = DictLexicon.load(os.path.join(fix, "lexicon.txt"))
    with open(os.path.join(fix, "text.txt")) as f:
        texts = [l.strip() for l in f if l.strip()]
    den = build_den_graph(lex, texts, order=2)
    comp = NumeratorCompiler(lex)
    graphs = comp.compile([texts[i % len(texts)] for i in range(B)])
    return LFMMILoss(den, LFMMIOptions()), graphs, 2 * len(lex.phones)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--space", default="tdnnf_demo", help="search space name or YAML path")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=300, help="input frames per utterance (T_out = (T+2)//3)")
    ap.add_argument("--num-pdfs", type=int, default=120)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sampling", default="soft,hard,hard-weight",
                    help="comma-separated modes: soft, hard, hard-weight (module docstring)")
    ap.add_argument("--loss", choices=["simple", "lfmmi"], default="simple")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    loss_kind = args.loss
    graphs = lfmmi = None
    num_pdfs = args.num_pdfs
    if loss_kind == "lfmmi":
        try:
            lfmmi, graphs, num_pdfs = make_lfmmi(args.batch, args.frames, args.seed)
        except Exception as e:  # the LF-MMI package may not be usable yet
            print(f"LF-MMI unavailable ({type(e).__name__}: {e}); using the simple loss")
            loss_kind = "simple"
    space = load_search_space(args.space, num_pdfs=num_pdfs)
    modes = [m.strip() for m in args.sampling.split(",") if m.strip()]
    bad = sorted(set(modes) - {"soft", "hard", "hard-weight"})
    if bad:
        ap.error(f"unknown sampling mode(s) {bad}")
    sups = {}
    for m in modes:
        sup = SuperNet.from_space(space, hard=m != "soft").to(dev).train()
        sup.arch_grad = m != "hard-weight"
        sup.set_training_progress(0.3)
        sups[m] = sup
    largest = [(32, l.bottlenecks[-1] if l.has_bottleneck else None) for l in space.layers]
    plain = next(iter(sups.values())).export_subnet(largest).to(dev).train()
    assert isinstance(plain, TDNNF) and not plain.cfg.weight_bits
    plain.set_training_progress(0.3)

    B, T = args.batch, args.frames
    feats = torch.randn(B, T, space.network.feat_dim, device=dev)
    lengths = torch.full((B,), T, dtype=torch.long, device=dev)
    targets = torch.randint(0, num_pdfs, (B, (T + 2) // 3), device=dev)

    def step(net):
        net.zero_grad(set_to_none=True)
        chain, xent, ol = net(feats, lengths)
        if loss_kind == "lfmmi":
            loss, _ = lfmmi(chain, xent, ol, graphs)
        else:
            loss = simple_loss(chain, xent, ol, targets)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    arms = [("plain", plain)] + list(sups.items())
    times = {name: [] for name, _ in arms}
    for i in range(args.warmup + args.steps):
        for name, net in arms:  # interleaved: same conditions
            t0 = time.perf_counter()
            step(net)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"space": space.name, "batch": B, "frames": T, "num_pdfs": num_pdfs, "loss": loss_kind,
           "device": str(dev), "threads": torch.get_num_threads(), "plain_median_s": med["plain"],
           "modes": {m: {"median_s": med[m], "ratio": med[m] / med["plain"]} for m in sups}, "goal": 1.3}
    if "hard" in sups and "hard-weight" in sups:
        res["bilevel_iteration_ratio"] = (med["hard"] + med["hard-weight"]) / med["plain"]
    print(f"space {space.name}  batch {B} x {T} frames  loss {loss_kind}  device {dev}  "
          f"threads {torch.get_num_threads()}")
    print(f"plain fp32 largest subnet step : {1e3 * med['plain']:8.1f} ms (median of {args.steps})")
    for m in sups:
        print(f"supernet step, {m:11s}     : {1e3 * med[m]:8.1f} ms   ratio {med[m] / med['plain']:.2f}  (goal <= 1.3)")
    if "bilevel_iteration_ratio" in res:
        print(f"bi-level iteration (hard-weight + hard) / plain step: {res['bilevel_iteration_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
