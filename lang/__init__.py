"""Pronunciation lexicon and phone set (see docs/INTERFACES.md, "Text, words, phones")."""
from __future__ import annotations

from lang.lexicon import Lexicon, OOVError, SILENCE_PHONE

__all__ = ["Lexicon", "OOVError", "SILENCE_PHONE"]
