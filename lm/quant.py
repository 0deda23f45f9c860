"""The Transformer LM at low bit-widths: its tensor layout, its size (THE cost model) and its packed file.

The LM is costed and packed by the acoustic model's machinery (``quant.cost_model.layout_size``,
``quant.packing.pack_tensors`` / ``unpack_tensors``), over the layout below:

* every weight matrix of :func:`lm.model.matrix_names` (``tok_emb.weight``, ``pos_emb.weight`` with learned
  positions, ``blocks.{i}.attn.{q,k,v,out}_proj.weight``, ``blocks.{i}.ff.ff_{in,out}.weight``, an untied
  ``lm_head.weight``), kind ``weight``: at b < 32 bits, ``ceil(rows * cols * b / 8)`` bytes of codes + one
  float16 scale per output row (per word for the embedding); at 32 bits float32. A tied ``lm_head`` is
  the embedding and is stored once;
* biases (kind ``bias``) and LayerNorm gains and offsets (kind ``norm``): float32.

Sinusoidal position tables are computed, not stored. Bytes = the packed file's payload (file size minus
the 8-byte length prefix and the JSON header), as for the acoustic model; the header holds the config
and the vocabulary (:func:`header_bytes` reports it separately).

Packed file (safetensors): the tensors above, named as in the layout (``<name>.codes`` uint8 and
``<name>.scales`` float16 for a quantized matrix), and metadata ``format`` = ``green-asr-lm-packed``,
``format_version`` = ``2``, ``config`` (TransformerLMConfig JSON with ``weight_bits``), ``vocab_zlib``
(the words in id order, one a line, UTF-8, zlib level 9, base64: 12.5k words in 58 kB, where
version 1's JSON list took 164 kB of the header), ``vocab_sha1`` and ``payload_bytes``. Version 1 files
(``vocab``: a JSON list) are still read; :func:`upgrade_packed_lm` rewrites one as version 2 with the
same tensors.

    from lm.quant import export_packed_lm, load_packed_lm, lm_size
    nbytes = export_packed_lm(model, vocab, "exp/lm/kl_r16/model.safetensors")
    model, vocab = load_packed_lm("exp/lm/kl_r16/model.safetensors")  # same logits as the QAT model
"""
from __future__ import annotations

import base64
import json
import math
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from lm.model import TransformerLM, TransformerLMConfig, matrix_names
from lm.vocab import Vocab
from models.layout import TensorInfo
from quant.cost_model import SizeReport, layout_size, tensor_bytes
from quant.packing import (PackedModelError, checked_metadata, pack_tensors, payload_bytes, read_header,
                           save_packed_file, unpack_tensors)

FORMAT = "green-asr-lm-packed"
FORMAT_VERSION = "2"
READ_VERSIONS = ("1", FORMAT_VERSION)  # 1: the vocabulary as a JSON list in "vocab"


def encode_vocab(words: Sequence[str]) -> str:
    """The words (no white space in any) one a line, UTF-8, zlib-compressed, base64: a metadata string."""
    return base64.b64encode(zlib.compress("\n".join(words).encode("utf-8"), 9)).decode("ascii")


def decode_vocab(text: str) -> List[str]:
    """Inverse of :func:`encode_vocab`; ValueError on anything that is not such a string."""
    try:
        return zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True)).decode("utf-8").split("\n")
    except (zlib.error, UnicodeError, ValueError, TypeError) as e:
        raise ValueError(f"vocab_zlib is not a compressed word list ({e})") from None


def lm_layout(cfg: TransformerLMConfig) -> List[TensorInfo]:
    """Every stored tensor of the LM, in model order; ``group`` is the module the tensor belongs to."""
    D, V = cfg.d_model, cfg.vocab_size
    out = [TensorInfo("tok_emb.weight", (V, D), "weight", "tok_emb")]
    if cfg.positions == "learned":
        out.append(TensorInfo("pos_emb.weight", (cfg.max_len, D), "weight", "pos_emb"))

    def norm(prefix):
        return [TensorInfo(prefix + ".weight", (D,), "norm", prefix), TensorInfo(prefix + ".bias", (D,), "norm", prefix)]

    def linear(prefix, d_out, d_in):
        return [TensorInfo(prefix + ".weight", (d_out, d_in), "weight", prefix),
                TensorInfo(prefix + ".bias", (d_out,), "bias", prefix)]

    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        out += norm(b + "ln_attn")
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += linear(b + "attn." + p, D, D)
        out += norm(b + "ln_ff")
        out += linear(b + "ff.ff_in", cfg.d_ff, D) + linear(b + "ff.ff_out", D, cfg.d_ff)
    out += norm("ln_final")
    if cfg.tie_embeddings:
        out.append(TensorInfo("lm_head.bias", (V,), "bias", "lm_head"))
    else:
        out += linear("lm_head", V, D)
    assert [t.name for t in out if t.kind == "weight"] == matrix_names(cfg)
    return out


def lm_size(cfg: TransformerLMConfig) -> SizeReport:
    """Packed payload bytes of the LM at ``cfg.weight_bits`` (``per_tensor``, ``per_layer`` = per module);
    ``fp32_bytes`` is the same LM with every matrix float32. Parameters count weights, biases and
    LayerNorm (the tied head once)."""
    layout = lm_layout(cfg)
    return layout_size(layout, cfg.bits_of, cfg.quant_per_channel,
                       num_parameters=sum(int(math.prod(t.shape)) for t in layout))


