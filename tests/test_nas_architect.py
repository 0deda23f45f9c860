"""Architect: bi-level (first order) and single-level steps, warm-up, state round trip."""
import torch

from nas import Architect, ArchParams, LayerChoices, SizePenalty, SizeTable


def setup():
    torch.manual_seed(0)
    layers = [LayerChoices("a", (2, 8)), LayerChoices("b", (4, 32), (8, 16))]
    arch = ArchParams(layers, tau=1.0)
    arch.train_sampling = "softmax"
    table = SizeTable(layers, [torch.tensor([[10.0], [40.0]]), torch.tensor([[20.0, 40.0], [160.0, 320.0]])])
    w = torch.nn.Parameter(torch.randn(4))  # a stand-in for the network weights
    return layers, arch, table, w


def test_bilevel_step_moves_only_the_logits():
    layers, arch, table, w = setup()
    arch_before = [p.detach().clone() for p in arch.arch_parameters()]
    w.grad = torch.full_like(w, 7.0)  # left by the weight step: must stay untouched

    def valid_loss():
        wb, wd = arch()[1]
        return (w.sum() * wb[0]) ** 2, {"frames": 3}

    arch.bit_logits[0].grad = torch.ones(2)  # stale gradient from the weight step's backward: ignored
    architect = Architect(arch, SizePenalty(table, 100.0, "linear", 0.1), lr=0.1)
    out = architect.step(valid_loss)
    assert set(out) >= {"arch_loss", "penalty", "expected_bytes", "frames"}
    assert torch.equal(w.grad, torch.full_like(w, 7.0))
    moved = [not torch.equal(a, p.detach()) for a, p in zip(arch_before, arch.arch_parameters())]
    # bit logits of both layers move (penalty), the dim logits of b move (penalty), the single-option
    # dim logit of a has zero gradient
    assert moved == [True, True, False, True]
    assert all(p.grad is None for p in arch.arch_parameters())


def test_single_level_step_from_grads():
    layers, arch, table, w = setup()
    architect = Architect(arch, SizePenalty(table, 50.0, "hinge", 1.0), lr=0.1, mode="single")
    opt = torch.optim.SGD([w], lr=0.1)
    before = arch.bit_logits[1].detach().clone()
    wb, wd = arch()[1]
    pen, expected = architect.penalty_term()
    loss = (w * wb[0]).sum() ** 2 + pen
    loss.backward()
    opt.step()
    architect.step_from_grads()
    assert not torch.equal(before, arch.bit_logits[1].detach())
    assert all(p.grad is None for p in arch.arch_parameters())
    assert float(expected.detach()) > 50.0


def test_warmup_and_state_round_trip():
    layers, arch, table, w = setup()
    architect = Architect(arch, SizePenalty(table, 50.0), warmup_epochs=2)
    assert not architect.active(0) and not architect.active(1.99) and architect.active(2)
    architect.step()
    st = architect.state_dict()
    other = Architect(ArchParams(layers), SizePenalty(table, 50.0))
    other.load_state_dict(st)
    assert other.steps == 1 and other.optimizer.state_dict()["state"].keys() == st["optimizer"]["state"].keys()
