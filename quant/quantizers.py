"""The weight quantizers under their older name: they live in :mod:`models.quantizers` (the network's
forward pass applies them, and ``models`` sits below ``quant``: docs/ARCHITECTURE.md). Project code imports
``models.quantizers``; this module only keeps ``from quant.quantizers import ...`` working."""
from __future__ import annotations

from models.quantizers import (MSE_CLIP_RATIOS, QUANTIZED_BITS, SCALE_MODES, SUPPORTED_BITS, check_bits, compute_scales, dequantize,
                               fake_quant, num_levels, qmax_for, quantize_to_codes)

__all__ = ["MSE_CLIP_RATIOS", "QUANTIZED_BITS", "SCALE_MODES", "SUPPORTED_BITS", "check_bits", "compute_scales", "dequantize",
           "fake_quant", "num_levels", "qmax_for", "quantize_to_codes"]
