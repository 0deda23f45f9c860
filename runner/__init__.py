"""Pieces of the experiment runner (``run_experiments.py``): the console and the stage subprocess."""
