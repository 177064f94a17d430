"""The representation-level path: per-term gradients with respect to a shared activation (cheap:
only the heads are differentiated per term), then one backward pass of the weighted loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src.base import PyTree
from adaptive_optax._src.per_term import _check_losses


class RepresentationGrads(NamedTuple):
    """What :func:`representation_grads` returns.

    Attributes:
      losses: the loss terms, as the decoder returns them (``(losses, aux)`` with
        ``has_aux``).
      grads: one gradient per term with respect to the shared representation, keyed like the
        losses: the input of :func:`adaptive_optax.gradient_statistics` (``"gramian"``,
        ``"norm"``, ...).
      backward: ``backward(weights)`` is the gradient, with respect to ``params``, of
        ``sum_t weights[t] * losses[t]`` (the weights constants): one backward pass through
        the heads and the encoder, reusing this forward pass. ``weights`` is keyed like the
        losses.
    """

    losses: Any
    grads: PyTree
    backward: Callable[[PyTree], PyTree]


def representation_grads(
    encode: Callable[..., Any],
    decode: Callable[..., Any],
    *,
    has_aux: bool = False,
) -> Callable[..., RepresentationGrads]:
    """Per-term gradients with respect to a shared representation, and the weighted backward pass.

    The model is split where its terms part: ``encode(params, *args)`` computes the shared
    representation (an activation, e.g. the trunk's ``(batch, features)`` output) and
    ``decode(params, representation, *args)`` the loss terms from it (the heads and losses).
    The function returned runs the forward pass once, differentiates each term with respect
    to the representation only (``K`` backward passes through the heads, none through the
    encoder), and returns a ``backward`` that computes the gradient of the weighted loss with
    respect to ``params`` in one backward pass. In between, a weighting takes its weights from
    these gradients (their Gramian, their norms), as LibMTL's ``rep_grad`` and Sener &
    Koltun's MGDA-UB do: every Gramian method and every gradient-aware balancer reads them
    through :func:`adaptive_optax.gradient_statistics`.

    When it is exact: the weighted gradient ``backward(w)`` is always the exact gradient of
    ``sum_t w_t L_t``. The weights are those of the full-parameter path when the
    representation's Gramian equals the shared parameters' one, e.g. when the shared
    parameters are the representation (``encode`` returns them) or act on it as an isometry,
    and the heads have no parameters of their own. Otherwise it is an approximation: with
    ``Z`` the representation and ``theta`` the shared parameters,
    ``||sum_t w_t grad_theta L_t|| <= ||dZ/dtheta|| ||sum_t w_t grad_Z L_t||`` (Sener &
    Koltun, Theorem 1), so MGDA on these gradients minimises an upper bound of the
    full-parameter objective, and its solution is Pareto stationary or a descent direction
    for every term when ``dZ/dtheta`` has full rank. The heads' own parameters do not enter
    the weights.

    Args:
      encode: ``encode(params, *args) -> representation``, any pytree of float arrays.
      decode: ``decode(params, representation, *args) -> losses``, a pytree of floating
        scalars (``has_aux``: ``(losses, aux)``).
      has_aux: whether ``decode`` returns ``(losses, aux)``.

    Returns:
      A function ``(params, *args) -> RepresentationGrads``; call it inside ``jax.jit``.

    Raises:
      ValueError: for arguments that are not callable, and, when called, for a loss term that
        is not a floating scalar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import adaptive_optax as ao
      >>> encode = lambda params, x: jnp.tanh(x @ params["trunk"])
      >>> def decode(params, z, x):
      ...     return {"a": jnp.mean((z @ params["a"]) ** 2), "b": jnp.mean((z @ params["b"]) ** 2)}
      >>> params = {"trunk": jnp.ones((3, 4)) / 4, "a": jnp.ones(4), "b": -jnp.arange(4.0)}
      >>> weighting = ao.upgrad_weights({"a": 1.0, "b": 1.0})
      >>> terms = jax.tree.structure({"a": 1.0, "b": 1.0})
      >>> @jax.jit
      ... def step(params, state, x):
      ...     losses, grads, backward = ao.representation_grads(encode, decode)(params, x)
      ...     stats = ao.gradient_statistics(grads, weighting.needs, terms)
      ...     weights, state = weighting.update(losses, state, grad_stats=stats)
      ...     return backward(weights), state
      >>> grads, state = step(params, weighting.init(), jnp.ones((2, 3)))
      >>> sorted(grads), grads["trunk"].shape
      (['a', 'b', 'trunk'], (3, 4))

    References:
      Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018
      (MGDA-UB, Section 3.3); Lin & Zhang, *LibMTL*, JMLR 2023 (``rep_grad``).
    """
    for name, value in (("encode", encode), ("decode", decode)):
        if not callable(value):
            raise ValueError(f"{name} must be callable, got {value!r}")
    if not isinstance(has_aux, bool):
        raise ValueError(f"has_aux must be True or False, got {has_aux!r}")

    def run(params: PyTree, *args: Any) -> RepresentationGrads:
        representation, encoder_vjp = jax.vjp(lambda p: encode(p, *args), params)
        out, decoder_vjp, *aux = jax.vjp(
            lambda p, z: decode(p, z, *args), params, representation, has_aux=has_aux
        )
        leaves = _check_losses(out)
        treedef = jax.tree.structure(out)

        def term(k: int) -> Callable[[PyTree], jax.Array]:
            def one(z: PyTree) -> jax.Array:
                out = decode(params, z, *args)
                return jax.tree.leaves(out[0] if has_aux else out)[k]

            return one

        # Each term through the heads only, with respect to the representation only; XLA
        # merges the forward passes they share with the one above.
        grads = []
        for k, leaf in enumerate(leaves):
            _, pullback = jax.vjp(term(k), representation)
            grads.append(pullback(jnp.ones_like(leaf))[0])
        grads = jax.tree.unflatten(treedef, grads)

        def backward(weights: PyTree) -> PyTree:
            cotangent = jax.tree.map(
                lambda w, x: jax.lax.stop_gradient(jnp.asarray(w, x.dtype)), weights, out
            )
            heads, at_representation = decoder_vjp(cotangent)
            (trunk,) = encoder_vjp(at_representation)
            return jax.tree.map(jnp.add, heads, trunk)

        losses = (out, aux[0]) if has_aux else out
        return RepresentationGrads(losses, grads, backward)

    return run
