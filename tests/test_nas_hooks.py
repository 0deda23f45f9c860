"""ArchSearchHook inside the real training loop (tiny supernet, a stand-in loss): bi-level and
single-level steps move the logits, the warm-up holds them, tau follows the schedule, genotype.json is
written, and the hook state survives a checkpoint."""

import pytest
import torch

from nas import Architect, SizePenalty, TemperatureSchedule
from nas.hooks import ArchSearchHook
from search_spaces import Genotype
from search_spaces.space import search_space_from_dict
from supernet import SuperNet
from training.loop import Trainer, TrainOptions


def tiny_space():
    return search_space_from_dict({
        "name": "tiny",
        "network": dict(feat_dim=5, tdnn1_dim=16, hidden_dim=16, num_layers=3, bottleneck_dims=8,
                        time_strides=[1, 0, 3], prefinal_dim=8, prefinal_big_dim=12, num_pdfs=7),
        "choices": {"default": {"bits": [2, 8, 32], "bottleneck": [4, 8]}},
    })


class Batches:
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.data = [{"feats": torch.randn(2, 20, 5, generator=g), "lengths": torch.tensor([20, 14]),
                      "texts": ["A", "B"]} for _ in range(n)]

    def epoch(self, epoch, skip=0):
        yield from self.data[skip:]

    def num_batches(self, epoch=0):
        return len(self.data)


class Compiler:
    def compile(self, texts):
        return texts


def loss_fn(chain, xent, out_lengths, graphs):
    loss = chain.square().mean() - xent[..., 0].mean()
    return loss, {"objf_per_frame": -float(loss.detach()), "frames": int(out_lengths.sum()), "skipped": 0}


@pytest.mark.parametrize("mode", ["bilevel", "single"])
def test_hook_in_trainer(tmp_path, mode):
    torch.manual_seed(0)
    space = tiny_space()
    net = SuperNet.from_space(space)
    table = net.size_table()
    target = 0.3 * float(table.expected(net.arch.probs()).detach())
    architect = Architect(net.arch, SizePenalty(table, target, "hinge", 1.0), lr=0.05, mode=mode,
                          warmup_epochs=1)
    sched = TemperatureSchedule(5.0, 0.5, total=3, warmup=1)
    hook = ArchSearchHook(architect, sched, arch_batches=Batches(2, 1) if mode == "bilevel" else None,
                          space=space, table=table, log_every=2)
    opts = TrainOptions(epochs=3, lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=2)
    train = Batches(3, 0)
    trainer = Trainer(net, loss_fn, Compiler(), train, None, opts, tmp_path, "cpu", hooks=[hook],
                      params=net.weight_parameters(), show_progress=False)
    logits0 = [p.detach().clone() for p in net.arch_parameters()]
    trainer.opts.max_steps = 3  # the warm-up epoch only
    trainer.fit()
    assert all(torch.equal(a, p.detach()) for a, p in zip(logits0, net.arch_parameters()))
    assert net.arch.tau == 5.0
    trainer.opts.max_steps = None
    trainer.fit(resume=True)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(logits0, net.arch_parameters()))
    assert net.arch.tau == pytest.approx(sched(2 + 2 / 3))  # set at the start of the last step
    assert architect.steps == 6  # epochs 2 and 3, 3 steps each
    g = Genotype.load(str(tmp_path / "genotype.json"), space)
    assert g.source["epoch"] == 3 and g.expected_size_bytes == g.size_bytes(space)
    assert float(table.expected(net.arch.probs()).detach()) < 0.9 * target / 0.3  # the penalty pulled it down
    st = trainer.state_dict()["hooks"]["arch_search"]
    assert st["architect"]["steps"] == 6
    if mode == "bilevel":
        assert (st["arch_epoch"], st["arch_pos"]) == (2, 2)  # 6 held-out batches: 3 passes over 2


def test_non_finite_held_out_batch_leaves_logits_and_buffers_unchanged(tmp_path):
    torch.manual_seed(0)
    space = tiny_space()
    net = SuperNet.from_space(space)
    table = net.size_table()
    architect = Architect(net.arch, SizePenalty(table, 0.5 * table.max_bytes(), "hinge", 1.0), lr=0.05,
                          mode="bilevel", warmup_epochs=0)
    held = Batches(2, 1)
    held.data[0]["feats"][1, 4] = float("nan")
    held.data[0]["cut_ids"] = ["bad1", "bad2"]
    hook = ArchSearchHook(architect, arch_batches=held, space=space, table=table, log_every=0)
    opts = TrainOptions(epochs=1, lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1000)
    trainer = Trainer(net, loss_fn, Compiler(), Batches(1, 0), None, opts, tmp_path, "cpu", hooks=[hook],
                      params=net.weight_parameters(), show_progress=False)
    logits = [p.detach().clone() for p in net.arch_parameters()]
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    hook.after_optimizer_step(trainer)  # the NaN batch
    assert hook.last.get("skipped") == 1.0 and architect.skipped_steps == 1 and architect.steps == 0
    assert all(torch.equal(a, p.detach()) for a, p in zip(logits, net.arch_parameters()))
    assert all(torch.equal(buffers[k], b) for k, b in net.named_buffers())
    hook.after_optimizer_step(trainer)  # a finite batch moves the logits
    assert "skipped" not in hook.last and architect.steps == 1
    assert any(not torch.equal(a, p.detach()) for a, p in zip(logits, net.arch_parameters()))
    assert hook.state_dict()["architect"]["skipped_steps"] == 1
