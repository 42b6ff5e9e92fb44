"""Figures: kept density over training, which blocks queries select, speedup curves."""
