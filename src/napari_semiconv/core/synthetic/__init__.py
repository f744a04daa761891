"""Synthetic data, deterministic by seed.

The dot grid of Fig. 3a (dots.py) and C. elegans-like worms (worms.py).
"""
