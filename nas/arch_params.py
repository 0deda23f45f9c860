"""Architecture parameters: one logit vector per searchable layer and choice type.

Each searchable layer has a bit-width choice (e.g. ``(1, 2, 3, 4, 8)``) and a bottleneck choice
(e.g. ``(64, 96, 128, 160)``); a choice type with a single option is fixed (its weight is always
``[1.0]``). The logits live in an :class:`ArchParams` module of their own, so that the network's weights
and the architecture are optimised separately (``SuperNet.weight_parameters()`` vs
``SuperNet.arch_parameters()``) and both are saved in the model's ``state_dict``.

Calling the module returns the per-layer mixing weights ``[(w_bits, w_dims), ...]``:

* if weights were set explicitly (:meth:`ArchParams.set_fixed`, :meth:`ArchParams.set_choices`), those;
* in train mode, a fresh sample per call: ``train_sampling='gumbel'`` (Gumbel-softmax at ``tau``, hard
  straight-through when ``hard``) or ``'softmax'`` (plain softmax of logits/tau, DARTS/EdMIPS);
* in eval mode, ``eval_sampling='argmax'`` (one-hot argmax, default), ``'softmax'`` or ``'gumbel'``.

The last weights returned are kept in :attr:`ArchParams.last` (the penalty can use the very sample the
forward pass used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from nas.gumbel import gumbel_softmax

Weights = List[Tuple[torch.Tensor, torch.Tensor]]

INITS = ("uniform", "high")  # logits all equal, or rising with the candidate (largest first)
TRAIN_SAMPLING = ("gumbel", "softmax")
EVAL_SAMPLING = ("argmax", "softmax", "gumbel")


@dataclass(frozen=True)
class LayerChoices:
    """The candidates of one searchable layer. ``dims`` holds bottleneck sizes (ascending) or
    ``(None,)`` for a layer without a bottleneck; ``bits`` the bit-widths (ascending)."""

    name: str
    bits: Tuple[int, ...]
    dims: Tuple[Optional[int], ...] = (None,)

    def __post_init__(self):
        if len(self.bits) == 0 or len(self.dims) == 0:
            raise ValueError(f"layer {self.name}: empty choice list")
        if len(set(self.bits)) != len(self.bits) or len(set(self.dims)) != len(self.dims):
            raise ValueError(f"layer {self.name}: duplicate choices")
        if list(self.bits) != sorted(self.bits):
            raise ValueError(f"layer {self.name}: bit choices must be ascending, got {self.bits}")
        if None not in self.dims and list(self.dims) != sorted(self.dims):
            raise ValueError(f"layer {self.name}: bottleneck choices must be ascending, got {self.dims}")


class ArchParams(nn.Module):
    """Logits ``alpha`` per layer for bits and bottleneck, plus the sampling state.

    Args:
        layers: the searchable layers, in network order.
        init: ``"uniform"`` (all logits 0 plus ``init_std`` noise: the DARTS init) or ``"high"`` (logits
            proportional to the choice's index, favouring wide/precise choices at the start, as PLiNIO).
        init_std: standard deviation of the Gaussian noise added to the initial logits.
        tau: initial Gumbel temperature (a buffer; set it from a :class:`nas.TemperatureSchedule`).
        hard: hard (one-hot, straight-through) Gumbel samples instead of soft ones.
    """

    def __init__(self, layers: Sequence[LayerChoices], init: str = "uniform", init_std: float = 1e-3,
                 tau: float = 5.0, hard: bool = False, train_sampling: str = "gumbel",
                 eval_sampling: str = "argmax"):
        super().__init__()
        self.layers: Tuple[LayerChoices, ...] = tuple(layers)
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate layer names in {names}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        self.bit_logits = nn.ParameterList([nn.Parameter(self._init(len(l.bits), init, init_std))
                                            for l in self.layers])
        self.dim_logits = nn.ParameterList([nn.Parameter(self._init(len(l.dims), init, init_std))
                                            for l in self.layers])
        self.register_buffer("_tau", torch.tensor(float(tau)))
        self.hard = bool(hard)
        self.train_sampling = train_sampling
        self.eval_sampling = eval_sampling
        self.generator: Optional[torch.Generator] = None
        self._fixed: Optional[Weights] = None
        self.last: Optional[Weights] = None

    @staticmethod
    def _init(n: int, init: str, std: float) -> torch.Tensor:
        base = torch.zeros(n) if init == "uniform" or n == 1 else torch.linspace(-1.0, 1.0, n)
        return base + std * torch.randn(n) if n > 1 else base

    # ------------------------------------------------------------------ properties
    @property
    def names(self) -> List[str]:
        return [l.name for l in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def tau(self) -> float:
        return float(self._tau)

    @tau.setter
    def tau(self, value: float) -> None:
        if value <= 0:
            raise ValueError(f"temperature must be > 0, got {value}")
        self._tau.fill_(float(value))

    def arch_parameters(self) -> List[nn.Parameter]:
        """All logits (those of single-option choices included: their gradient is always zero)."""
        return list(self.bit_logits) + list(self.dim_logits)

    # ------------------------------------------------------------------ weights
    def probs(self) -> Weights:
        """Softmax of the logits (temperature 1): the categorical distribution being searched."""
        return [(torch.softmax(b, -1), torch.softmax(d, -1)) for b, d in zip(self.bit_logits, self.dim_logits)]

    def entropies(self) -> List[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]:
        """Per layer, the entropy of the bit and of the bottleneck distribution (softmax of the logits)
        divided by ``log(n)`` (1 = uniform, 0 = one-hot); None for a fixed (single-option) choice.
        Differentiable in the logits."""
        def h(logits):
            if logits.numel() == 1:
                return None
            lp = torch.log_softmax(logits, -1)
            return -(lp.exp() * lp).sum() / math.log(logits.numel())

        return [(h(b), h(d)) for b, d in zip(self.bit_logits, self.dim_logits)]

    def mean_entropy(self) -> torch.Tensor:
        """Mean normalised entropy over every searched choice (0-dim; 0 when nothing is searched)."""
        hs = [x for pair in self.entropies() for x in pair if x is not None]
        return torch.stack(hs).mean() if hs else self.bit_logits[0].new_zeros(())

    def _draw(self, logits: torch.Tensor, how: str) -> torch.Tensor:
        if logits.numel() == 1:
            return torch.ones_like(logits) + 0.0 * logits  # keeps the graph, gradient 0
        if how == "gumbel":
            return gumbel_softmax(logits, self.tau, hard=self.hard, generator=self.generator)
        if how == "softmax":
            return torch.softmax(logits / self.tau, -1)
        if how == "uniform":  # one-hot at a uniformly random candidate, no gradient (SuperNet.weight_sampling)
            i = torch.randint(logits.numel(), (1,), generator=self.generator,
                              device=self.generator.device if self.generator is not None else "cpu")
            return torch.zeros_like(logits.detach()).scatter_(-1, i.to(logits.device), 1.0)
        if how == "argmax":  # straight-through argmax (PLiNIO STEArgmax): one-hot forward, softmax grad
            if not (torch.is_grad_enabled() and logits.requires_grad):
                return torch.zeros_like(logits).scatter_(-1, logits.detach().argmax(-1, keepdim=True), 1.0)
            return gumbel_softmax(logits, 1.0, hard=True, noise=False)
        raise ValueError(f"unknown sampling {how!r}")

    def sample(self, how: Optional[str] = None) -> Weights:
        """Draw fresh mixing weights (``how`` defaults to the train/eval sampling of the current mode)."""
        how = how or (self.train_sampling if self.training else self.eval_sampling)
        return [(self._draw(b, how), self._draw(d, how)) for b, d in zip(self.bit_logits, self.dim_logits)]

    def forward(self) -> Weights:
        """The mixing weights for one forward pass of the supernet (see the module docstring)."""
        w = self._fixed if self._fixed is not None else self.sample()
        self.last = w
        return w

    # ------------------------------------------------------------------ explicit weights
    def set_fixed(self, weights: Optional[Weights]) -> None:
        """Use these weights for every forward pass until :meth:`clear_fixed` (``None`` clears)."""
        if weights is None:
            self._fixed = None
            return
        if len(weights) != len(self.layers):
            raise ValueError(f"{len(weights)} weight pairs for {len(self.layers)} layers")
        out = []
        for l, (wb, wd) in zip(self.layers, weights):
            wb, wd = torch.as_tensor(wb, dtype=torch.float32), torch.as_tensor(wd, dtype=torch.float32)
            if wb.shape != (len(l.bits),) or wd.shape != (len(l.dims),):
                raise ValueError(f"layer {l.name}: weights of shape {tuple(wb.shape)}, {tuple(wd.shape)} "
                                 f"for {len(l.bits)} bit and {len(l.dims)} bottleneck choices")
            out.append((wb.to(self._tau.device), wd.to(self._tau.device)))
        self._fixed = out

    def clear_fixed(self) -> None:
        self._fixed = None

    @property
    def is_fixed(self) -> bool:
        return self._fixed is not None

    def one_hot(self, choices: Iterable[Tuple[int, Optional[int]]]) -> Weights:
        """One-hot weights for ``[(bits, bottleneck), ...]`` in layer order."""
        choices = list(choices)
        if len(choices) != len(self.layers):
            raise ValueError(f"{len(choices)} choices for {len(self.layers)} layers")
        out = []
        for l, (b, d) in zip(self.layers, choices):
            if b not in l.bits:
                raise ValueError(f"layer {l.name}: bits {b} not among {l.bits}")
            if d not in l.dims:
                if len(l.dims) == 1 and l.dims[0] is None:
                    d = None
                else:
                    raise ValueError(f"layer {l.name}: bottleneck {d} not among {l.dims}")
            wb = torch.zeros(len(l.bits))
            wb[l.bits.index(b)] = 1.0
            wd = torch.zeros(len(l.dims))
            wd[l.dims.index(d)] = 1.0
            out.append((wb, wd))
        return out

    def set_choices(self, choices) -> None:
        """Fix one-hot weights from ``[(bits, bottleneck), ...]`` or a Genotype (matched by layer name)."""
        if hasattr(choices, "layers"):
            by_name = {}
            for lc in choices.layers:
                name = lc["name"] if isinstance(lc, dict) else lc.name
                bits = lc["bits"] if isinstance(lc, dict) else lc.bits
                bn = lc.get("bottleneck") if isinstance(lc, dict) else getattr(lc, "bottleneck", None)
                by_name[name] = (bits, bn)
            missing = [n for n in self.names if n not in by_name]
            if missing:
                raise ValueError(f"genotype lacks searchable layers {missing}")
            choices = [by_name[n] for n in self.names]
        self.set_fixed(self.one_hot(choices))

    def argmax_choices(self) -> List[Tuple[int, Optional[int]]]:
        """``[(bits, bottleneck), ...]``: the most probable choice of each layer (ties: first)."""
        out = []
        for l, b, d in zip(self.layers, self.bit_logits, self.dim_logits):
            out.append((l.bits[int(torch.argmax(b.detach()))], l.dims[int(torch.argmax(d.detach()))]))
        return out

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, tau={self.tau:.3g}, hard={self.hard}, " \
               f"train_sampling={self.train_sampling}, eval_sampling={self.eval_sampling}"
