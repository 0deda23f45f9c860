"""Factored TDNN (TDNN-F, Kaldi ``tdnnf-layer``) acoustic model for LF-MMI, with per-weight bit-widths.

Network (Kaldi swbd ``tdnn_7r`` shape, sizes from :class:`TDNNFConfig`)::

    input (B,T,F) --edge-replicated context-->
    tdnn1:            splice(tdnn1_context) [+ i-vector] -> affine -> ReLU -> BN -> dropout
    tdnnf_i (i=1..N): linear D_in->b  (offsets -s,0, no bias, semi-orthogonal, floating scale)
                      affine b->D     (offsets 0,s, bias) -> ReLU -> BN(no affine) -> continuous dropout
                      out = bypass_scale * in + layer_out        (stride 0 = 1x1; no bypass if D_in != D)
    prefinal_l:       linear D -> small (semi-orthogonal), shared by both heads (Kaldi ``prefinal-l``)
    chain head:       prefinal_chain = affine small->big, ReLU, BN, linear big->small (semi-orth.), BN;
                      output = affine small->num_pdfs (no log-softmax)
    xent head:        prefinal_xent (same shape, own weights) -> affine -> log_softmax        (training only)

Weight layout is Kaldi's: a TDNN weight is a matrix ``(out, k * in)`` whose columns are the ``k`` time offsets
(ascending) times the input dims, offset-major. The output row is the quantization channel.

Frame subsampling (factor f = 3): the network runs at the input frame rate up to the first TDNN-F layer whose
time-stride is a positive multiple of f; the sequence is subsampled there (every f-th frame, on the grid of
output times 0, f, 2f, ...) and that layer and all later ones run on the subsampled sequence with stride s/f.
This computes exactly what Kaldi computes for output frames t = 0, f, 2f, ... (Kaldi evaluates each layer
only at the times the next one needs). If no layer has such a stride the subsampling happens before the
prefinal layers. Layers after the subsampling point must have stride 0 or a multiple of f.

Lengths: ``T_out = (T_in + f - 1) // f`` exactly (``(T_in + 2) // 3``). The model needs ``left_context`` /
``right_context`` frames around each utterance; it supplies them by edge replication *per utterance* (the
frames before time 0 repeat frame 0; frames after ``lengths[b] - 1`` repeat frame ``lengths[b] - 1``, so batch
padding never leaks into an utterance's outputs), then evaluates every layer without padding ("valid").
Output frames at or past ``out_lengths[b]`` are padding (computed from replicated frames), never use them.

BatchNorm has no learned scale/offset (Kaldi ``batchnorm``). In training its batch statistics (and the
running statistics it accumulates) use only the frames whose time lies inside their utterance,
``0 <= t < lengths[b]``, so replicated context and batch padding do not bias them
(``bn_mask_padding: true``, default; ``false`` = plain BatchNorm over every evaluated frame). In eval mode
the running statistics are used and the mask plays no part.

Per-weight bits: ``config.weight_bits`` maps weight names (see :func:`models.layout.weight_names`) to ``{1,2,3,4,8,32}``;
missing names are 32 (float). When ``bits < 32`` the forward uses
``models.quantizers.fake_quant(w, bits, config.quant_per_channel, config.quant_scale)`` (STE gradient); the
latent float weight is what the optimizer and the semi-orthogonal step update. ``model.quant_enabled = False``
turns fake quantization off (ADMM training, or a model rebuilt from a packed file whose weights are
already on the grid).

Supernet hooks: subclass and override :meth:`TDNNF.qw` (effective weight of a named matrix, e.g. a mix of
quantized copies) and :meth:`TDNNF.layer_weights` (both factors of a TDNN-F layer, e.g. rank-masked).
Reusable pieces: :func:`splice`, :func:`tdnn_conv`, :func:`factored_tdnn`,
:func:`tdnnf_layer_forward`, :func:`continuous_dropout`, :func:`semi_orthogonal_step_`,
:func:`dropout_at`; the layout (names, tensor shapes, genotype layers) is in :mod:`models.layout`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from models.config import TDNNFConfig, contexts, parse_dropout_schedule, subsampling_point
from models.quantizers import fake_quant

# --------------------------------------------------------------------------------------------------------
# Functional building blocks (shared with the supernet)
# --------------------------------------------------------------------------------------------------------

def dropout_at(schedule: str, progress: float) -> float:
    """Dropout proportion at training progress in [0, 1] (piecewise linear, Kaldi dropout_schedule.py)."""
    pts = parse_dropout_schedule(schedule)
    x = min(max(float(progress), 0.0), 1.0)
    if x <= pts[0][0]:
        return pts[0][1]
    for (f0, v0), (f1, v1) in zip(pts, pts[1:]):
        if f0 <= x <= f1:
            return v0 if f1 == f0 else v0 + (v1 - v0) * (x - f0) / (f1 - f0)
    return pts[-1][1]


def continuous_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Kaldi continuous dropout: x * m, m ~ U[1-2p, 1+2p] per (sequence, channel), shared across time.
    ``x`` is (B, C, T)."""
    if not training or p <= 0.0:
        return x
    m = torch.rand(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    return x * (1.0 - 2.0 * p + 4.0 * p * m)


def splice(x: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """(B, C, T) -> (B, k*C, T - (max-min)) with frames x[t+o] for o in offsets, offset-major channels;
    output index i is time ``t0 + i - offsets[0]`` if x's index 0 is time t0."""
    lo, hi = offsets[0], offsets[-1]
    T = x.shape[2] - (hi - lo)
    if T <= 0:
        raise ValueError("sequence too short for the splice context")
    return torch.cat([x[:, :, o - lo: o - lo + T] for o in offsets], dim=1)


def conv_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Kaldi-layout (out, k*in) -> conv1d weight (out, in, k)."""
    out, cols = w.shape
    return w.reshape(out, k, cols // k).transpose(1, 2)


def tdnn_conv(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """TDNN with two offsets {0, stride} (stride>0) or one (stride 0), no padding: (B,in,T)->(B,out,T-stride)."""
    k = 2 if stride > 0 else 1
    return F.conv1d(x, conv_weight(w, k), bias, dilation=max(stride, 1))


def factored_tdnn(x: torch.Tensor, w_linear: torch.Tensor, w_affine: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: int) -> torch.Tensor:
    """Linear factor (offsets -s,0) then affine factor (offsets 0,s): (B,Din,T) -> (B,D,T-2s).
    Output index i is the time of input index i + s."""
    return tdnn_conv(tdnn_conv(x, w_linear, None, stride), w_affine, bias, stride)


class _MaskedBatchNorm(torch.autograd.Function):
    """Normalisation of (B, C, T) by the mean and variance of the frames where ``m`` (B, 1, T; 0/1 floats,
    n = m.sum() > 0) is 1, in fewer passes over the tensor than the composed operations: the statistics are
    batched matrix-vector products, and the backward is the closed form
    ``dx = rstd * (g - m / n * (sum(g) + y * sum(g * y)))`` (sums over every frame of the batch; every
    output frame depends on the statistics, only masked frames enter them). Returns (y, mean, var); only y
    is differentiable, and only once (a second derivative raises)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, eps: float):
        n = m.sum()
        mv = m[:, 0, :, None]                                      # (B, T, 1)
        mean = torch.bmm(x, mv).sum(0).squeeze(1) / n               # (C,)
        xc = x - mean[None, :, None]
        var = torch.bmm(xc.square(), mv).sum(0).squeeze(1) / n
        rstd = torch.rsqrt(var + eps)
        y = xc.mul_(rstd[None, :, None])
        ctx.save_for_backward(y, m, rstd, n)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor, _g_mean, _g_var):
        y, m, rstd, n = ctx.saved_tensors
        sg = g.sum(dim=(0, 2))
        sgy = (g * y).sum(dim=(0, 2))
        t = torch.addcmul(sg[None, :, None], y, sgy[None, :, None]).mul_(m / n)
        return torch.sub(g, t).mul_(rstd[None, :, None]), None, None


