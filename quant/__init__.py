"""Quantization: quantizers (fake_quant / codes), THE cost model, packed export / load, ADMM helper."""
