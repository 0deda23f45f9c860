"""Packing: bit packing round trip, export/load equality, cost model == bytes on disk, bad input."""
import json
import math
import os
import struct

import pytest
import torch

from models.config import TDNNFConfig
from models.layout import weight_names
from models.tdnnf import TDNNF
from quant.cost_model import model_size
from quant.packing import (PackedModelError, export_packed, load_packed, pack_codes, payload_bytes,
                           unpack_codes)
from quant.quantizers import QUANTIZED_BITS, SUPPORTED_BITS, qmax_for
from tests.conftest import INVALID_BITS


def cfg_small(**kw):
    d = dict(tdnn1_dim=24, hidden_dim=24, num_layers=5, bottleneck_dims=[4, 6, 8, 5, 7],
             time_strides=[1, 1, 0, 3, 3], prefinal_dim=12, prefinal_big_dim=20, num_pdfs=11, feat_dim=6)
    d.update(kw)
    return TDNNFConfig.from_dict(d)


def trained_like(cfg, seed=0):
    torch.manual_seed(seed)
    m = TDNNF(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    m.train()
    for _ in range(3):  # populate BN stats
        m(torch.randn(4, 30, cfg.feat_dim), torch.tensor([30, 25, 20, 7]))
    return m.eval()


@pytest.mark.parametrize("bits", QUANTIZED_BITS)
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 100, 1001])
def test_pack_unpack_exact(bits, n):
    g = torch.Generator().manual_seed(n * bits)
    qmax = qmax_for(bits)
    if bits == 1:
        codes = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    else:
        codes = torch.randint(-qmax, qmax + 1, (n,), generator=g)
    packed = pack_codes(codes.to(torch.int8), bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes.to(torch.int8))


def test_pack_three_bits_hand_computed():
    # u = q + 3 = 0, 6, 3 -> stream bits (little end first) 000 011 110 -> bytes 0b11110000, 0b00000000
    packed = pack_codes(torch.tensor([-3, 3, 0], dtype=torch.int8), 3)
    assert packed.tolist() == [0xF0, 0x00]
    assert unpack_codes(packed, 3, 3).tolist() == [-3, 3, 0]


def test_pack_errors():
    with pytest.raises(ValueError, match="codes outside"):
        pack_codes(torch.tensor([2], dtype=torch.int8), 2)
    with pytest.raises(ValueError, match="bit-width"):
        pack_codes(torch.tensor([1], dtype=torch.int8), INVALID_BITS)
    with pytest.raises(ValueError, match="invalid 3-bit code"):
        unpack_codes(torch.tensor([0x07], dtype=torch.uint8), 3, 2)  # code 7 > 6
    with pytest.raises(ValueError, match="padding"):
        unpack_codes(torch.tensor([0x00, 0x80], dtype=torch.uint8), 3, 5)  # bit 15 is after 5 codes
    with pytest.raises(ValueError, match="expected"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 8)
    with pytest.raises(ValueError, match="invalid 4-bit code"):
        unpack_codes(torch.tensor([0xFF], dtype=torch.uint8), 4, 2)  # code 15 > 14
    with pytest.raises(ValueError, match="padding"):
        unpack_codes(torch.tensor([0xF0], dtype=torch.uint8), 4, 1)


BIT_MIXES = {
    "fp32": {},
    "uniform8": "all8",
    "mixed": "mixed",
}


def bits_for(cfg, mix):
    names = weight_names(cfg)
    if mix == "all8":
        return {n: 8 for n in names}
    if mix == "mixed":
        return {n: SUPPORTED_BITS[i % len(SUPPORTED_BITS)] for i, n in enumerate(names)}
    return {}


@pytest.mark.parametrize("mix", ["fp32", "all8", "mixed"])
@pytest.mark.parametrize("per_channel,scale", [(True, "maxabs"), (False, "maxabs"), (True, "mse")])
@pytest.mark.parametrize("include_xent", [False, True])
def test_export_load_roundtrip_and_size(tmp_path, mix, per_channel, scale, include_xent):
    cfg = cfg_small(quant_per_channel=per_channel, quant_scale=scale)
    cfg = cfg.replace(weight_bits=bits_for(cfg, mix))
    m = trained_like(cfg)
    path = str(tmp_path / "m.safetensors")
    n = export_packed(m, path, include_xent=include_xent, extra_metadata={"genotype": {"a": 1}})
    assert n == model_size(cfg, include_xent).total_bytes == payload_bytes(path)
    # file = 8-byte length + header + payload
    with open(path, "rb") as fh:
        (h,) = struct.unpack("<Q", fh.read(8))
    assert os.path.getsize(path) == 8 + h + n
    m2 = load_packed(path)
    assert json.loads(m2.packed_metadata["genotype"]) == {"a": 1}
    x = torch.randn(3, 40, 6)
    lens = torch.tensor([40, 33, 5])
    a, ax, _ = m(x, lens)
    b, bx, _ = m2(x, lens)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    if include_xent:
        assert torch.allclose(ax, bx, atol=1e-5)
    else:
        assert bx is None
    # exported again from the loaded model (on the grid) -> same size
    if mix == "fp32":
        assert model_size(cfg).compression_ratio == 1.0


