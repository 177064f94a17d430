"""Adaptive loss weights inside an optax chain, in training states that cannot pass them, and
an optimizer wrapper that keeps non-finite steps away from the parameters."""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.base import AdaptiveState, LossWeighting, PyTree
from adaptive_optax._src.gradients import GRAMIAN, gradient_statistics
from adaptive_optax._src.terms import term_names


class WeightGradientsState(NamedTuple):
    """State of :func:`weight_gradients`.

    Attributes:
      weighting_state: the weighting's :class:`adaptive_optax.AdaptiveState`; inside any optax
        state, ``optax.tree.get(opt_state, "weighting_state")`` or
        ``adaptive_optax.find_state(opt_state)`` returns it.
      replicas_differ: int32, the steps on which the per-term gradients reaching the combined
        update differed between the replicas of ``weight_gradients``' ``axis_name`` (always 0
        without one); ``optax.tree.get(opt_state, "replicas_differ")`` returns it.
    """

    weighting_state: AdaptiveState
    replicas_differ: jax.Array | int = 0


def _replicas_differ(term_grads: list, axis_name: Hashable) -> jax.Array:
    """Whether the per-term gradients differ between the replicas of ``axis_name``: each
    term's sum and sum of squares (in float32 at least), compared by ``pmax`` and ``pmin``."""

    def fingerprint(grads):
        leaves = [jnp.asarray(x) for x in jax.tree.leaves(grads)]
        leaves = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in leaves]
        total = sum((jnp.sum(x).astype(jnp.float32) for x in leaves), jnp.zeros((), jnp.float32))
        squares = sum(
            (jnp.sum(x * x).astype(jnp.float32) for x in leaves), jnp.zeros((), jnp.float32)
        )
        return jnp.stack([total, squares])

    prints = jnp.stack([fingerprint(g) for g in term_grads])
    return jnp.any(jax.lax.pmax(prints, axis_name) != jax.lax.pmin(prints, axis_name))


