"""Acoustic models. ``models.tdnnf``: TDNN-F (Kaldi tdnnf-layer) with per-weight bit-widths;
``models.quantizers``: the weight quantizers its forward pass applies; ``models.bottleneck_order``."""
from models.config import TDNNFConfig
from models.layout import layer_groups, tensor_layout, weight_names
from models.tdnnf import TDNNF, build_model

__all__ = ["TDNNF", "TDNNFConfig", "build_model", "layer_groups", "tensor_layout", "weight_names"]