def masked_batch_norm_reference(x: torch.Tensor, mask: torch.Tensor, eps: float):
    """The masked statistics and normalisation as composed operations (the reference of
    :class:`_MaskedBatchNorm`): (y, mean, var) of (B, C, T) ``x`` under a (B, 1, T) 0/1 float ``mask``."""
    n = mask.sum()
    mean = (x * mask).sum(dim=(0, 2)) / n
    xc = x - mean[None, :, None]
    var = (xc.square() * mask).sum(dim=(0, 2)) / n
    return xc * torch.rsqrt(var + eps)[None, :, None], mean, var


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """BatchNorm (no affine) of (B, C, T); in training the statistics use only frames where ``mask``
    (broadcastable to (B, 1, T)) is true, and update ``bn``'s running stats like nn.BatchNorm1d does."""
    if mask is None or not bn.training:
        return bn(x)
    m = mask.to(x.dtype).expand(x.shape[0], 1, x.shape[2]).contiguous()
    n = m.sum()
    if float(n) < 2:
        return bn(x)
    y, mean, var = _MaskedBatchNorm.apply(x, m, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            mom = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - mom).add_(mom * mean)
            bn.running_var.mul_(1 - mom).add_(mom * var * (n / (n - 1)))
            bn.num_batches_tracked += 1
    return y


