"""Numerical guards: a batch with non-finite features, loss or gradient is skipped before any state
changes (BatchNorm statistics included), skips are counted per epoch and bounded, validation over 0
frames is NaN, and no model file or checkpoint is written with a non-finite tensor."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import corpus_with_nan_features, run_cli, run_cli_fail
from training import checkpoint as ckpt
from training.loop import TooManySkippedBatches, Trainer, TrainOptions


class ToyNet(torch.nn.Module):
    """feats (B, T, 5) -> chain (B, T, 3) through a linear layer and a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, feats, lengths):
        y = self.bn(self.lin(feats).transpose(1, 2)).transpose(1, 2)
        return y, y, lengths


class Batches:
    """Finite random batches; the batches listed in ``poison`` get what ``kind`` says."""

    def __init__(self, n, poison=(), kind="feats"):
        g = torch.Generator().manual_seed(0)
        self.data = []
        for i in range(n):
            feats = torch.randn(2, 6, 5, generator=g)
            text = "ok"
            if i in poison and kind == "feats":
                feats[0, 2] = float("nan")
            elif i in poison:
                text = kind  # the loss below reads it
            self.data.append({"feats": feats, "lengths": torch.tensor([6, 4]), "texts": [text, "ok"],
                              "cut_ids": [f"c{i}a", f"c{i}b"]})

    def epoch(self, epoch, skip=0):
        yield from self.data[skip:]

    def num_batches(self, epoch=0):
        return len(self.data)


class Compiler:
    def compile(self, texts):
        return texts


def toy_loss(chain, xent, out_lengths, texts):
    loss = chain.square().mean()
    if "loss" in texts:
        loss = loss * float("nan")
    elif "grad" in texts:  # finite value, infinite gradient
        loss = loss + torch.sqrt(chain.sum() * 0.0)  # d sqrt(x)/dx = inf at 0; inf * 0 = nan
    return loss, {"objf_per_frame": -float(loss.detach()), "frames": int(out_lengths.sum()), "skipped": 0}


def _trainer(tmp_path, batches, valid=None, **opts):
    torch.manual_seed(0)
    o = TrainOptions(epochs=1, lr=1e-2, warmup_steps=1, checkpoint_every=0, log_every=1000, **opts)
    return Trainer(ToyNet(), toy_loss, Compiler(), batches, valid, o, tmp_path, "cpu", show_progress=False,
                   tb_writer=_NullWriter())


class _NullWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


@pytest.mark.parametrize("kind", ["feats", "loss", "grad"])
def test_a_non_finite_batch_changes_no_state(tmp_path, kind):
    trainer = _trainer(tmp_path, Batches(2, poison={0}, kind=kind))
    before = _state(trainer)
    batch = trainer.train_batches.data[0]
    assert trainer.train_step(batch) == {"skipped_batch": 1.0}
    after = _state(trainer)
    for k in before:  # weights and BatchNorm running stats / num_batches_tracked unchanged
        assert torch.equal(before[k], after[k]), k
    assert trainer.step == 0 and trainer.skipped_batches == 1
    assert not trainer.optimizer.state  # Adam never stepped
    assert trainer.epoch_skips[0]["cut_ids"] == ["c0a", "c0b"]
    reason = {"feats": "features", "loss": "loss", "grad": "gradient"}[kind]
    assert reason in trainer.epoch_skips[0]["reason"]
    stats = trainer.train_step(trainer.train_batches.data[1])  # a good batch still trains
    assert "skipped_batch" not in stats and trainer.step == 1


def test_skips_are_counted_per_epoch_and_logged(tmp_path):
    trainer = _trainer(tmp_path, Batches(4, poison={1}), valid=Batches(1))
    trainer.opts.epochs = 2
    trainer.fit()
    recs = [json.loads(l) for l in open(tmp_path / "train_log.jsonl")]
    assert [r["epoch_skipped_batches"] for r in recs] == [1, 1]
    assert recs[-1]["skipped_batches"] == 2 and recs[0]["epoch_skips"][0]["cut_ids"] == ["c1a", "c1b"]
    assert trainer.step == 6
    assert ("train/skipped_batches", 1.0, 1) in trainer.tb.scalars  # at step 1
    assert any(t == "train/skipped_batches_epoch" for t, _, _ in trainer.tb.scalars)
    assert not ckpt.nonfinite_tensors(trainer.raw_model.state_dict())
    # the per-epoch count survives a checkpoint
    assert json.loads(ckpt.load(tmp_path / "checkpoint.pt")["epoch_skips"]) == []


def test_too_many_skipped_batches_is_an_error(tmp_path):
    trainer = _trainer(tmp_path, Batches(10, poison={2, 5}))
    assert trainer.max_skips_per_epoch == 1  # 1 % of 10 batches rounds down; one is always allowed
    with pytest.raises(TooManySkippedBatches, match=r"skipped 2 of 10 batches.*c5a"):
        trainer.fit()
    trainer = _trainer(tmp_path / "b", Batches(10, poison={2, 5}), max_skip_fraction=0.2)
    trainer.fit()
    assert trainer.skipped_batches == 2


