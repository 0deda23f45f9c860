"""Per-layer quantization sensitivity (KL divergence, Hessian trace) and bit allocation under a size budget.

    from sensitivity import kl_sensitivity, hessian_sensitivity, allocate_bits, pareto_frontier
"""
from __future__ import annotations

from .allocate import (Allocation, BudgetError, allocate_bits, brute_force, fp32_model_bytes, knapsack,
                       layer_sizes, pareto_frontier)
from .hessian import HutchinsonResult, SplitLoss, hessian_sensitivity, hutchinson_trace, lfmmi_closures
from .kl import kl_sensitivity

__all__ = ["Allocation", "BudgetError", "allocate_bits", "brute_force", "fp32_model_bytes", "knapsack",
           "layer_sizes", "pareto_frontier", "HutchinsonResult", "SplitLoss", "hessian_sensitivity", "hutchinson_trace",
           "lfmmi_closures", "kl_sensitivity"]
