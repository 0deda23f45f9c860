"""The Transformer LM's ONNX export (lm/onnx.py): the same logits as the PyTorch LM, causal, bad files refused."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from lm.model import TransformerLM, TransformerLMConfig  # noqa: E402
from lm.onnx import LMOnnxError, OnnxTransformerLM, export_lm_onnx, load_lm_onnx  # noqa: E402
from lm.rescore import load_rescoring_lm  # noqa: E402
from lm.score import save_lm, sentence_logprobs  # noqa: E402
from lm.vocab import Vocab  # noqa: E402

WORDS = ["<eos>", "<unk>"] + [f"W{i}" for i in range(37)]


def _lm(tmp_path, seed=0, **kw):
    torch.manual_seed(seed)
    d = dict(vocab_size=len(WORDS), d_model=24, n_heads=2, n_layers=2, d_ff=40, max_len=12, dropout=0.0)
    d.update(kw)
    m = TransformerLM(TransformerLMConfig.from_dict(d))
    with torch.no_grad():  # larger than the N(0, 0.02) init, so that the blocks matter
        for name, p in m.named_parameters():
            if not name.endswith("weight") or p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path / "model.pt"
    save_lm(m, Vocab(WORDS), path)
    export_lm_onnx(str(path), str(tmp_path / "model.onnx"))
    return m.eval(), path, tmp_path / "model.onnx"


@pytest.mark.parametrize("variant", [{}, {"positions": "learned"}, {"tie_embeddings": False},
                                     {"n_heads": 1, "n_layers": 1}, {"n_heads": 4, "n_layers": 3}])
def test_onnx_logits_equal_the_pytorch_lms(tmp_path, variant):
    m, _, onnx_path = _lm(tmp_path, **variant)
    ox = OnnxTransformerLM(str(onnx_path), num_threads=1)
    g = torch.Generator().manual_seed(1)
    for B, T in ((1, 1), (3, 7), (2, 12)):
        tokens = torch.randint(0, len(WORDS), (B, T), generator=g)
        with torch.no_grad():
            ref = m(tokens)
        out = ox(tokens)
        assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-4
    # causal: changing the future never changes the logits of earlier positions
    a = torch.randint(0, len(WORDS), (1, 10), generator=g)
    b = a.clone()
    b[0, 6:] = (b[0, 6:] + 5) % len(WORDS)
    assert torch.allclose(ox(a)[0, :6], ox(b)[0, :6], atol=1e-6)
    assert not torch.allclose(ox(a)[0, 6:], ox(b)[0, 6:], atol=1e-3)


def test_sentence_scores_and_rescoring_loader(tmp_path):
    m, pt_path, onnx_path = _lm(tmp_path)
    sents = [["W1", "W2", "W3"], ["W5"], ["W9", "OOV", "W2", "W2"], []]
    ref = sentence_logprobs(m, Vocab(WORDS), sents)
    model, vocab = load_rescoring_lm(str(onnx_path))
    got = sentence_logprobs(model, vocab, sents)
    assert got[1] == ref[1] and got[2] == ref[2] == [0, 0, 1, 0]
    assert max(abs(x - y) for x, y in zip(got[0], ref[0])) < 1e-3
    with pytest.raises(ValueError, match="is not the one"):
        load_lm_onnx(str(onnx_path), Vocab(WORDS[:-1] + ["OTHER"]))
    with pytest.raises(ValueError, match="CPU"):
        load_rescoring_lm(str(onnx_path), device="cuda")
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_bad_lm_onnx_files_are_refused(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(LMOnnxError, match="cannot load"):
        OnnxTransformerLM(str(tmp_path / "junk.onnx"))
    with pytest.raises(LMOnnxError, match="no such file"):
        OnnxTransformerLM(str(tmp_path / "missing.onnx"))
    # an acoustic-model ONNX export is not an LM
    from tests.test_quant_onnx import _cfg, _random_model
    from quant.onnx_export import export_onnx
    from quant.packing import export_packed

    export_packed(_random_model(_cfg(), 4), str(tmp_path / "am.safetensors"))
    export_onnx(str(tmp_path / "am.safetensors"), str(tmp_path / "am.onnx"))
    with pytest.raises(LMOnnxError, match="not a green-asr-lm-onnx"):
        OnnxTransformerLM(str(tmp_path / "am.onnx"))