def tdnnf_layer_forward(x: torch.Tensor, w_linear: torch.Tensor, w_affine: torch.Tensor, bias: torch.Tensor,
                        stride: int, bn: nn.Module, dropout_p: float, bypass_scale: float,
                        training: bool, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One TDNN-F layer given its (already quantized) weights; ``stride`` on the current frame grid;
    ``mask`` (B, 1, T_out) marks the output frames BatchNorm statistics may use (None: all)."""
    y = factored_tdnn(x, w_linear, w_affine, bias, stride)
    y = continuous_dropout(batch_norm(F.relu(y), bn, mask), dropout_p, training)
    if bypass_scale and x.shape[1] == y.shape[1]:
        y = torch.add(y, x[:, :, stride: x.shape[2] - stride] if stride > 0 else x, alpha=bypass_scale)
    return y


def pointwise(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1x1 affine on (B, C, T)."""
    y = torch.matmul(w, x)
    return y if bias is None else y + bias[:, None]


@torch.no_grad()
def semi_orthogonal_step_(w: torch.Tensor) -> float:
    """Kaldi ConstrainOrthonormalInternal with floating scale, in place on a 2-D weight (transposed
    internally when rows > cols). Returns the pre-update ratio tr(PP^T)*rows/tr(P)^2 (1 = orthogonal)."""
    M = w.detach().to(torch.float64)
    transpose = M.shape[0] > M.shape[1]
    if transpose:
        M = M.t()
    rows = M.shape[0]
    P = M @ M.t()
    tr_p = torch.trace(P)
    tr_pp = (P * P).sum()
    if tr_p <= 0:
        return float("nan")
    scale2 = tr_pp / tr_p
    ratio = float(tr_pp * rows / (tr_p * tr_p))
    speed = 0.125
    if ratio > 1.02:
        speed *= 0.5
    if ratio > 1.1:
        speed *= 0.5
    alpha = speed / scale2
    P = P - scale2 * torch.eye(rows, dtype=P.dtype, device=P.device)
    M = M - 4.0 * alpha * (P @ M)
    w.copy_((M.t() if transpose else M).to(w.dtype))
    return ratio


def semi_orthogonality_error(w: torch.Tensor) -> float:
    """||P - s^2 I||_F / (s^2 sqrt(rows)) with P = M M^T (smaller Gram) and s^2 = tr(PP^T)/tr(P)."""
    M = w.detach().to(torch.float64)
    if M.shape[0] > M.shape[1]:
        M = M.t()
    P = M @ M.t()
    s2 = (P * P).sum() / torch.trace(P)
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return float(torch.linalg.norm(P - s2 * eye) / (s2 * math.sqrt(P.shape[0])))


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------

def _bn(dim: int, cfg: TDNNFConfig) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(dim, eps=cfg.bn_eps, momentum=cfg.bn_momentum, affine=False)


def _init_weight(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, cols) / math.sqrt(cols))


class TDNNFLayer(nn.Module):
    def __init__(self, din: int, dim: int, bottleneck: int, stride: int, cfg: TDNNFConfig):
        super().__init__()
        k = 2 if stride > 0 else 1
        self.stride = stride
        self.linear = _init_weight(bottleneck, k * din)
        self.affine = _init_weight(dim, k * bottleneck)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.bn = _bn(dim, cfg)


