"""Pure functions on a weighting's state: control, observation, the weighted loss.

``disable``, ``enable``, ``rollback`` and ``metrics`` accept an :class:`AdaptiveState` or any
pytree holding one, such as an optax optimizer state. A state batched with ``jax.vmap`` (one
weighting per seed) is handled whole: each function gives what ``jax.vmap`` of it gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax.experimental import checkify

from adaptive_optax._src import validation
from adaptive_optax._src.base import AdaptiveState, LossWeighting, PyTree
from adaptive_optax._src.statistics import count_where
from adaptive_optax._src.terms import stack_terms, term_names


def _is_state(node: Any) -> bool:
    return isinstance(node, AdaptiveState)


def _states(tree: PyTree) -> list[AdaptiveState]:
    """Every :class:`AdaptiveState` inside ``tree``."""
    return [node for node in jax.tree.leaves(tree, is_leaf=_is_state) if _is_state(node)]


def _map_states(fn: Callable[[AdaptiveState], AdaptiveState], tree: PyTree) -> PyTree:
    """Applies ``fn`` to every :class:`AdaptiveState` inside ``tree``."""
    if not _states(tree):
        raise ValueError(f"no AdaptiveState found in {type(tree).__name__}")
    return jax.tree.map(lambda n: fn(n) if _is_state(n) else n, tree, is_leaf=_is_state)


def find_state(tree: PyTree) -> AdaptiveState:
    """The :class:`AdaptiveState` inside ``tree`` (an optax state, a train state, ...).

    Raises:
      ValueError: if ``tree`` holds none, or more than one.
    """
    found = _states(tree)
    if len(found) != 1:
        raise ValueError(f"expected one AdaptiveState in {type(tree).__name__}, found {len(found)}")
    return found[0]


def disable(tree: PyTree) -> PyTree:
    """Switches adaptation off: weights return to the base weights at once and stay there.

    The stored base weights: for a Gramian method, its uniform weights ``base / n``, the
    scale of its weights (see :class:`adaptive_optax.Rule`, ``per_term_base``), so that
    disabling it does not multiply an SGD step by ``n``.

    Statistics keep updating, so :func:`enable` resumes from warm statistics.

    Args:
      tree: an :class:`AdaptiveState` or a pytree holding one.

    Returns:
      The same pytree with every weighting state disabled.

    Examples:
      >>> import adaptive_optax as ao
      >>> state = ao.disable(ao.stable_weights({"mel": 2.5}).init())
      >>> bool(state.enabled)
      False
    """

    def off(state: AdaptiveState) -> AdaptiveState:
        return state._replace(
            enabled=jnp.zeros_like(state.enabled),
            weights=state.base_weights,
            previous_weights=state.base_weights,
        )

    return _map_states(off, tree)


def enable(tree: PyTree) -> PyTree:
    """Switches adaptation back on, starting from the base weights.

    Args:
      tree: an :class:`AdaptiveState` or a pytree holding one.

    Returns:
      The same pytree with every weighting state enabled.
    """
    return _map_states(lambda state: state._replace(enabled=jnp.ones_like(state.enabled)), tree)


def rollback(tree: PyTree) -> PyTree:
    """Undoes the last adjustment: weights return to the previous ones, a cooling period starts.

    A second rollback without an adjustment in between changes nothing.

    Args:
      tree: an :class:`AdaptiveState` or a pytree holding one.

    Returns:
      The same pytree with every weighting state rolled back.
    """

    def back(state: AdaptiveState) -> AdaptiveState:
        undone = stack_terms(state.weights) != stack_terms(state.previous_weights)
        return state._replace(
            weights=state.previous_weights,
            last_change=jnp.where(undone, state.step[..., None], state.last_change),
            stable_steps=jnp.where(undone, 0, state.stable_steps),
            counters=state.counters._replace(
                rollbacks=count_where(state.counters.rollbacks, undone)
            ),
        )

    return _map_states(back, tree)


def weighted_sum(losses: PyTree, weights: PyTree) -> jax.Array:
    """``sum(weight * loss)`` over the terms, in the losses' dtype.

    Args:
      losses: a pytree of scalar losses.
      weights: weights of the same structure.

    Returns:
      The total loss, a scalar.

    Raises:
      ValueError: when ``weights`` does not have the structure of ``losses``, naming the
        terms missing from the weights and the extra ones.

    Examples:
      >>> import adaptive_optax as ao
      >>> float(ao.weighted_sum({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 2.0}))
      4.5
    """
    try:
        products = jax.tree.map(
            lambda loss, weight: jnp.asarray(loss) * jnp.asarray(weight, jnp.result_type(loss)),
            losses,
            weights,
        )
    except (ValueError, TypeError) as error:
        loss_terms, weight_terms = term_names(losses), term_names(weights)
        missing = [t for t in loss_terms if t not in weight_terms]
        extra = [t for t in weight_terms if t not in loss_terms]
        detail = "; ".join(
            part
            for part in (
                f"the weights lack terms {missing}" if missing else "",
                f"the weights have extra terms {extra}" if extra else "",
            )
            if part
        ) or (f"the weights are {jax.tree.structure(weights)}")
        raise ValueError(
            f"weighted_sum: the weights must have the structure of the losses, terms "
            f"{list(loss_terms)}; {detail}. Pass the weights the weighting returned (or "
            "state.weights) for the same loss terms"
        ) from error
    return sum(jax.tree.leaves(products))  # type: ignore[return-value]


def metrics(tree: PyTree) -> dict[str, jax.Array]:
    """A flat dict of scalar arrays describing the weighting, for any logger.

    Per term ``<name>`` (its key path, ``"mel"`` or ``"heads/stop"``), keys
    ``"<metric>/<name>"``; each metric reads one field of the :class:`AdaptiveState`:

    ============================  ===========================================================
    metric                        state field
    ============================  ===========================================================
    ``weight``                    ``weights``
    ``previous_weight``           ``previous_weights``
    ``base_weight``               ``base_weights`` (a schedule's value at this step)
    ``loss_ema``                  ``stats.loss_mean`` (bias-corrected)
    ``loss_rel_variance``         ``stats.rel_variance``
    ``grad_norm_avg``             ``stats.grad_mean``
    ``steps_since_change``        ``step - last_change``
    ``stable_steps``              ``stable_steps``
    ``away``                      ``away``: why the weight is away from its base now, an
                                  index into :data:`AWAY_REASONS` (0: at its base)
    ``away_since``                ``away_since``: the step it left its base (0 at its base)
    ``start_ramp``                ``start_ramp`` (the start ramp's progress, 0 to 1)
    ``weight_average``            ``weight_average`` (see :func:`distill`)
    ``<counter>``                 ``counters.<counter>``: ``adjustments``, ``rejected``,
                                  ``nonfinite``, ``rollbacks``, ``healed``, ``spikes``,
                                  ``first_nonfinite_step`` and ``last_nonfinite_step`` (which
                                  term went NaN or Inf first, and when: 0 for never)
    ``rule/<field>``              each per-term vector of ``rule_state`` (GradNorm's learned
                                  weights, uncertainty weighting's log-variances, ...)
    ============================  ===========================================================

    Plus ``step`` and ``enabled``, as in the state. Jittable.

    Args:
      tree: an :class:`AdaptiveState` or a pytree holding exactly one.

    Returns:
      A dict of scalar arrays.

    Examples:
      >>> import adaptive_optax as ao
      >>> m = ao.metrics(ao.stable_weights({"mel": 2.5}).init())
      >>> float(m["weight/mel"]), float(m["base_weight/mel"]), int(m["step"])  # the start ramp
      (1.0, 2.5, 0)
    """
    state = find_state(tree)
    stats = state.stats
    per_term = {
        "weight": stack_terms(state.weights),
        "previous_weight": stack_terms(state.previous_weights),
        "base_weight": stack_terms(state.base_weights),
        "loss_ema": stats.loss_mean,
        "loss_rel_variance": stats.rel_variance,
        "grad_norm_avg": stats.grad_mean,
        "steps_since_change": state.step[..., None] - state.last_change,
        "stable_steps": state.stable_steps,
        "away": state.away,
        "away_since": state.away_since,
        "start_ramp": state.start_ramp,
        "weight_average": state.weight_average,
        **state.counters._asdict(),
    }
    names = term_names(state.base_weights)
    # per-term leaves of the rule's state (learned weights, factors): "rule/<field>/<term>"
    per_term_shape = (*jnp.shape(state.step), len(names))
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.rule_state)[0]:
        # a PRNG key's raw data (unsigned) is no per-term quantity, whatever its length
        if jnp.shape(leaf) == per_term_shape and not jnp.issubdtype(
            leaf.dtype, jnp.unsignedinteger
        ):
            field = jax.tree_util.keystr(path, simple=True, separator="/") or "state"
            per_term[f"rule/{field}"] = leaf
    out = {"step": state.step, "enabled": state.enabled}
    for i, name in enumerate(names):
        for key, vector in per_term.items():
            out[f"{key}/{name}"] = vector[..., i]
    return out


def distill(tree: PyTree, total: float | None = None) -> PyTree:
    """Fixed weights to freeze what an adaptive run found: its time-averaged weight ratios.

    The state keeps a running mean of the normalized weights ``w / sum(w)`` (a bias-corrected
    EMA of decay ``ema_decay`` of :func:`adaptive_optax.guarded`, about the last
    ``1 / (1 - ema_decay)`` steps); this returns it times ``total``. Training the next run
    with these fixed weights separates what the adaptive run's *ratios* were worth from what
    its *scale* was (Gama & Grassi replay averaged normalized weights the same way).

    Args:
      tree: an :class:`AdaptiveState` or a pytree holding exactly one (a batched state gives
        batched weights).
      total: the sum of the returned weights; default: the sum of the base weights, so the
        fixed weights are on the scale the run started from.

    Returns:
      Weights in the structure of the base weights, in the dtype of the state's weights.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.uncertainty_weights({"a": 1.0, "b": 1.0}, lr=0.5)
      >>> state = weighting.init()
      >>> for _ in range(3):
      ...     weights, state = weighting.update({"a": 3.0, "b": 1.0}, state)
      >>> fixed = ao.distill(state)
      >>> round(float(fixed["a"] + fixed["b"]), 4), bool(fixed["a"] < fixed["b"])
      (2.0, True)

    References:
      Gama & Grassi, 2025 (code: UnitScal_vs_SMTOs): an adaptive method's averaged,
      normalized weights replayed as fixed weights.
    """
    if total is not None:
        total = validation.check_number(
            "total", total, low=0, low_open=True, high=float(jnp.finfo(jnp.float32).max)
        )
    state = find_state(tree)
    base = stack_terms(state.base_weights)
    scale = jnp.sum(base, axis=-1, keepdims=True) if total is None else total
    fixed = state.weight_average * jnp.asarray(scale, state.weight_average.dtype)
    dtype = jnp.result_type(base)
    leaves = [fixed[..., i].astype(dtype) for i in range(base.shape[-1])]
    return jax.tree.unflatten(jax.tree.structure(state.base_weights), leaves)


def _float_fields(state: Any, prefix: str = "") -> dict[str, Any]:
    """The floating-point fields of a state, by the paths users read them with.

    Derived from the NamedTuples (nested NamedTuples give dotted paths, down to the fields
    that hold arrays or pytrees of terms), so a field added to the state is checked without
    being listed here.
    """
    fields: dict[str, Any] = {}
    for name, value in state._asdict().items():
        path = f"{prefix}{name}"
        if hasattr(value, "_asdict"):
            fields |= _float_fields(value, f"{path}.")
        elif any(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(value)):
            fields[path] = value
    return fields


def _assert_all_finite(state: AdaptiveState, when: str) -> None:
    for field, value in _float_fields(state).items():
        chex.assert_tree_all_finite(value, custom_message=f"AdaptiveState.{field} {when}")


def _check_inputs(state: AdaptiveState, new_state: AdaptiveState) -> None:
    """Fails (under ``checkify``) naming each term whose input this update found non-finite."""
    before, after = state.counters, new_state.counters
    for i, name in enumerate(term_names(state.base_weights)):
        checkify.check(
            after.last_nonfinite_step[i] == before.last_nonfinite_step[i],
            f"loss term {name!r}: its loss or gradient statistic was NaN or Inf at step "
            "{step} (first at step {first})",
            step=after.last_nonfinite_step[i],
            first=after.first_nonfinite_step[i],
        )


def checked(weighting: LossWeighting, *, check_inputs: bool = True) -> LossWeighting:
    """Opt-in checked mode: ``update`` raises if any field of the state is not finite, or if
    a term's loss or gradient statistic was.

    Built on ``chex.chexify``: the returned ``update`` is jitted and checks the state it is
    given and the state it returns; an error names the field (``AdaptiveState.stats.loss_mean``).
    With ``check_inputs`` it also raises when the update saw a term's loss or gradient
    statistic NaN or +/-Inf, naming the term and the step (``step`` after the update, as in
    :func:`metrics`) and the step it first went bad: the guards would skip such an input, and
    a NaN that is skipped without a word hides its cause (a corrupted checkpoint, a bad batch).
    Call it from Python (it jits itself); it costs a host synchronisation per call, so use it
    to debug, not in production. (chex logs a warning at interpreter exit once any function
    was chexified; with this synchronous checking it is harmless.)

    Args:
      weighting: any :class:`adaptive_optax.LossWeighting`.
      check_inputs: also raise on a non-finite loss or gradient statistic; False checks the
        state only.

    Returns:
      A :class:`adaptive_optax.LossWeighting` with a checking ``update``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.checked(ao.stable_weights({"mel": 2.5}))
      >>> weights, state = weighting.update({"mel": 1.0}, weighting.init())
      >>> try:
      ...     weighting.update({"mel": float("nan")}, state)
      ... except Exception as error:
      ...     print(str(error).split(" (`check`")[0])
      loss term 'mel': its loss or gradient statistic was NaN or Inf at step 2 (first at step 2)
    """
    check_inputs = validation.check_flag("check_inputs", check_inputs)

    def update(losses, state, grad_norms, grad_stats):
        _assert_all_finite(state, "is not finite on input")
        weights, new_state = weighting.update(
            losses, state, grad_norms=grad_norms, grad_stats=grad_stats
        )
        _assert_all_finite(new_state, "is not finite after update")
        if check_inputs:
            _check_inputs(state, new_state)
        return weights, new_state

    checked_update = chex.chexify(jax.jit(update), async_check=False)

    def checked_update_fn(losses, state, *, grad_norms=None, grad_stats=None, **extra_args):
        del extra_args
        return checked_update(losses, state, grad_norms, grad_stats)

    return LossWeighting(weighting.init, checked_update_fn, weighting.needs)