def lm_fp32_bytes(cfg: TransformerLMConfig) -> int:
    return lm_size(cfg.replace(weight_bits={})).total_bytes


def matrix_bytes(cfg: TransformerLMConfig, bit_choices: Sequence[int]) -> Dict[str, Dict[int, int]]:
    """``{matrix: {bits: bytes}}`` for every matrix and bit choice (the knapsack's size table)."""
    return {t.name: {int(b): tensor_bytes(t, int(b), cfg.quant_per_channel) for b in bit_choices}
            for t in lm_layout(cfg) if t.kind == "weight"}


def fixed_bytes(cfg: TransformerLMConfig) -> int:
    """Bytes of everything but the matrices (biases, LayerNorm): the same at every bit allocation."""
    return sum(tensor_bytes(t, 32) for t in lm_layout(cfg) if t.kind != "weight")


# ---------------------------------------------------------------------------------------------- packed file
def export_packed_lm(model: TransformerLM, vocab: Vocab, path: str,
                     extra_metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``model`` (its ``cfg.weight_bits``) and ``vocab`` to ``path``; returns the payload bytes,
    equal to ``lm_size(model.cfg).total_bytes``."""
    cfg = model.cfg
    if len(vocab) != cfg.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} words, the model {cfg.vocab_size}")
    live = dict(model.state_dict())
    tensors = pack_tensors(lm_layout(cfg), live, cfg.bits_of, cfg.quant_per_channel, cfg.quant_scale, path)
    size = lm_size(cfg).total_bytes
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_json(),
            "vocab_zlib": encode_vocab(vocab.words), "vocab_sha1": vocab.fingerprint(), "payload_bytes": str(size)}
    save_packed_file(path, tensors, meta, extra_metadata)
    got = payload_bytes(path)
    if got != size:
        raise RuntimeError(f"{path}: payload {got} bytes, the cost model says {size}")
    return size


def is_packed_lm(path) -> bool:
    """True for a file whose safetensors metadata says it is a packed LM."""
    try:
        return (read_header(str(path)).get("__metadata__") or {}).get("format") == FORMAT
    except (PackedModelError, OSError):
        return False


def load_packed_lm(path, device: str = "cpu", vocab: Optional[Vocab] = None) -> Tuple[TransformerLM, Vocab]:
    """(model in eval mode, vocabulary) from a packed LM file. The matrices are the dequantized codes and
    ``quant_enabled`` is off (they are on the grid already), so the logits equal those of the
    fake-quantized model that was exported. ``vocab``, when given, must be the file's. Any bad input
    raises :class:`quant.packing.PackedModelError` (or ValueError for another vocabulary)."""
    path = str(path)
    meta = checked_metadata(path, FORMAT, READ_VERSIONS)
    try:
        cfg = TransformerLMConfig.from_dict(json.loads(meta["config"]), source=path)
        words = json.loads(meta["vocab"]) if meta["format_version"] == "1" else decode_vocab(meta["vocab_zlib"])
        file_vocab = Vocab(words)
    except (KeyError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise PackedModelError(f"{path}: bad config or vocabulary metadata: {e}") from None
    if file_vocab.fingerprint() != meta.get("vocab_sha1"):
        raise PackedModelError(f"{path}: the stored vocabulary does not match its recorded sha1")
    if len(file_vocab) != cfg.vocab_size:
        raise PackedModelError(f"{path}: config has vocab_size {cfg.vocab_size}, the vocabulary {len(file_vocab)}")
    if vocab is not None and vocab != file_vocab:
        raise ValueError(f"the vocabulary ({len(vocab)} words) is not the one {path} was trained with "
                         f"({len(file_vocab)} words): {file_vocab.first_difference(vocab)}")
    tensors = unpack_tensors(path, lm_layout(cfg), cfg.bits_of, cfg.quant_per_channel)
    model = TransformerLM(cfg)
    sd = {t.name: t.value for t in tensors}
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    model.load_state_dict(sd, strict=True)
    model.quant_enabled = False
    model.packed_metadata = dict(meta)
    return model.to(device).eval(), file_vocab


def header_bytes(path) -> int:
    """Bytes of the file outside the payload (length prefix + JSON header with config and vocabulary)."""
    return os.path.getsize(str(path)) - payload_bytes(str(path))


def upgrade_packed_lm(path) -> Tuple[int, int]:
    """Rewrite a version 1 packed LM file as version 2 (the vocabulary compressed), in place and
    atomically, with the same tensors byte for byte and the same other metadata; a version 2 file is left
    as it is. The result must load as the same model and vocabulary. Returns (bytes before, bytes after)."""
    from safetensors.torch import load_file

    path = str(path)
    before = os.path.getsize(path)
    meta = checked_metadata(path, FORMAT, READ_VERSIONS)
    if meta["format_version"] == FORMAT_VERSION:
        return before, before
    model, vocab = load_packed_lm(path)  # every check of a read
    tensors = load_file(path)
    new_meta = {k: v for k, v in meta.items() if k != "vocab"}
    new_meta.update(format_version=FORMAT_VERSION, vocab_zlib=encode_vocab(vocab.words))
    tmp = path + ".tmp"
    save_packed_file(tmp, tensors, new_meta)
    model2, vocab2 = load_packed_lm(tmp)
    same = vocab2 == vocab and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                     model2.state_dict().values()))
    if not same or payload_bytes(tmp) != payload_bytes(path):
        os.unlink(tmp)
        raise PackedModelError(f"{path}: the upgraded file does not load as the same model")
    os.replace(tmp, path)
    return before, os.path.getsize(path)
