"""The setup every code snippet of README.md and of the guides assumes.

``tests/test_readme.py`` runs this, then one snippet, for each snippet: a toy model with the
three loss terms of the README's examples, standing in for yours.
"""

import jax  # noqa: F401  (the snippets use it)
import jax.numpy as jnp
import optax  # noqa: F401

import adaptive_optax as ao  # noqa: F401

base = {"mel": 2.5, "stop": 1.0, "attention": 0.1}  # base weights, one per loss term
params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
batch = {"x": jnp.ones((8, 4)), "y": jnp.ones((8, 3))}


def losses_of(outputs, batch):
    """One scalar loss per term from a model's ``(batch, 3)`` outputs."""
    error = outputs - batch["y"]
    return {
        "mel": jnp.mean(jnp.abs(error[:, 0])),
        "stop": jnp.mean(error[:, 1] ** 2),
        "attention": jnp.mean(error[:, 2] ** 2),
    }


def model_losses(params, batch):
    """The loss terms of the toy linear model: ``{"mel": ..., "stop": ..., "attention": ...}``."""
    return losses_of(batch["x"] @ params["w"] + params["b"], batch)
