"""Word-level causal Transformer language model.

Architecture (decoder-only, pre-LayerNorm)::

    h_0 = dropout(tok_emb(x) + pos(t))
    h   = h + dropout(attn.out_proj(CausalSelfAttention(ln_attn(h))))        per block
    h   = h + dropout(ff.ff_out(dropout(gelu(ff.ff_in(ln_ff(h))))))          per block
    logits = lm_head(ln_final(h))                       lm_head.weight IS tok_emb.weight when tied

Every weight matrix is its own module with a stable name (``blocks.{i}.attn.{q,k,v,out}_proj``,
``blocks.{i}.ff.ff_in``, ``blocks.{i}.ff.ff_out``, ``tok_emb``, ``pos_emb``, ``lm_head``), so each can be
quantized at its own bit-width and the feed-forward width ``d_ff`` can be searched per block.

Per-matrix bits: ``config.weight_bits`` maps matrix names (:func:`matrix_names`, the state-dict keys of
the weight matrices: ``tok_emb.weight``, ``blocks.0.attn.q_proj.weight``, ...) to ``{1, 2, 3, 4, 8, 32}``;
missing names are 32 (float). A matrix below 32 bits is used as
``models.quantizers.fake_quant(W, bits, config.quant_per_channel, config.quant_scale)`` (per output row,
STE gradient), the quantizer of the acoustic model. A tied ``lm_head`` is ``tok_emb.weight`` and shares
its bit-width (and its one stored copy). ``model.quant_enabled = False`` turns fake quantization off (a
model rebuilt from a packed file, whose weights are already on the grid). Biases and LayerNorm stay
float32. The interface (``weight_params``, ``set_weight_bits``, ``cfg.weight_bits``) is the acoustic
model's, so ``sensitivity.hessian`` and ``sensitivity.kl`` measure the LM unchanged.
"""
from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from models.quantizers import SCALE_MODES, check_bits, fake_quant

POSITIONS = ("sinusoidal", "learned")


@dataclass
class TransformerLMConfig:
    """Model size (YAML ``model:`` section; ``vocab_size`` comes from the vocabulary)."""

    vocab_size: int = 0
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    max_len: int = 256  # longest input (words + 1) the model accepts
    dropout: float = 0.1
    positions: str = "sinusoidal"
    tie_embeddings: bool = True
    weight_bits: Dict[str, int] = field(default_factory=dict)  # matrix name -> bits (missing: 32)
    quant_scale: str = "mse"        # models.quantizers scale mode of quantized matrices
    quant_per_channel: bool = True  # one scale per output row (per word for the embedding)

    def __post_init__(self):
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if self.n_layers < 0 or self.d_ff < 1 or self.max_len < 1:
            raise ValueError(f"invalid sizes: n_layers={self.n_layers}, d_ff={self.d_ff}, max_len={self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.quant_scale not in SCALE_MODES:
            raise ValueError(f"quant_scale must be one of {SCALE_MODES}, got {self.quant_scale!r}")
        self.weight_bits = {str(k): check_bits(v) for k, v in dict(self.weight_bits or {}).items()}
        known = set(matrix_names(self))
        bad = sorted(set(self.weight_bits) - known)
        if bad:
            raise ValueError(f"weight_bits names unknown matrices {bad}; the matrices are {matrix_names(self)}")

    def bits_of(self, name: str) -> int:
        """Bit-width of matrix ``name`` (32 = float)."""
        return int(self.weight_bits.get(name, 32))

    def replace(self, **changes) -> "TransformerLMConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], source: str = "model config") -> "TransformerLMConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown model option(s) {bad}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def matrix_names(cfg: TransformerLMConfig) -> List[str]:
    """The LM's weight matrices (state-dict keys), in model order: the ones a bit-width is chosen for.
    A tied ``lm_head.weight`` is ``tok_emb.weight`` and is not listed again."""
    names = ["tok_emb.weight"]
    if cfg.positions == "learned":
        names.append("pos_emb.weight")
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        names += [f"blocks.{i}.ff.ff_in.weight", f"blocks.{i}.ff.ff_out.weight"]
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    return names


class _QuantState:
    """Shared by every quantizable module of one model: the bits per matrix and the quantizer settings."""

    def __init__(self, cfg: TransformerLMConfig):
        self.cfg = cfg
        self.enabled = True

    def weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        bits = self.cfg.bits_of(name)
        if bits == 32 or not self.enabled:
            return w
        return fake_quant(w, bits, self.cfg.quant_per_channel, self.cfg.quant_scale)


class QLinear(nn.Linear):
    """``nn.Linear`` whose weight passes through the model's quantizer (matrix ``qname``)."""

    def __init__(self, d_in: int, d_out: int, qstate: _QuantState, qname: str):
        super().__init__(d_in, d_out)
        self.qname = qname
        object.__setattr__(self, "_qstate", qstate)  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._qstate.weight(self.qname, self.weight), self.bias)


class QEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table passes through the model's quantizer (matrix ``qname``)."""

    def __init__(self, num: int, dim: int, qstate: _QuantState, qname: str):
        super().__init__(num, dim)
        self.qname = qname
        object.__setattr__(self, "_qstate", qstate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self._qstate.weight(self.qname, self.weight))


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model): sin at even, cos at odd dimensions (Vaswani et al. 2017)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe.float()


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, qstate: _QuantState, prefix: str):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = QLinear(d_model, d_model, qstate, prefix + "q_proj.weight")
        self.k_proj = QLinear(d_model, d_model, qstate, prefix + "k_proj.weight")
        self.v_proj = QLinear(d_model, d_model, qstate, prefix + "v_proj.weight")
        self.out_proj = QLinear(d_model, d_model, qstate, prefix + "out_proj.weight")
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        B, T, D = x.shape
        H = self.n_heads

        def heads(t):  # (B, T, D) -> (B, H, T, D/H)
            return t.view(B, T, H, D // H).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Position-wise ``ff_out(dropout(gelu(ff_in(x))))``: (B, T, D) -> (B, T, D), hidden width d_ff."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, qstate: _QuantState, prefix: str):
        super().__init__()
        self.ff_in = QLinear(d_model, d_ff, qstate, prefix + "ff_in.weight")
        self.ff_out = QLinear(d_ff, d_model, qstate, prefix + "ff_out.weight")
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.drop(F.gelu(self.ff_in(x))))


class Block(nn.Module):
    """Pre-LN decoder block: x + attn(ln(x)), then x + ff(ln(x)); (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: TransformerLMConfig, qstate: _QuantState, prefix: str):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout, qstate, prefix + "attn.")
        self.ln_ff = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, qstate, prefix + "ff.")
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x)))
        return x + self.drop(self.ff(self.ln_ff(x)))


class TransformerLM(nn.Module):
    """Causal word LM: ``forward(tokens (B, T) int64) -> logits (B, T, vocab_size)``.

    ``logits[b, t]`` scores the token that follows ``tokens[b, :t+1]``; it never depends on
    ``tokens[b, t+1:]``. ``T`` must not exceed ``cfg.max_len``.
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        if cfg.vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (<eos>, <unk>, a word), got {cfg.vocab_size}")
        self.cfg = cfg
        self._qstate = _QuantState(cfg)
        q = self._qstate
        self.tok_emb = QEmbedding(cfg.vocab_size, cfg.d_model, q, "tok_emb.weight")
        if cfg.positions == "learned":
            self.pos_emb = QEmbedding(cfg.max_len, cfg.d_model, q, "pos_emb.weight")
        else:
            self.register_buffer("pos_table", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, q, f"blocks.{i}.") for i in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.lm_head = QLinear(cfg.d_model, cfg.vocab_size, q,
                               "tok_emb.weight" if cfg.tie_embeddings else "lm_head.weight")
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights, zero biases; residual output projections scaled by 1/sqrt(2 n_layers)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02
                if name.endswith(("out_proj.weight", "ff_out.weight")):
                    std /= math.sqrt(2 * max(1, self.cfg.n_layers))
                nn.init.normal_(p, 0.0, std)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def positions(self, T: int) -> torch.Tensor:
        """(T, D) position vectors of positions 0 .. T-1."""
        if self.cfg.positions == "learned":
            return self._qstate.weight("pos_emb.weight", self.pos_emb.weight)[:T]
        return self.pos_table[:T]

    # --- quantization interface (the acoustic model's: sensitivity.kl / sensitivity.hessian use it) ---
    @property
    def quant_enabled(self) -> bool:
        return self._qstate.enabled

    @quant_enabled.setter
    def quant_enabled(self, value: bool) -> None:
        self._qstate.enabled = bool(value)

    def weight_params(self, include_xent: bool = True) -> Dict[str, nn.Parameter]:
        """``{matrix name: parameter}`` for :func:`matrix_names` (``include_xent`` is accepted for the
        acoustic model's interface and ignored: the LM has no xent branch)."""
        params = dict(self.named_parameters(remove_duplicate=False))
        return {n: params[n] for n in matrix_names(self.cfg)}

    def set_weight_bits(self, bits: Dict[str, int]) -> None:
        """Set every matrix's bit-width (missing names: 32); unknown names or widths are errors."""
        self.cfg = self.cfg.replace(weight_bits=dict(bits))
        self._qstate.cfg = self.cfg

    def effective_weight(self, name: str) -> torch.Tensor:
        """The matrix ``name`` as the forward pass uses it (quantized when its bits are below 32)."""
        return self._qstate.weight(name, self.weight_params()[name])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, V)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        T = tokens.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"input of {T} tokens is longer than the model's max_len {self.cfg.max_len}")
        h = self.drop(self.tok_emb(tokens) + self.positions(T))
        for blk in self.blocks:
            h = blk(h)
        return self.lm_head(self.ln_final(h))

    def num_parameters(self) -> int:
        """Distinct parameters (tied matrices counted once)."""
        return sum(p.numel() for p in self.parameters())
