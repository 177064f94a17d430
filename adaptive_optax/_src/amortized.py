"""Amortized per-term gradients: the ``K`` backward passes only on the steps that recompute the
weights, one backward pass of the weighted loss (the weights held) on the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.base import AdaptiveState, LossWeighting, PyTree
from adaptive_optax._src.control import weighted_sum
from adaptive_optax._src.integration import WeightGradientsState, weight_gradients
from adaptive_optax._src.per_term import _check_argnums, _check_losses, per_term_grads


class AmortizedState(NamedTuple):
    """State of :func:`amortized_grads`.

    Attributes:
      weighting_state: the weighting's :class:`adaptive_optax.AdaptiveState`, advanced only on
        the steps that recompute the weights (its ``step`` counts those);
        :func:`adaptive_optax.metrics` of this state reads it.
      step: int32 scalar, the ``update`` calls so far (every step, recomputing or not).
    """

    weighting_state: AdaptiveState
    step: jax.Array


class AmortizedGrads(NamedTuple):
    """What :func:`amortized_grads` returns: a pure ``(init, update)`` pair.

    Attributes:
      init: ``init() -> AmortizedState``.
      update: ``update(state, *args, **kwargs) -> (losses, grads, new_state)`` (with
        ``has_aux``: ``((losses, aux), grads, new_state)``): ``args`` are the loss function's,
        ``grads`` the combined gradient, shaped like ``args[argnums]``.
      every: the schedule: the weights are recomputed on steps 1, 1 + every, 1 + 2 every, ...
    """

    init: Callable[[], AmortizedState]
    update: Callable[..., tuple[Any, PyTree, AmortizedState]]
    every: int


def _check_every(every: Any) -> int:
    """``every``, a Python int ``>= 1``; else ``ValueError`` naming it and its value."""
    validation.check_number("every", every, low=1, integer=True, static=True)
    if isinstance(every, bool) or not isinstance(every, int):
        raise ValueError(
            f"every must be an int (the steps between two recomputations of the weights), "
            f"got {every!r} of type {type(every).__name__}"
        )
    return every


def amortized_grads(
    fun: Callable[..., Any],
    weighting: LossWeighting,
    *,
    every: int,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    gradient_filter: Callable[[PyTree], PyTree] | None = None,
    skip_nonfinite: bool = False,
    this_steps_weights: bool | None = None,
) -> AmortizedGrads:
    """The weighted gradient of ``fun``'s loss terms, with per-term gradients every ``every`` steps.

    The documented Gramian step (:func:`adaptive_optax.per_term_grads`, then
    :func:`adaptive_optax.weight_gradients`) pays ``K`` backward passes at every step for ``K``
    loss terms. Here they are paid only on the steps that recompute the weights: steps 1,
    ``1 + every``, ``1 + 2 every``, ... On those, ``update`` computes the per-term gradients,
    advances the weighting with them and returns the combined gradient, the same computation
    as ``weight_gradients(weighting, ...)``; on the others it computes one gradient of the
    weighted loss ``sum_t w_t L_t``, the weights ``w`` those in the weighting's state (the
    last ones computed, held as constants), and leaves the weighting's state as it was. The
    choice is made in-graph (``jax.lax.cond`` on a counter in the state): one compilation, no
    host round trip, and only the taken branch runs.

    Every weighting works: the Gramian methods (UPGrad, MGDA, ConFIG, PCGrad, Nash-MTL, ...),
    the gradient-norm balancers (EnCodec, GradNorm, ...) and the loss-only ones. The schedule
    is this function's: build the weighting without ``every=`` (its rule is then consulted at
    each of its updates, which come every ``every`` steps). The weighting sees the recompute
    steps only: its step counter, warmup, cooling period and statistics count those.

    Non-finite inputs: on a recompute step, as in :func:`adaptive_optax.weight_gradients`
    (the weighting counts the term, keeps its weight; ``skip_nonfinite``). On another step
    the weighting's state is held whatever the losses, and a NaN loss or gradient makes the
    combined gradient non-finite: :func:`adaptive_optax.apply_if_finite` around the
    optimizer, given ``losses=``, then keeps the step away from the parameters and the
    optimizer's state and counts it (``total_notfinite``). The state never becomes non-finite.

    Args:
      fun: the loss function, ``fun(*args, **kwargs)`` returning a pytree of floating scalars
        keyed like the weighting's base weights (``has_aux``: ``(losses, aux)``).
      weighting: a :class:`adaptive_optax.LossWeighting`, e.g.
        :func:`adaptive_optax.upgrad_weights`, built without ``every=``.
      every: a Python int >= 1, the steps between two recomputations of the weights (1:
        per-term gradients at every step, as the documented step).
      argnums: the positional argument(s) of ``fun`` to differentiate, as in ``jax.grad``.
      has_aux: whether ``fun`` returns ``(losses, aux)``.
      gradient_filter, skip_nonfinite, this_steps_weights: as in
        :func:`adaptive_optax.weight_gradients`, on the recompute steps.

    Returns:
      An :class:`AmortizedGrads` ``(init, update, every)``. Call ``update`` inside
      ``jax.jit``.

    Raises:
      ValueError: for ``every`` that is not an int >= 1, ``fun`` not callable, ``weighting``
        not a :class:`adaptive_optax.LossWeighting`, or a bad ``argnums``, ``has_aux`` or
        setting of :func:`adaptive_optax.weight_gradients`; when called, for a loss term that
        is not a floating scalar or losses not keyed like the base weights.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import adaptive_optax as ao
      >>> def losses_fn(params):
      ...     return {"a": jnp.sum((params - 1.0) ** 2), "b": jnp.sum((params + 1.0) ** 2)}
      >>> amortized = ao.amortized_grads(losses_fn, ao.upgrad_weights({"a": 1.0, "b": 1.0}),
      ...                                every=10)
      >>> state = amortized.init()
      >>> step = jax.jit(amortized.update)
      >>> losses, grads, state = step(state, jnp.array([0.5, 0.0]))  # step 1: K passes
      >>> losses, grads, state = step(state, jnp.array([0.5, 0.0]))  # step 2: one pass
      >>> int(state.step), int(ao.metrics(state)["step"])
      (2, 1)
    """
    if not callable(fun):
        raise ValueError(f"fun must be callable, got {fun!r}")
    if not isinstance(weighting, LossWeighting):
        raise ValueError(
            "weighting must be an adaptive_optax.LossWeighting (e.g. ao.upgrad_weights(base)), "
            f"got {type(weighting).__name__}"
        )
    every = _check_every(every)
    argnums = _check_argnums(argnums)
    if not isinstance(has_aux, bool):
        raise ValueError(f"has_aux must be True or False, got {has_aux!r}")
    combine = weight_gradients(
        weighting,
        gradient_filter=gradient_filter,
        skip_nonfinite=skip_nonfinite,
        this_steps_weights=this_steps_weights,
    )
    per_term = per_term_grads(fun, argnums, has_aux=has_aux)

    def init() -> AmortizedState:
        return AmortizedState(weighting_state=weighting.init(), step=jnp.zeros((), jnp.int32))

    def update(state: AmortizedState, *args: Any, **kwargs: Any):
        if not isinstance(state, AmortizedState):
            raise ValueError(
                "amortized_grads' update expects the AmortizedState its init made, got "
                f"{type(state).__name__}"
            )
        positions = (argnums,) if isinstance(argnums, int) else argnums
        for i in positions:
            if not -len(args) <= i < len(args):
                raise ValueError(
                    f"argnums {argnums!r} refers to positional argument {i}, but the function "
                    f"was called with {len(args)} positional arguments"
                )
        diff = args[argnums] if isinstance(argnums, int) else tuple(args[i] for i in positions)
        inner = state.weighting_state

        def recompute(inner: AdaptiveState):
            out, term_grads = per_term(*args, **kwargs)
            losses = out[0] if has_aux else out
            grads, new = combine.update(
                term_grads,
                WeightGradientsState(weighting_state=inner, replicas_differ=0),
                diff,
                losses=losses,
            )
            return out, grads, new.weighting_state

        def hold(inner: AdaptiveState):
            weights = jax.lax.stop_gradient(inner.weights)  # the held weights, constants

            def total(*diff_args: Any):
                full = list(args)
                for i, value in zip(positions, diff_args, strict=True):
                    full[i] = value
                out = fun(*full, **kwargs)
                _check_losses(out[0] if has_aux else out)
                return weighted_sum(out[0] if has_aux else out, weights), out

            wrt = tuple(range(len(positions)))
            (_, out), grads = jax.value_and_grad(total, argnums=wrt, has_aux=True)(
                *(args[i] for i in positions)
            )
            return out, grads[0] if isinstance(argnums, int) else grads, inner

        due = state.step % every == 0
        if every == 1:
            out, grads, new_inner = recompute(inner)
        else:
            out, grads, new_inner = jax.lax.cond(due, recompute, hold, inner)
        step = optax.safe_increment(state.step)
        return out, grads, AmortizedState(weighting_state=new_inner, step=step)

    return AmortizedGrads(init=init, update=update, every=every)
