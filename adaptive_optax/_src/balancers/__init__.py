"""The classic loss-balancing methods, each a :class:`adaptive_optax.Rule` and a bare factory."""
