"""Training infrastructure shared by ``retrain.py`` and ``train_search.py``.

- :mod:`training.data`: lhotse cut sampling and batching of precomputed features (CMVN applied).
- :mod:`training.safe_io`: atomic writes, weights-only reads, non-finite guards (the lowest module here).
- :mod:`training.model_io`: model files (``model.pt``, packed ``.safetensors``), ``init_from``.
- :mod:`training.checkpoint`: atomic checkpoints, exact ``--resume``, model files for decoding.
- :mod:`training.distributed`: torchrun / DistributedDataParallel set-up (gloo on CPU, nccl on CUDA).
- :mod:`training.loop`: the LF-MMI training loop with hooks for QAT, ADMM and the architecture search.
"""
