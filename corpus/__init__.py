"""Data preparation: embedded TTS corpus, Switchboard / Kaldi-dir importers, features, CMVN, validation.

Everything downstream sees only lhotse CutSets in the prepared directory laid out in docs/INTERFACES.md.
"""
