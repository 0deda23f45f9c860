"""Word-level Transformer language model for n-best rescoring.

- :mod:`lm.vocab`  vocabulary (``<eos>``, ``<unk>``, words by frequency), text file save/load
- :mod:`lm.data`   sentences -> padded token batches with a loss mask; resumable shuffling
- :mod:`lm.model`  :class:`TransformerLMConfig`, :class:`TransformerLM` (pre-LN causal decoder, tied embeddings)
- :mod:`lm.score`  sentence log-probabilities, perplexity, ``model.pt`` save/load
- :mod:`lm.train`  training loop (Adam, warm-up + decay, clipping, atomic checkpoints, exact resume)
- :mod:`lm.rescore` n-best rescoring (n-gram + Transformer costs, (lm_weight, alpha) grid search on dev)

CLIs: ``train_lm.py``, ``score_lm.py`` and ``rescore.py``; see docs/LM.md.
"""
