"""Shipped search spaces (installed as the ``memae_dist.tune_spaces`` package)."""
