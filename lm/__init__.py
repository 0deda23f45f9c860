"""Word-level Transformer language model for n-best rescoring.

- :mod:`lm.vocab`  vocabulary (``<eos>``, ``<unk>``, words by frequency), text file save/load
- :mod:`lm.data`   sentences -> padded token batches with a loss mask; resumable shuffling
- :mod:`lm.model`  :class:`TransformerLMConfig`, :class:`TransformerLM` (pre-LN causal decoder, tied embeddings)
- :mod:`lm.score`  sentence log-probabilities, perplexity, ``model.pt`` save/load
- :mod:`lm.train`  training loop (Adam, warm-up + decay, clipping, atomic checkpoints, exact resume)

CLIs: ``train_lm.py`` and ``score_lm.py``; see docs/LM.md.
"""
