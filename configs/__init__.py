"""Shipped training recipes (installed as the ``memae_dist.configs`` package)."""
