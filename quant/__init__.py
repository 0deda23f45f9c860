"""Quantization built on the model: THE cost model, packed export / load, ADMM helper, and the
multiple-choice knapsack under a byte budget (``quant.knapsack``). The quantizers themselves (fake_quant /
codes) are in ``models.quantizers``, one layer down; ``quant.quantizers`` re-exports them."""
