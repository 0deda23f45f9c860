"""ONNX export with low-bit kernels (quant/onnx_export.py, quant/onnx_model.py, export_onnx.py).

Checked against independent references: MatMulNBits' block layout against a numpy dequantizer written
from the operator's definition, and the exported graph's outputs against the packed PyTorch model (at every
bit-width of the search space, several architectures, on the tiny corpus through decode.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from models.quantizers import QUANTIZED_BITS, SUPPORTED_BITS, qmax_for  # noqa: E402
from models.config import TDNNFConfig
from models.layout import weight_names  # noqa: E402
from quant.onnx_export import (BLOCK_SIZES, OnnxExportError, choose_block_size, export_onnx,  # noqa: E402
                               matmul_nbits_tensors)
from quant.onnx_model import OnnxAcousticModel, OnnxModelError  # noqa: E402
from quant.packing import export_packed, load_packed  # noqa: E402
from tests.conftest import run_cli, run_cli_fail  # noqa: E402
from tests.test_quant_packing import trained_like  # noqa: E402

TOL = 1e-3  # max abs difference on log-likelihoods (observed: about 1e-5, float32 summation order)
LOW_BITS = list(QUANTIZED_BITS)  # every quantized width the code supports
# widths MatMulNBits has no kernel for ride on the next one that divides 8 (exact: zero point qmax)
KERNEL_BITS = {1: 2, 3: 4}

def dequant_reference(b, scales, zps, n, k, bits, block_size):
    """MatMulNBits' weight (N, K) from its inputs, element by element as the operator's spec states:
    B[n, blk] holds block_size codes, code j of a byte in bits [j*bits, (j+1)*bits); zero points are packed
    the same way along the blocks of a row; W[n, blk*bs + i] = (code - zp[n, blk]) * scale[n*nb + blk]."""
    nb = -(-k // block_size)
    per = 8 // bits
    zrow = -(-nb * bits // 8)
    w = np.zeros((n, nb * block_size))
    for r in range(n):
        for blk in range(nb):
            zbyte = zps[r * zrow + blk // per]
            zp = (int(zbyte) >> ((blk % per) * bits)) & ((1 << bits) - 1)
            for i in range(block_size):
                code = (int(b[r, blk, i // per]) >> ((i % per) * bits)) & ((1 << bits) - 1)
                w[r, blk * block_size + i] = (code - zp) * scales[r * nb + blk]
    return w


@pytest.mark.parametrize("bits", LOW_BITS)
@pytest.mark.parametrize("k", [16, 40, 130])
def test_matmul_nbits_layout_reproduces_our_codes(bits, k):
    rng = np.random.default_rng(bits * 1000 + k)
    n = 5
    qmax = qmax_for(bits)
    codes = rng.choice([-1, 1], size=(n, k)) if bits == 1 else rng.integers(-qmax, qmax + 1, size=(n, k))
    scales = rng.uniform(0.01, 1.0, n).astype(np.float16).astype(np.float32)
    kb = KERNEL_BITS.get(bits, bits)
    for bs in (16, 64):
        b, s, z = matmul_nbits_tensors(codes, scales, bits, bs)
        assert b.dtype == np.uint8 and b.shape == (n, -(-k // bs), bs * kb // 8)
        w = dequant_reference(b, s, z, n, k, kb, bs)
        np.testing.assert_array_equal(w[:, :k], codes * scales[:, None].astype(np.float64))
        np.testing.assert_array_equal(w[:, k:], 0.0)  # padding dequantizes to 0


def test_block_size_choice_is_smallest_storage():
    for k in (24, 120, 256, 384, 768):
        for bits in (2, 4, 8):
            bs = choose_block_size(k, bits)
            assert bs in BLOCK_SIZES

            def size(b):
                nb = -(-k // b)
                return nb * b * bits // 8 + 4 * nb + -(-nb * bits // 8)
            assert size(bs) == min(size(b) for b in BLOCK_SIZES)
    assert choose_block_size(256, 4) == 256  # a power-of-two row is one block


def _cfg(**kw):
    d = dict(tdnn1_dim=24, hidden_dim=24, num_layers=5, bottleneck_dims=[4, 6, 8, 5, 7],
             time_strides=[1, 1, 0, 3, 3], prefinal_dim=12, prefinal_big_dim=20, num_pdfs=11, feat_dim=6)
    d.update(kw)
    return TDNNFConfig.from_dict(d)


def _random_model(cfg, bits, seed=0):
    """``tests.test_quant_packing.trained_like`` (random weights of unit-scale outputs, populated BatchNorm
    statistics) at ``bits``: an int for every weight, or a {name: bits} dict."""
    m = trained_like(cfg, seed)
    m.set_weight_bits(bits if isinstance(bits, dict) else {n: bits for n in weight_names(cfg)})
    return m


def _compare(packed, onnx_path, cmvn=None, feat_dim=6, seed=1):
    """Max abs difference of the chain outputs, packed PyTorch vs ONNX, on a padded batch."""
    pt = load_packed(packed)
    ox = OnnxAcousticModel(onnx_path, num_threads=1)
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([37, 50, 8, 1, 23])
    x = torch.randn(len(lens), 50, feat_dim, generator=g) * 3 + 2
    if cmvn is not None:  # a feature with std 0 is constant (= its mean); it normalises to 0
        const = [i for i, s in enumerate(cmvn["std"]) if s == 0]
        x[:, :, const] = torch.tensor(cmvn["mean"])[const]
    for b, n in enumerate(lens):
        x[b, n:] = 0.0  # padding (replaced by each utterance's edge frames)
    xn = x if cmvn is None else (x - torch.tensor(cmvn["mean"])) / torch.tensor(cmvn["std"]).clamp(min=1e-5)
    with torch.no_grad():
        y1, _, l1 = pt(xn, lens)
    y2, xent, l2 = ox(x, lens)
    assert xent is None and torch.equal(l1, l2) and y1.shape == y2.shape
    return max(float((y1[b, : l1[b]] - y2[b, : l1[b]]).abs().max()) for b in range(len(lens)))


ARCHS = {
    "subsample_at_layer": {},
    "subsample_before_prefinal": dict(time_strides=[1, 1, 0, 1, 2]),
    "no_bypass_wide_tdnn1": dict(tdnn1_dim=30, tdnn1_context=[-2, 0, 1]),
    "per_tensor_mse_scales": dict(quant_per_channel=False, quant_scale="mse"),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("bits", list(SUPPORTED_BITS) + ["mixed"])
def test_onnx_matches_packed_model(tmp_path, arch, bits):
    cfg = _cfg(**ARCHS[arch])
    if bits == "mixed":
        names = weight_names(cfg)
        bits = {n: SUPPORTED_BITS[i % len(SUPPORTED_BITS)] for i, n in enumerate(names)}
    cmvn = {"mean": [0.5] * 6, "std": [2.0, 1.0, 0.5, 3.0, 1.0, 0.0]}  # a zero std is floored at 1e-5
    packed = str(tmp_path / "m.safetensors")
    export_packed(_random_model(cfg, bits), packed, extra_metadata={"cmvn": json.dumps(cmvn)})
    res = export_onnx(packed, str(tmp_path / "m.onnx"))
    assert _compare(packed, str(tmp_path / "m.onnx"), cmvn) < TOL
    for name, w in res["weights"].items():
        b = bits[name] if isinstance(bits, dict) else bits
        assert w["bits"] == b
        if b == 32:
            assert w["kernel"] == "MatMul"
        else:
            assert w["kernel"] == "MatMulNBits" and w["kernel_bits"] == KERNEL_BITS.get(b, b)
    # the float fallback computes the same function with float MatMuls only
    res = export_onnx(packed, str(tmp_path / "f.onnx"), kernel="float")
    assert {w["kernel"] for w in res["weights"].values()} == {"MatMul"}
    assert _compare(packed, str(tmp_path / "f.onnx"), cmvn) < TOL


def test_low_bit_onnx_file_is_small_and_carries_metadata(tmp_path):
    cfg = _cfg(tdnn1_dim=64, hidden_dim=64, bottleneck_dims=[32] * 5, prefinal_dim=32, prefinal_big_dim=64, num_pdfs=12)
    sizes, packed_sizes = {}, {}
    for bits in (32, 8, 4, 2):
        packed = str(tmp_path / f"m{bits}.safetensors")
        export_packed(_random_model(cfg, bits), packed, extra_metadata={"phones": json.dumps(["SIL"] + list("abcde"))})
        sizes[bits] = export_onnx(packed, str(tmp_path / f"m{bits}.onnx"))["file_bytes"]
        packed_sizes[bits] = os.path.getsize(packed)
    assert sizes[2] < sizes[4] < sizes[8] < sizes[32] / 2.5
    # the weights stay packed: the ONNX file is the packed file plus float32 scales, zero points and the graph
    for bits, n in sizes.items():
        assert n < 1.25 * packed_sizes[bits] + 8000, (bits, n, packed_sizes[bits])
    m = OnnxAcousticModel(str(tmp_path / "m4.onnx"))
    assert m.cfg.num_pdfs == 12 and m.phones[0] == "SIL" and not m.cmvn_in_graph and m.cmvn is None
    assert m.metadata["format"] == "green-asr-tdnnf-onnx"
    assert json.loads(m.metadata["weights"])["tdnn1"]["kernel_bits"] == 4


def test_bad_inputs_get_clear_errors(tmp_path):
    packed = str(tmp_path / "m.safetensors")
    export_packed(_random_model(_cfg(ivector_dim=3), 4), packed)
    with pytest.raises(OnnxExportError, match="i-vector"):
        export_onnx(packed, str(tmp_path / "m.onnx"))
    with pytest.raises(OnnxExportError, match="kernel"):
        export_onnx(packed, str(tmp_path / "m.onnx"), kernel="int3")
    export_packed(_random_model(_cfg(), 4), packed)
    export_onnx(packed, str(tmp_path / "m.onnx"))
    m = OnnxAcousticModel(str(tmp_path / "m.onnx"))
    with pytest.raises(OnnxModelError, match="CPU"):
        m.to("cuda")
    with pytest.raises(ValueError, match="lengths"):
        m(torch.zeros(2, 10, 6), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="feats"):
        m(torch.zeros(2, 10, 5), torch.tensor([10, 10]))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="cannot load"):
        OnnxAcousticModel(str(tmp_path / "junk.onnx"))
    with pytest.raises(OnnxModelError, match="no such file"):
        OnnxAcousticModel(str(tmp_path / "missing.onnx"))
    # an ONNX file that is not an acoustic-model export
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "other.onnx"))
    with pytest.raises(OnnxModelError, match="not a green-asr-tdnnf-onnx"):
        OnnxAcousticModel(str(tmp_path / "other.onnx"))


@pytest.fixture(scope="module")
def tiny_models(tiny_corpus, tmp_path_factory):
    """Packed models of the demo search space's network (random weights, the tiny corpus's phones and
    CMVN) at every bit-width the code supports (``SUPPORTED_BITS``) plus a mixed genotype, and their ONNX
    exports."""
    from lang.lexicon import Lexicon
    from search_spaces.space import load_search_space
    from training.data import Cmvn
    from training.model_io import model_metadata

    lex = Lexicon.load(str(tiny_corpus / "lang" / "lexicon.txt"))
    space = load_search_space("tdnnf_demo", num_pdfs=2 * len(lex.phones))
    cfg = space.network
    cmvn = Cmvn.load(tiny_corpus / "cmvn.json")
    out = tmp_path_factory.mktemp("onnx_tiny")
    names = weight_names(cfg)
    models = {}
    for bits in list(SUPPORTED_BITS) + ["mixed"]:
        b = {n: LOW_BITS[::-1][i % len(LOW_BITS)] for i, n in enumerate(names)} if bits == "mixed" else bits
        m = _random_model(cfg.replace(feat_dim=cmvn.mean.numel()), b)
        packed = out / f"m{bits}.safetensors"
        export_packed(m, str(packed), extra_metadata=model_metadata(cmvn, lex.phones))
        if bits == "mixed":  # through the CLI once; the others in-process (each CLI start imports torch)
            run_cli(["export_onnx.py", "--model", packed, "--out", out / f"m{bits}.onnx"])
        else:
            export_onnx(str(packed), str(out / f"m{bits}.onnx"))
        models[bits] = (packed, out / f"m{bits}.onnx")
    return models


def test_onnx_outputs_match_on_the_tiny_corpus_at_every_bit_width(tiny_corpus, tiny_models):
    from decoding.decoder import compute_outputs
    from training.checkpoint import load_acoustic_model
    from training.data import load_cuts

    cuts = load_cuts(tiny_corpus, "dev")
    for bits, (packed, onnx_path) in tiny_models.items():
        pt = load_acoustic_model(str(packed))
        ox = load_acoustic_model(str(onnx_path))
        a = compute_outputs(lambda f, l: pt(f, l), cuts, cmvn=pt.cmvn, progress=False)
        b = compute_outputs(ox, cuts, cmvn=None, progress=False)  # the graph normalises
        assert a.keys() == b.keys() and len(a) == len(cuts)
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        assert diff < TOL, (bits, diff)


def test_decode_onnx_gives_the_packed_models_hypotheses(tiny_corpus, tiny_models, tmp_path):
    for bits in (4, "mixed"):
        packed, onnx_path = tiny_models[bits]
        wers = {}
        for name, model in (("packed", packed), ("onnx", onnx_path)):
            run_cli(["decode.py", "--model", model, "--data-dir", tiny_corpus, "--split", "dev",
                     "--out", tmp_path / f"{bits}_{name}", "--graph-cache", tmp_path / "graphs", "--no-progress"])
            wers[name] = json.load(open(tmp_path / f"{bits}_{name}" / "wer.json"))
        hyps = [(tmp_path / f"{bits}_{n}" / "hyps.txt").read_text() for n in ("packed", "onnx")]
        assert hyps[0] == hyps[1] and wers["packed"]["wer"] == wers["onnx"]["wer"]
        assert sum(len(line.split()) - 1 for line in hyps[0].splitlines()) > 5  # words, not empty hypotheses
        assert wers["onnx"]["model"].endswith(".onnx") and wers["onnx"]["num_failed"] == 0


def test_export_cli_refuses_a_file_that_is_not_packed(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 16)
    r = run_cli_fail(["export_onnx.py", "--model", tmp_path / "x.safetensors", "--out", tmp_path / "x.onnx"])
    assert r.returncode != 0 and "x.safetensors" in (r.stderr + r.stdout)
    assert not (tmp_path / "x.onnx").exists()