class Prefinal(nn.Module):
    def __init__(self, small: int, big: int, cfg: TDNNFConfig):
        super().__init__()
        self.affine = _init_weight(big, small)
        self.bias = nn.Parameter(torch.zeros(big))
        self.bn1 = _bn(big, cfg)
        self.linear = _init_weight(small, big)
        self.bn2 = _bn(small, cfg)


class TDNNF(nn.Module):
    """TDNN-F acoustic model. ``forward(feats (B,T,F), lengths (B,)) -> (chain_out, xent_out, out_lengths)``;
    ``xent_out`` is None when the model has no xent head (a model rebuilt from a packed file)."""

    def __init__(self, cfg: TDNNFConfig):
        super().__init__()
        cfg.validate(require_num_pdfs=True)
        self.cfg = cfg
        self.quant_enabled = True
        self.dropout_p = 0.0
        D, H, S, Bg, N = cfg.tdnn1_dim, cfg.hidden_dim, cfg.prefinal_dim, cfg.prefinal_big_dim, cfg.num_pdfs
        self.tdnn1 = _init_weight(D, cfg.tdnn1_input_dim)
        self.tdnn1_bias = nn.Parameter(torch.zeros(D))
        self.tdnn1_bn = _bn(D, cfg)
        layers = []
        din = D
        for i in range(cfg.num_layers):
            layers.append(TDNNFLayer(din, H, cfg.bottleneck_dims[i], cfg.time_strides[i], cfg))
            din = H
        self.tdnnfs = nn.ModuleList(layers)
        self.prefinal_l = _init_weight(S, din)
        self.prefinal_chain = Prefinal(S, Bg, cfg)
        # Kaldi output-layer: param-stddev 0, bias-stddev 0
        self.output = nn.Parameter(torch.zeros(N, S))
        self.output_bias = nn.Parameter(torch.zeros(N))
        if cfg.xent:
            self.prefinal_xent = Prefinal(S, Bg, cfg)
            self.output_xent = nn.Parameter(torch.zeros(N, S))
            self.output_xent_bias = nn.Parameter(torch.zeros(N))
        lf, rf, ls, rs = contexts(cfg)
        self.left_context = lf + ls
        self.right_context = rf + rs

    # ---- named tensors (export names of tensor_layout) ----
    def weight_params(self, include_xent: bool = True) -> Dict[str, nn.Parameter]:
        d: Dict[str, nn.Parameter] = {"tdnn1": self.tdnn1}
        for i, l in enumerate(self.tdnnfs, 1):
            d[f"tdnnf{i}.linear"] = l.linear
            d[f"tdnnf{i}.affine"] = l.affine
        d["prefinal_l"] = self.prefinal_l
        d["prefinal_chain.affine"] = self.prefinal_chain.affine
        d["prefinal_chain.linear"] = self.prefinal_chain.linear
        d["output"] = self.output
        if include_xent and self.cfg.xent:
            d["prefinal_xent.affine"] = self.prefinal_xent.affine
            d["prefinal_xent.linear"] = self.prefinal_xent.linear
            d["output_xent"] = self.output_xent
        return d

    def named_tensors(self, include_xent: bool = False) -> Dict[str, torch.Tensor]:
        """Every tensor of :func:`tensor_layout` by export name (live parameters / buffers)."""
        d: Dict[str, torch.Tensor] = {}

        def bn(prefix, m):
            d[prefix + ".mean"] = m.running_mean
            d[prefix + ".var"] = m.running_var

        d["tdnn1"] = self.tdnn1
        d["tdnn1.bias"] = self.tdnn1_bias
        bn("tdnn1.bn", self.tdnn1_bn)
        for i, l in enumerate(self.tdnnfs, 1):
            d[f"tdnnf{i}.linear"] = l.linear
            d[f"tdnnf{i}.affine"] = l.affine
            d[f"tdnnf{i}.bias"] = l.bias
            bn(f"tdnnf{i}.bn", l.bn)
        d["prefinal_l"] = self.prefinal_l
        heads = [("prefinal_chain", self.prefinal_chain, "output", self.output, self.output_bias)]
        if include_xent and self.cfg.xent:
            heads.append(("prefinal_xent", self.prefinal_xent, "output_xent", self.output_xent,
                          self.output_xent_bias))
        for p, m, o, ow, ob in heads:
            d[f"{p}.affine"] = m.affine
            d[f"{p}.bias"] = m.bias
            bn(f"{p}.bn1", m.bn1)
            d[f"{p}.linear"] = m.linear
            bn(f"{p}.bn2", m.bn2)
            d[o] = ow
            d[f"{o}.bias"] = ob
        return d

    def semi_orthogonal_params(self) -> List[nn.Parameter]:
        ps = [l.linear for l in self.tdnnfs] + [self.prefinal_l, self.prefinal_chain.linear]
        if self.cfg.xent:
            ps.append(self.prefinal_xent.linear)
        return ps

    # ---- training hooks ----
    @torch.no_grad()
    def apply_semi_orthogonal_(self) -> None:
        """Kaldi ConstrainOrthonormal on every semi-orthogonal weight (call after optimizer.step(), every
        4th step)."""
        for p in self.semi_orthogonal_params():
            semi_orthogonal_step_(p)

    def semi_orthogonality_errors(self) -> Dict[str, float]:
        names = {id(p): n for n, p in self.weight_params(include_xent=True).items()}
        return {names[id(p)]: semi_orthogonality_error(p) for p in self.semi_orthogonal_params()}

    def set_training_progress(self, progress: float) -> float:
        """Set the dropout proportion from the schedule at progress in [0, 1]; returns it."""
        self.dropout_p = dropout_at(self.cfg.dropout_schedule, progress)
        return self.dropout_p

    def set_weight_bits(self, weight_bits: Dict[str, int]) -> None:
        self.cfg = self.cfg.replace(weight_bits=dict(weight_bits))

    def num_parameters(self, include_xent: bool = True) -> int:
        skip = set()
        if not include_xent and self.cfg.xent:
            skip = {id(p) for p in list(self.prefinal_xent.parameters()) + [self.output_xent, self.output_xent_bias]}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ---- forward ----
    def qw(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Effective weight: fake-quantized at the configured bits (or w itself)."""
        bits = self.cfg.bits_of(name)
        if bits == 32 or not self.quant_enabled:
            return w
        return fake_quant(w, bits, self.cfg.quant_per_channel, self.cfg.quant_scale)

    def layer_weights(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Effective (linear, affine) weights of TDNN-F layer index i (0-based). Supernet hook: override to
        return mixed / rank-masked weights (zero rows of the linear factor and zero columns of the affine
        one beyond rank d; to match a standalone rank-d layer exactly, quantize the *sliced* rank-d affine
        columns, because per-row scales depend on the columns present)."""
        layer = self.tdnnfs[i]
        return self.qw(f"tdnnf{i + 1}.linear", layer.linear), self.qw(f"tdnnf{i + 1}.affine", layer.affine)

    def _prefinal(self, x, m: Prefinal, prefix: str, mask=None) -> torch.Tensor:
        x = batch_norm(F.relu(pointwise(x, self.qw(prefix + ".affine", m.affine), m.bias)), m.bn1, mask)
        return batch_norm(pointwise(x, self.qw(prefix + ".linear", m.linear)), m.bn2, mask)

    def _mask(self, lengths: torch.Tensor, t0: int, step: int, T: int) -> Optional[torch.Tensor]:
        """(B, 1, T) frames of the current grid (index j = time t0 + step*j) inside their utterance."""
        if not (self.training and self.cfg.bn_mask_padding):
            return None
        t = t0 + step * torch.arange(T, device=lengths.device)
        return ((t[None, :] >= 0) & (t[None, :] < lengths[:, None]))[:, None, :]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, ivectors: Optional[torch.Tensor] = None):
        """feats (B, T_in, feat_dim) float, lengths (B,) in [1, T_in] ->
        (chain_out (B, T_out, num_pdfs) unnormalised, xent_out (B, T_out, num_pdfs) log-softmax or None,
        out_lengths (B,) = (lengths + 2) // 3), T_out = (T_in + 2) // 3. ``ivectors`` (B, ivector_dim), one
        per utterance, appended to every frame's tdnn1 input; zeros when the config has ivector_dim > 0 and
        none are given."""
        cfg = self.cfg
        if feats.dim() != 3 or feats.shape[2] != cfg.feat_dim:
            raise ValueError(f"feats must be (B, T, {cfg.feat_dim}), got {tuple(feats.shape)}")
        B, T, _ = feats.shape
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
        lengths = lengths.to(torch.long)
        if T == 0 or bool((lengths > T).any()) or bool((lengths < 1).any()):
            raise ValueError("lengths must be in [1, T]")
        f = cfg.frame_subsampling_factor
        T_out = (T + f - 1) // f
        lf, rf, ls, rs = contexts(cfg)
        t_first = -(lf + ls)
        t_last = f * (T_out - 1) + rs + rf
        t = torch.arange(t_first, t_last + 1, device=feats.device)
        idx = torch.minimum(t.clamp(min=0)[None, :], (lengths - 1).to(feats.device)[:, None])  # (B, Tp)
        x = torch.gather(feats, 1, idx[:, :, None].expand(B, idx.shape[1], cfg.feat_dim)).transpose(1, 2)
        # tdnn1
        x = splice(x, cfg.tdnn1_context)
        t0 = t_first - cfg.tdnn1_context[0]
        if cfg.ivector_dim:
            if ivectors is None:
                ivectors = feats.new_zeros(B, cfg.ivector_dim)
            if ivectors.shape != (B, cfg.ivector_dim):
                raise ValueError(f"ivectors must be ({B}, {cfg.ivector_dim}), got {tuple(ivectors.shape)}")
            x = torch.cat([x, ivectors[:, :, None].expand(B, cfg.ivector_dim, x.shape[2])], dim=1)
        x = pointwise(x, self.qw("tdnn1", self.tdnn1), self.tdnn1_bias)
        lens = lengths.to(feats.device)
        x = batch_norm(F.relu(x), self.tdnn1_bn, self._mask(lens, t0, 1, x.shape[2]))
        x = continuous_dropout(x, self.dropout_p, self.training)
        sp = subsampling_point(cfg.time_strides, f)
        step = 1
        for i, layer in enumerate(self.tdnnfs):
            if i == sp:
                x, t0 = self._subsample(x, t0, f)
                step = f
            s = layer.stride if i < sp else layer.stride // f
            w_lin, w_aff = self.layer_weights(i)
            t0 += layer.stride
            mask = self._mask(lens, t0, step, x.shape[2] - 2 * s)
            x = tdnnf_layer_forward(x, w_lin, w_aff, layer.bias, s, layer.bn, self.dropout_p, cfg.bypass_scale,
                                    self.training, mask)
        if sp == len(self.tdnnfs):
            x, t0 = self._subsample(x, t0, f)
        assert t0 == 0 and x.shape[2] == T_out, (t0, x.shape, T_out)
        mask = self._mask(lens, 0, f, T_out)
        h = pointwise(x, self.qw("prefinal_l", self.prefinal_l))
        c = self._prefinal(h, self.prefinal_chain, "prefinal_chain", mask)
        chain = pointwise(c, self.qw("output", self.output), self.output_bias).transpose(1, 2)
        xent = None
        if cfg.xent:
            xh = self._prefinal(h, self.prefinal_xent, "prefinal_xent", mask)
            xent = F.log_softmax(pointwise(xh, self.qw("output_xent", self.output_xent), self.output_xent_bias)
                                 .transpose(1, 2), dim=-1)
        out_lengths = (lengths + f - 1) // f
        return chain, xent, out_lengths

    @staticmethod
    def _subsample(x: torch.Tensor, t0: int, f: int):
        """Keep the frames whose time is a multiple of f. Times stay in input-frame units: index j of the
        result is time t0' + f*j."""
        start = (-t0) % f
        return x[:, :, start::f], t0 + start


def build_model(cfg: TDNNFConfig, num_pdfs: Optional[int] = None) -> TDNNF:
    if num_pdfs is not None:
        cfg = cfg.replace(num_pdfs=num_pdfs)
    return TDNNF(cfg)
