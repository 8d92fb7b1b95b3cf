"""CLI verbs. Each module exposes ``register(subparsers)``; ``memae_dist.cli`` lists them."""