def test_validation_over_zero_frames_is_nan(tmp_path, caplog):
    valid = Batches(1)

    def no_frames(chain, xent, out_lengths, texts):
        return chain.sum() * 0.0, {"objf_per_frame": 0.0, "frames": 0, "skipped": 2}

    trainer = _trainer(tmp_path, Batches(2), valid=valid)
    trainer.loss_fn = no_frames
    with caplog.at_level("WARNING"):
        v = trainer.validate()
    assert math.isnan(v["objf_per_frame"]) and v["frames"] == 0 and v["skipped"] == 2
    assert "0 frames" in caplog.text


def test_train_options_check_types_and_ranges():
    with pytest.raises(ValueError, match="train.epochs must be an integer.*'two'"):
        TrainOptions.from_dict({"epochs": "two"})
    with pytest.raises(ValueError, match="train.lr must be a finite number"):
        TrainOptions.from_dict({"lr": float("nan")})
    with pytest.raises(ValueError, match="train.max_duration must be > 0"):
        TrainOptions.from_dict({"max_duration": 0})
    with pytest.raises(ValueError, match="max_skip_fraction"):
        TrainOptions.from_dict({"max_skip_fraction": 2})


def test_no_model_file_or_checkpoint_with_a_non_finite_tensor(tmp_path):
    from models.tdnnf import build_model
    from quant.packing import export_packed
    from search_spaces.genotype import Genotype
    from search_spaces.space import load_search_space
    from training.model_io import save_model_file

    space = load_search_space("tdnnf_demo", num_pdfs=10)
    model = build_model(Genotype.uniform(space, 8).to_config(space, num_pdfs=10))
    with torch.no_grad():
        model.tdnnfs[1].bn.running_var[3] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to write .*model.pt.*tdnnfs\.1\.bn\.running_var"):
        save_model_file(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"refusing to write .*tdnnf2\.bn\.var"):
        export_packed(model, str(tmp_path / "model.safetensors"))
    assert not list(tmp_path.iterdir())

    trainer = _trainer(tmp_path, Batches(2))
    with torch.no_grad():
        trainer.raw_model.lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="lin.weight"):
        trainer.save_checkpoint()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_retrain_skips_a_cut_with_nan_frames(tiny_corpus, small_train_config, tmp_path):
    data = tmp_path / "data"
    bad = corpus_with_nan_features(tiny_corpus, data, "train", num_cuts=1)
    out = tmp_path / "run"
    r = run_cli(["retrain.py", "--data-dir", data, "--config", small_train_config, "--no-progress",
                 "--out", out])
    assert "non-finite features" in r.stderr and bad[0] in r.stderr
    recs = [json.loads(l) for l in open(out / "train_log.jsonl")]
    assert [r["epoch_skipped_batches"] for r in recs] == [1, 1]  # the cut's batch, once per epoch
    assert all(bad[0] in r["epoch_skips"][0]["cut_ids"] for r in recs)
    assert all(math.isfinite(r["valid"]["objf_per_frame"]) for r in recs)
    assert json.load(open(out / "size.json"))["skipped_batches"] == 2
    assert not ckpt.nonfinite_tensors(ckpt.load(out / "model.pt")["state_dict"])
    assert not ckpt.nonfinite_tensors(ckpt.load(out / "checkpoint.pt")["model"])


def test_retrain_with_many_bad_batches_fails_clearly(tiny_corpus, small_train_config, tmp_path):
    data = tmp_path / "data"
    corpus_with_nan_features(tiny_corpus, data, "train", num_cuts=40)
    out = tmp_path / "run"
    r = run_cli_fail(["retrain.py", "--data-dir", data, "--config", small_train_config, "--no-progress",
                      "--out", out])
    assert r.returncode == 2
    assert "error: epoch 1 skipped 2 of" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "model.pt").exists()


def test_ddp_ranks_skip_a_bad_batch_together(tiny_corpus, small_train_config, tmp_path):
    from tests.test_training_loop import _free_port

    data = tmp_path / "data"
    bad = corpus_with_nan_features(tiny_corpus, data, "train", num_cuts=1)
    out = tmp_path / "ddp"
    r = run_cli(["-m", "torch.distributed.run", "--nproc_per_node", 2, "--master_port", _free_port(), "retrain.py",
                 "--data-dir", data, "--config", small_train_config, "--epochs", 1, "--no-progress", "--out", out])
    size = json.load(open(out / "size.json"))
    assert size["world_size"] == 2 and size["skipped_batches"] == 1
    sums = size["ddp_param_checksums"]
    assert sums[0] == sums[1] and all(math.isfinite(x) for x in sums[0])
    assert "non-finite features at step" in r.stderr and bad[0] in r.stderr
    assert "non-finite features on another rank" in r.stderr  # the rank whose own batch was finite
