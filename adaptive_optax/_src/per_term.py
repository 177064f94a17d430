"""Per-term gradients: the losses of a dict-valued loss function and one gradient per loss term,
in the style of ``jax.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adaptive_optax._src.base import PyTree
from adaptive_optax._src.terms import term_names


def _check_argnums(argnums: int | Sequence[int]) -> int | tuple[int, ...]:
    """``argnums`` as an int or a non-empty tuple of ints; raises ``ValueError`` otherwise."""
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        return argnums
    if (
        isinstance(argnums, Sequence)
        and argnums
        and all(isinstance(i, int) and not isinstance(i, bool) for i in argnums)
    ):
        return tuple(argnums)
    raise ValueError(f"argnums must be an int or a non-empty sequence of ints, got {argnums!r}")


def _check_losses(losses: PyTree) -> list[jax.Array]:
    """The leaves of ``losses``; raises ``ValueError`` unless each is a floating scalar."""
    leaves = jax.tree.leaves(losses)
    if not leaves:
        raise ValueError("the loss function returned no loss term (an empty pytree)")
    for name, leaf in zip(term_names(losses), leaves, strict=True):
        if jnp.shape(leaf) != () or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"each loss term must be a floating scalar, got {name!r} with shape "
                f"{jnp.shape(leaf)} and dtype {jnp.result_type(leaf)}"
            )
    return leaves


def per_term_grads(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, *, has_aux: bool = False
) -> Callable[..., tuple[Any, PyTree]]:
    """Creates a function that returns ``fun``'s loss terms and the gradient of each.

    ``fun`` returns a pytree of scalar loss terms (``{"mel": ..., "stop": ...}``). The function
    returned evaluates ``fun`` and, for each term, its gradient with respect to the arguments
    ``argnums``, as ``jax.value_and_grad`` does for one scalar. The gradients come back keyed
    like the losses, each a pytree shaped like the differentiated argument: the per-term
    gradients that :func:`adaptive_optax.weight_gradients` and
    :func:`adaptive_optax.gradient_statistics` take, the same values as ``jax.jacrev(fun)``.

    Each term is differentiated by its own reverse pass (a ``jax.vjp`` of that term alone);
    under ``jax.jit``, XLA computes the forward pass they share once, and each backward pass
    skips what its term does not depend on (the other heads). This is the layout measured
    fastest on CPU (``benchmarks/peers.py``): about ``K`` backward passes for ``K`` terms,
    where ``jax.jacrev`` (a ``vmap`` over the terms) costs 1.7 to 2.3 times more and leaves a
    stacked layout that makes the weighted sum and the Gramian copy every gradient. Call it
    inside ``jax.jit``: called eagerly, each pass is compiled and run on its own.

    Args:
      fun: the loss function; returns a pytree of floating scalars (``has_aux``: a pair
        ``(losses, aux)``).
      argnums: the positional argument (or a sequence of them) to differentiate, as in
        ``jax.grad``.
      has_aux: whether ``fun`` returns ``(losses, aux)``; ``aux`` is returned, not
        differentiated.

    Returns:
      A function with ``fun``'s arguments returning ``(losses, grads)``, or
      ``((losses, aux), grads)`` with ``has_aux``. ``grads`` has the structure of ``losses``;
      each of its values is a gradient shaped like ``args[argnums]`` (a tuple of them for a
      sequence ``argnums``).

    Raises:
      ValueError: for an ``argnums`` that is not an int or a sequence of ints, and, when
        called, for a loss term that is not a floating scalar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import adaptive_optax as ao
      >>> def losses_fn(params, x):
      ...     return {"fit": jnp.sum((params * x - 1.0) ** 2), "small": jnp.sum(params**2)}
      >>> losses, grads = jax.jit(ao.per_term_grads(losses_fn))(jnp.ones(2), jnp.array([1.0, 2.0]))
      >>> grads["fit"].tolist(), grads["small"].tolist()
      ([0.0, 4.0], [2.0, 2.0])
    """
    if not callable(fun):
        raise ValueError(f"fun must be callable, got {fun!r}")
    argnums = _check_argnums(argnums)
    if not isinstance(has_aux, bool):
        raise ValueError(f"has_aux must be True or False, got {has_aux!r}")
    positions = (argnums,) if isinstance(argnums, int) else argnums

    def value_and_grads(*args: Any, **kwargs: Any) -> tuple[Any, PyTree]:
        for i in positions:
            if not -len(args) <= i < len(args):
                raise ValueError(
                    f"argnums {argnums!r} refers to positional argument {i}, but the function "
                    f"was called with {len(args)} positional arguments"
                )
        positions_ = tuple(i % len(args) for i in positions)

        def of(*diff_args: Any) -> Any:
            full = list(args)
            for i, value in zip(positions_, diff_args, strict=True):
                full[i] = value
            return fun(*full, **kwargs)

        primals = tuple(args[i] for i in positions_)
        out = of(*primals)  # traced once for the structure; XLA merges it with the passes
        losses, aux = out if has_aux else (out, None)
        leaves = _check_losses(losses)
        treedef = jax.tree.structure(losses)

        def term(k: int) -> Callable[..., Any]:
            def one(*diff_args: Any) -> Any:
                out = of(*diff_args)
                return jax.tree.leaves(out[0] if has_aux else out)[k]

            return one

        grads = []
        for k, leaf in enumerate(leaves):
            _, pullback = jax.vjp(term(k), *primals)
            grad = pullback(jnp.ones_like(leaf))
            grads.append(grad[0] if isinstance(argnums, int) else grad)
        per_term = jax.tree.unflatten(treedef, grads)
        return ((losses, aux), per_term) if has_aux else (losses, per_term)

    return value_and_grads