def weight_gradients(
    weighting: LossWeighting,
    *,
    gradient_filter: Callable[[PyTree], PyTree] | None = None,
    skip_nonfinite: bool = False,
    this_steps_weights: bool | None = None,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Weights per-term gradients with adaptive loss weights, as the first link of an optax chain.

    ``update`` takes per-term gradients: a pytree keyed like the base weights whose values are
    parameter-shaped gradient pytrees (what :func:`adaptive_optax.per_term_grads` of a
    dict-valued loss function gives; ``jax.jacrev`` gives the same, slower), and the keyword
    ``losses`` (one scalar per term). It advances the weighting with ``losses`` and the
    gradient statistics its rule needs (``weighting.needs``: ``"norm"``, ``"max_abs"``,
    ``"gramian"``, ...; nothing else is computed) and returns ``sum(weight[t] * grads[t])``
    over the terms ``t``: with the weights in the state before this step, as the
    training-step pattern has them, or with the weights the update just computed from this
    step's gradients (``this_steps_weights``), as the Gramian methods'
    algorithms do. ``grads_finite=`` (a loss scaler's verdict) is passed on to the weighting,
    so that a weighting made by :func:`adaptive_optax.loss_scaled` leaves an fp16 overflow to
    the scaler; other extra arguments are ignored, as in optax.

    Under data parallelism (``shard_map`` or ``pmap`` over an axis), average the per-term
    gradients over the axis before this transform, as for any optimizer: every replica then
    computes the same statistics (the Gramian of the mean gradients, the norms of the mean
    gradients), the same weights and the same combined update, and the parameters stay equal.
    Building the weighting with ``axis_name`` is not an alternative to that: it averages the
    losses and the gradient statistics over the axis (the mean of the local Gramians, not the
    Gramian of the mean gradients), so the weights agree across replicas, but the combined
    update ``sum(weight[t] * grads[t])`` is still each replica's own, and the parameters and
    the optimizer state drift apart unless the combined update is averaged after this
    transform (which gives the mean gradients weighted by weights from the mean local
    Gramian). Pass ``axis_name`` here to check that the per-term gradients agree across the
    axis: each step on which they differ is counted in ``replicas_differ`` of the state.

    Args:
      weighting: a :class:`adaptive_optax.LossWeighting`, e.g. from
        :func:`adaptive_optax.stable_weights`.
      gradient_filter: maps one term's gradient pytree to the part the gradient statistics are
        computed on, e.g. ``lambda g: g["shared"]`` for the last shared layer (as GradNorm
        prescribes, and cheaper). The weighted sum always uses the full gradients. Default:
        the whole gradient pytree.
      skip_nonfinite: when True, a step whose weighted gradient is not finite, or whose loss
        or gradient statistic the weighting finds not finite (averaged over ``axis_name`` if
        the weighting has one), leaves the weighting state untouched, as
        :func:`adaptive_optax.apply_if_finite` after this transform leaves the parameters and
        the optimizer state: such a step then changes nothing at all, and only that wrapper's
        ``total_notfinite`` records it. When False (default) the weighting sees the step: it
        counts the non-finite term (``nonfinite/<term>`` in :func:`adaptive_optax.metrics`),
        keeps that term's statistics and weight, and with ``auto_rollback`` undoes a recent
        adjustment.
      axis_name: the mapped axis of data parallelism, if any. Each step, a fingerprint of
        every term's gradient (its sum and sum of squares) is compared across the axis; a step
        on which they differ on some replica is counted in ``replicas_differ`` (two scalars per
        term are reduced; the gradients themselves are not averaged, nor changed).
      this_steps_weights: weight this step's gradients with the weights computed from them;
        default: True when the rule reads the Gramian (MGDA, UPGrad, ...: their weights are a
        function of the current gradients), else False (the state's weights, one step old).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`WeightGradientsState`.

    Raises:
      ValueError: from ``update``, when ``losses`` is missing or its structure or that of the
        per-term gradients differs from the base weights.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import adaptive_optax as ao
      >>> weighting = ao.stable_weights({"fit": 1.0, "smooth": 0.1})
      >>> tx = optax.chain(ao.weight_gradients(weighting), optax.adam(1e-2))
      >>> params = jnp.zeros(3)
      >>> def losses_fn(params):
      ...     return {"fit": jnp.sum((params - 1.0) ** 2), "smooth": jnp.sum(jnp.diff(params) ** 2)}
      >>> opt_state = tx.init(params)
      >>> losses, grads = ao.per_term_grads(losses_fn)(params)
      >>> updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
      >>> params = optax.apply_updates(params, updates)
      >>> int(ao.metrics(opt_state)["step"])
      1
    """
    if gradient_filter is not None and not callable(gradient_filter):
        raise ValueError(f"gradient_filter must be callable or None, got {gradient_filter!r}")
    skip_nonfinite = validation.check_flag("skip_nonfinite", skip_nonfinite)
    needs = tuple(weighting.needs)
    if this_steps_weights is None:
        this_steps_weights = GRAMIAN in needs
    this_steps_weights = validation.check_flag("this_steps_weights", this_steps_weights)

    def init_fn(params: PyTree) -> WeightGradientsState:
        del params
        _refuse_inside(optax.MultiSteps, "optax.MultiSteps")
        return WeightGradientsState(
            weighting_state=weighting.init(), replicas_differ=jnp.zeros((), jnp.int32)
        )

    def update_fn(
        updates: PyTree,
        state: WeightGradientsState,
        params: PyTree | None = None,
        *,
        losses: PyTree | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, WeightGradientsState]:
        if not isinstance(state, WeightGradientsState):
            raise ValueError(
                "weight_gradients got the optimizer state "
                f"{type(state).__name__ if state is not None else None}, not the one its init "
                "made: pass the opt_state that tx.init(params) of this chain returned (the "
                "state of another optimizer, such as a plain optax.adam, or None, does not hold "
                "the weighting's state)"
            )
        if losses is None:
            raise ValueError(
                "weight_gradients needs this step's losses: call "
                "tx.update(per_term_grads, opt_state, params, losses=losses). With a Flax linen "
                "TrainState, call ao.apply_gradients(state, grads=grads, losses=losses): "
                "state.apply_gradients(grads=grads, losses=losses) calls tx.update without "
                "losses= (linen passes its keyword arguments to .replace)"
            )
        inner = state.weighting_state
        treedef = jax.tree.structure(inner.weights)
        term_grads = _split_terms(updates, inner.weights)
        _check_term_grads(term_grads, term_names(inner.weights), params)
        statistics = {}
        if needs:
            filtered = [g if gradient_filter is None else gradient_filter(g) for g in term_grads]
            statistics = gradient_statistics(jax.tree.unflatten(treedef, filtered), needs, treedef)
        # the loss scaler's verdict reaches a weighting made by ao.loss_scaled (others ignore it)
        passed = {k: extra_args[k] for k in ("grads_finite",) if k in extra_args}
        new_weights, new_inner = weighting.update(
            losses, inner, grad_stats=statistics or None, **passed
        )
        weights = treedef.flatten_up_to(new_weights if this_steps_weights else inner.weights)
        combined = jax.tree.map(
            lambda *grads: sum(
                jnp.asarray(w, g.dtype) * g for w, g in zip(weights, grads, strict=True)
            ),
            *term_grads,
        )
        if skip_nonfinite:
            # The weighting's own count says whether an input was not finite: it saw the losses
            # and statistics averaged over its axis_name, so every replica agrees.
            counted = new_inner.counters.nonfinite != inner.counters.nonfinite
            finite = _all_finite(combined) & ~jnp.any(counted)
            new_inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_inner, inner)
        differ = state.replicas_differ
        if axis_name is not None:
            differ = differ + _replicas_differ(term_grads, axis_name).astype(jnp.int32)
        return combined, WeightGradientsState(weighting_state=new_inner, replicas_differ=differ)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def apply_if_finite(
    inner: optax.GradientTransformation, *, axis_name: Hashable | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optimizer so that a step with a non-finite gradient or loss never reaches it.

    On such a step the update is zero and ``inner``'s state is kept as it was, so neither the
    parameters nor the optimizer state (Adam's moments and count) change; the weighting still
    sees the step and counts it (``nonfinite/<term>``). It is ``optax.apply_if_finite`` with
    two differences that a multi-loss step needs:

    - it also checks the losses passed as ``losses=`` to ``update``: an L1 loss of a NaN
      target is NaN while its gradient is finite (``abs``'s derivative at NaN is -1), so a
      check of the gradients alone applies a wrong update;
    - it never lets a non-finite step through. ``optax.apply_if_finite`` applies it after
      ``max_consecutive_errors`` consecutive ones, which makes the parameters non-finite for
      good. Here a run that only meets non-finite steps stands still, and says so:
      ``notfinite_count`` (consecutive) and ``total_notfinite`` in this state, and
      ``nonfinite/<term>`` in :func:`adaptive_optax.metrics`.

    Use it in every training step: around the optimizer (``tx.update(grads, opt_state,
    params, losses=losses)``), or in a chain after :func:`weight_gradients`, whose
    ``losses=`` it reads too: ``optax.chain(ao.weight_gradients(w),
    ao.apply_if_finite(optax.adam(1e-3)))``. Not around :func:`weight_gradients`: its
    skipped branch would return per-term zeros.

    Args:
      inner: the optimizer (any optax transformation, e.g. a chain of clipping and Adam).
      axis_name: under ``shard_map`` or ``pmap``, where each device computes the losses of its
        own shard, the mapped axis over which a non-finite loss on any device skips the step
        on every device (the weighting's ``axis_name``); the gradients are expected averaged
        over it already. Without it, per-device losses make replicas decide apart, which
        ``shard_map`` refuses at trace time.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ApplyIfFiniteState`` (``notfinite_count``, ``last_finite``, ``total_notfinite``,
      ``inner_state``), as ``optax.apply_if_finite``'s.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import adaptive_optax as ao
      >>> tx = ao.apply_if_finite(optax.adam(0.1))
      >>> params = jnp.ones(2)
      >>> opt_state = tx.init(params)
      >>> updates, new_state = tx.update(jnp.ones(2), opt_state, params, losses={"a": jnp.nan})
      >>> updates.tolist(), int(new_state.total_notfinite)
      ([0.0, 0.0], 1)
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> optax.ApplyIfFiniteState:
        inner_state = inner.init(params)
        _refuse_around_weight_gradients(inner_state)
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner_state,
        )

    def update_fn(
        updates: PyTree,
        state: optax.ApplyIfFiniteState,
        params: PyTree | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, optax.ApplyIfFiniteState]:
        _refuse_around_weight_gradients(state.inner_state)
        finite = _all_finite(extra_args.get("losses"))
        if axis_name is not None:  # a non-finite loss on any replica skips the step on all
            finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
        finite = finite & _all_finite(updates)
        new_updates, inner_state = jax.lax.cond(
            finite,
            lambda: inner.update(updates, state.inner_state, params, **extra_args),
            lambda: (optax.tree.zeros_like(updates), state.inner_state),
        )
        count = optax.safe_increment(state.notfinite_count)
        total = optax.safe_increment(state.total_notfinite)
        return new_updates, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(finite, jnp.zeros_like(count), count),
            last_finite=finite,
            total_notfinite=jnp.where(finite, state.total_notfinite, total),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _refuse_around_weight_gradients(inner_state: PyTree) -> None:
    """Raises ``ValueError`` when the wrapped optimizer holds a :func:`weight_gradients`."""
    nodes = jax.tree.leaves(inner_state, is_leaf=lambda x: isinstance(x, WeightGradientsState))
    if any(isinstance(node, WeightGradientsState) for node in nodes):
        raise ValueError(
            "ao.apply_if_finite is wrapped around ao.weight_gradients: its skipped branch "
            "would return the per-term gradients' zeros where the parameters' updates belong. "
            "Put it after weight_gradients, around the optimizer: optax.chain("
            "ao.weight_gradients(w), ao.apply_if_finite(optax.adam(1e-3)))"
        )


def _refuse_inside(wrapper: type, name: str) -> None:
    """Raises ``ValueError`` when :func:`weight_gradients`' ``init`` is called from the
    ``init`` of an instance of ``wrapper`` (a few frames up: through ``optax.chain``).

    Such a wrapper handles the updates it is given as parameter-shaped, and per-term gradients
    are not: it would fail later with a raw pytree error that names neither.
    """
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return
        if isinstance(frame.f_locals.get("self"), wrapper):
            raise ValueError(
                f"{name} is wrapped around ao.weight_gradients: it would take the per-term "
                "gradients for parameter-shaped updates. Put it after weight_gradients, "
                f"inside the chain: optax.chain(ao.weight_gradients(w), {name}(...))"
            )
        frame = frame.f_back


def _check_term_grads(term_grads: list[PyTree], names: tuple[str, ...], params: PyTree) -> None:
    """Raises ``ValueError`` naming the term whose gradient is not shaped like the others'
    (or like ``params``), with the leaves it lacks or has in excess."""
    structures = [jax.tree.structure(g) for g in term_grads]
    model = params
    if params is None or jax.tree.structure(params) not in structures:
        # no params, or params of another kind (an nnx.State): the terms' majority is the model
        model = term_grads[structures.index(max(structures, key=structures.count))]
    reference = jax.tree.structure(model)
    for name, grads, structure in zip(names, term_grads, structures, strict=True):
        if structure == reference:
            continue
        leaves, expected = _leaf_paths(grads), _leaf_paths(model)
        detail = (
            ", ".join(
                part
                for part in (
                    f"it lacks {sorted(expected - leaves)}" if expected - leaves else "",
                    f"it has extra {sorted(leaves - expected)}" if leaves - expected else "",
                )
                if part
            )
            or f"its structure is {structure}, the parameters' {reference}"
        )
        raise ValueError(
            f"weight_gradients: the gradient of loss term {name!r} is not shaped like the "
            f"parameters: {detail}. Each term's gradient must be a pytree shaped like params "
            "(what ao.per_term_grads gives: a term that does not depend on a parameter gets "
            "zeros there, not a missing leaf)"
        )


def _leaf_paths(tree: PyTree) -> set[str]:
    """The key paths of the leaves of ``tree``, as ``"w"`` or ``"encoder/kernel"``."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _all_finite(tree: PyTree) -> jax.Array:
    """Whether every leaf of ``tree`` is finite (True for an empty tree or None)."""
    finite = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    return finite


def _key(entry: Any) -> Any:
    """The dict key, index or attribute name of one key-path entry."""
    for field in ("key", "idx", "name"):
        if hasattr(entry, field):
            return getattr(entry, field)
    raise TypeError(f"unsupported key path entry {entry!r}")


def _split_terms(updates: PyTree, weights: PyTree) -> list[PyTree]:
    """One gradient pytree per term, in the leaf order of ``weights``.

    Accepts any mapping type at the term level (a ``flax.nnx.State`` from ``nnx.Optimizer``).

    Raises:
      ValueError: if ``updates`` is not keyed like the base weights.
    """
    treedef = jax.tree.structure(weights)
    try:
        return treedef.flatten_up_to(updates)
    except (ValueError, TypeError):
        pass
    names = term_names(weights)
    message = (
        f"updates must be per-term gradients keyed like the base weights, terms {names} "
        f"(what ao.per_term_grads of a dict-valued loss function gives), got "
        f"{jax.tree.structure(updates)}"
    )
    terms = []
    for path, _ in jax.tree_util.tree_flatten_with_path(weights)[0]:
        node = updates
        for entry in path:
            try:
                node = node[_key(entry)]
            except (KeyError, IndexError, TypeError) as error:
                raise ValueError(message) from error
        terms.append(node)
    if sum(len(jax.tree.leaves(t)) for t in terms) != len(jax.tree.leaves(updates)):
        raise ValueError(message)
    return terms


def apply_gradients(train_state: Any, *, grads: PyTree, **extra_args: Any) -> Any:
    """``train_state.apply_gradients(grads=grads)`` that forwards extra args to ``tx.update``.

    Flax linen's ``TrainState.apply_gradients`` sends its keyword arguments to ``.replace``,
    not to ``tx.update``, so ``losses=`` cannot reach :func:`weight_gradients` through it.
    This function does the same update with the extra arguments passed on. The weighting state
    lives in ``train_state.opt_state``; ``adaptive_optax.metrics(train_state)`` reads it.

    Args:
      train_state: a ``flax.training.train_state.TrainState``, or any object with ``step``,
        ``params``, ``tx``, ``opt_state`` and ``replace``.
      grads: the gradients ``tx`` expects (per-term gradients for :func:`weight_gradients`).
      **extra_args: passed to ``tx.update``, e.g. ``losses=losses``.

    Returns:
      The train state with ``step`` incremented, ``params`` and ``opt_state`` updated.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax.training import train_state
      >>> import adaptive_optax as ao
      >>> tx = optax.chain(ao.weight_gradients(ao.stable_weights({"a": 1.0, "b": 2.0})),
      ...                  optax.sgd(0.1))
      >>> state = train_state.TrainState.create(apply_fn=None, params=jnp.ones(2), tx=tx)
      >>> losses_fn = lambda p: {"a": jnp.sum(p**2), "b": jnp.sum((p - 1) ** 2)}
      >>> losses, grads = ao.per_term_grads(losses_fn)(state.params)
      >>> state = ao.apply_gradients(state, grads=grads, losses=losses)
      >>> int(state.step), int(ao.metrics(state)["step"])
      (1, 1)
    """
    updates, opt_state = train_state.tx.update(
        grads, train_state.opt_state, train_state.params, **extra_args
    )
    return train_state.replace(
        step=train_state.step + 1,
        params=optax.apply_updates(train_state.params, updates),
        opt_state=opt_state,
    )