def test_xent_bits_do_not_break_inference_export(tmp_path):
    cfg = cfg_small()
    bits = {n: 4 for n in weight_names(cfg, include_xent=True)}
    m = trained_like(cfg.replace(weight_bits=bits))
    path = str(tmp_path / "m.st")
    assert export_packed(m, path) == payload_bytes(path)
    m2 = load_packed(path)
    assert not m2.cfg.xent and "output_xent" not in m2.cfg.weight_bits
    x = torch.randn(1, 20, 6)
    assert torch.allclose(m(x, torch.tensor([20]))[0], m2(x, torch.tensor([20]))[0], atol=1e-5)


def test_compression_ratio_on_disk(tmp_path):
    cfg = cfg_small()
    fp = trained_like(cfg)
    q = trained_like(cfg.replace(weight_bits={n: 4 for n in weight_names(cfg)}))
    n32 = export_packed(fp, str(tmp_path / "fp.st"))
    n4 = export_packed(q, str(tmp_path / "q.st"))
    rep = model_size(q.cfg)
    assert rep.fp32_bytes == n32 and rep.total_bytes == n4
    assert abs(rep.compression_ratio - n32 / n4) < 1e-12 and rep.compression_ratio > 3


@pytest.fixture
def exported(tmp_path):
    cfg = cfg_small()
    cfg = cfg.replace(weight_bits=bits_for(cfg, "mixed"))
    path = str(tmp_path / "m.safetensors")
    export_packed(trained_like(cfg), path)
    return path


def test_truncated_file(exported, tmp_path):
    raw = open(exported, "rb").read()
    for cut in (0, 5, 20, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}.st"
        p.write_bytes(raw[:cut])
        with pytest.raises(PackedModelError, match="truncated|mismatch|header"):
            load_packed(str(p))
    p = tmp_path / "long.st"
    p.write_bytes(raw + b"\0" * 8)
    with pytest.raises(PackedModelError, match="mismatch"):
        load_packed(str(p))
    with pytest.raises(PackedModelError, match="cannot read"):
        load_packed(str(tmp_path / "missing.st"))


def _rewrite_meta(path, out, fn):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    fn(meta, tensors)
    save_file(tensors, out, metadata=meta)


def test_header_payload_mismatch(exported, tmp_path):
    out = str(tmp_path / "bad.st")

    def bigger(meta, tensors):
        c = json.loads(meta["config"])
        c["hidden_dim"] = 25
        c["tdnn1_dim"] = 25
        meta["config"] = json.dumps(c)
    _rewrite_meta(exported, out, bigger)
    with pytest.raises(PackedModelError, match="mismatch|expected"):
        load_packed(out)

    def drop(meta, tensors):
        del tensors["output.bias"]
    _rewrite_meta(exported, out, drop)
    with pytest.raises(PackedModelError, match="missing"):
        load_packed(out)

    def wrong_dtype(meta, tensors):
        tensors["tdnn1.bias"] = tensors["tdnn1.bias"].half()
    _rewrite_meta(exported, out, wrong_dtype)
    with pytest.raises(PackedModelError, match="tdnn1.bias"):
        load_packed(out)


def test_unsupported_bits_and_bad_codes(exported, tmp_path):
    out = str(tmp_path / "bad.st")

    def invalid_bits(meta, tensors):
        c = json.loads(meta["config"])
        c["weight_bits"]["tdnn1"] = INVALID_BITS
        meta["config"] = json.dumps(c)
    _rewrite_meta(exported, out, invalid_bits)
    with pytest.raises(PackedModelError, match="bit-width"):
        load_packed(out)

    def bad_code(meta, tensors):
        c = json.loads(meta["config"])
        name = [n for n, b in c["weight_bits"].items() if b == 2][0]
        tensors[name + ".codes"][0] = 0xFF  # code 3 is not a 2-bit level
    _rewrite_meta(exported, out, bad_code)
    with pytest.raises(PackedModelError, match="invalid 2-bit code"):
        load_packed(out)

    def not_ours(meta, tensors):
        meta["format"] = "something-else"
    _rewrite_meta(exported, out, not_ours)
    with pytest.raises(PackedModelError, match="format"):
        load_packed(out)


def test_garbage_file(tmp_path):
    p = tmp_path / "g.st"
    p.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(PackedModelError):
        load_packed(str(p))


def test_no_pickle_in_quant_package():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for pkg in ("quant", "models", "search_spaces"):
        for f in (root / pkg).glob("*.py"):
            src = f.read_text()
            assert "pickle" not in src.replace("no pickle", "").replace("never pickle", ""), f
            for line in src.splitlines():
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f
