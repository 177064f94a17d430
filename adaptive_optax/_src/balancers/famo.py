"""FAMO, fast adaptive multitask optimization (Liu, Feng, Stone & Liu, 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.statistics import count_where
from adaptive_optax._src.terms import terms_of

# torch.optim.Adam's defaults, which the authors' code uses for the logits
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8


class FAMOState(NamedTuple):
    """State of :func:`famo_rule`: the logits and their Adam optimizer.

    Attributes:
      logits: ``(n,)`` the task logits ``xi`` (0 at first); ``softmax(xi)`` are FAMO's ``z``.
      adam_mu: ``(n,)`` Adam's first moment of the logits' gradient.
      adam_nu: ``(n,)`` Adam's second moment.
      adam_count: int32 ``(n,)`` Adam steps taken on each logit (a term with a non-finite loss
        skips its step, so the bias correction is per term).
    """

    logits: chex.Array
    adam_mu: chex.Array
    adam_nu: chex.Array
    adam_count: chex.Array


def famo_rule(
    *,
    lr: float = 0.025,
    weight_decay: float = 1e-3,
    min_losses: float | Sequence[float] = 0.0,
    eps: float = 1e-8,
) -> Rule:
    """FAMO's weights: softmax logits learned so that every loss falls at the same log rate.

    With ``D_i = max(L_i - m_i, 0) + eps`` (``m_i`` the loss floor ``min_losses``), logits
    ``xi`` and ``z = softmax(xi)``, FAMO (the authors' ``famo.py``) minimizes
    ``sum_i z_i log D_i / c`` with ``c = sum_j z_j / D_j`` held constant; its gradient with
    respect to the model is that of the weighted sum ``sum_i w_i L_i`` with::

        w_i = (z_i / D_i) / sum_j (z_j / D_j) = softmax(xi - log D)_i

    which is what this rule proposes, times ``n * base_i`` (so that equal losses and logits
    give the base weights; the authors' weights sum to 1: a constant factor ``n`` on the total
    loss, or base weights of ``1 / n`` for their scale). After each model step, the logits take
    one Adam step (``torch.optim.Adam`` with ``lr``, L2 ``weight_decay`` added to the gradient,
    betas 0.9 / 0.999, eps 1e-8, as the authors' code) on the gradient::

        delta_i = log D_i(before the step) - log D_i(after the step)
        g = J_softmax(xi)^T delta = z * (delta - sum_j z_j delta_j)

    The losses after the step: the authors evaluate the losses again on the same batch after
    the model step (one extra forward pass). This rule uses the next step's losses instead:
    at each ``update``, ``delta`` compares this step's losses with the previous step's
    (``signals.previous_loss``, the shared loss history), so ``delta`` mixes the effect of the
    step with the change of batch, and it rates the step taken with the weights of one update
    before (the logits move on in between). Likewise the weights of the next step divide by
    this step's ``D``, where the authors divide by the ``D`` of the step they weight. No extra
    forward pass is needed. The first ``update`` has no previous loss: no Adam step, and the
    weights are ``n softmax(-log D)``.

    ``min_losses`` is the floor FAMO takes the log above (the authors' ``set_min_losses``,
    0 by default): set it to a lower bound of each loss when losses can be zero or negative
    (a log-likelihood, a loss with a constant offset). A loss at or below its floor counts as
    ``D = eps`` (the authors' code gives NaN below the floor), which gives that term the
    largest weight and no ``delta`` beyond ``log eps``. A term whose loss is not finite keeps
    its logit and Adam moments; it shares the softmax through its last finite loss.

    Recommended guards (``ao.RECOMMENDED["famo"]``): bounds, since a loss near its floor takes
    almost all the weight.

    Args:
      lr: Adam's step size on the logits (> 0): the authors' ``w_lr``, 0.025.
      weight_decay: L2 regularization of the logits (>= 0): the authors' ``gamma``. 1e-3 as
        in three of their four ``run.sh`` scripts, LibMTL and TorchJD; their ``famo.py`` and
        command line default to 0.01, their ``weight_methods.py`` to 1e-5, their toy to 0.
      min_losses: the floor ``m_i``: one finite number, or one per term in the leaf order of
        the base weights (:func:`adaptive_optax.famo_weights` also takes a pytree).
      eps: added to ``L - m`` before the log, as the authors' 1e-8 (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` with state ``FAMOState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.famo_rule(min_losses=0.0), {"seg": 1.0, "depth": 1.0})

    References:
      Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
      (arXiv:2306.03792); code: github.com/Cranial-XIX/FAMO (``famo.py``).
    """
    lr = validation.check_number("lr", lr, low=0, low_open=True)
    weight_decay = validation.check_number(
        "weight_decay", weight_decay, low=0, high=np.inf, high_open=True
    )
    eps = validation.check_number("eps", eps, low=0, low_open=True, high=np.inf, high_open=True)
    min_losses = validation.check_number(
        "min_losses",
        min_losses,
        low=-np.inf,
        high=np.inf,
        low_open=True,
        high_open=True,
        per_term=True,
        static=True,
    )
    floors = np.ravel(np.asarray(min_losses, np.float64))

    def init(base_weights: chex.Array) -> FAMOState:
        n = base_weights.shape[0]
        if floors.size not in (1, n):
            raise ValueError(
                f"min_losses must be one number or one per term ({n}), got {floors.size}: "
                f"{min_losses!r}"
            )
        zeros = jnp.zeros(base_weights.shape, float_dtype(base_weights))
        return FAMOState(zeros, zeros, zeros, jnp.zeros(base_weights.shape, jnp.int32))

    def propose(signals: Signals, weights, base_weights, state: FAMOState):
        xi = state.logits
        dtype = xi.dtype
        floor = jnp.broadcast_to(jnp.asarray(floors, dtype), xi.shape)
        big = jnp.finfo(dtype).max

        def log_distance(loss):
            distance = jnp.clip(loss.astype(dtype) - floor, 0.0, big)  # +-inf: overflow
            return jnp.log(distance + eps)

        seen = signals.loss_count > 0
        log_d = log_distance(signals.losses)
        log_previous = log_distance(signals.previous_loss)
        known = signals.finite & seen  # a loss before and after a step
        delta = jnp.where(known, log_previous - log_d, 0.0)

        z = jax.nn.softmax(xi)
        gradient = z * (delta - jnp.sum(z * delta)) + weight_decay * xi
        count = count_where(state.adam_count, known)
        n = count.astype(dtype)
        mu = ADAM_B1 * state.adam_mu + (1 - ADAM_B1) * gradient
        nu = ADAM_B2 * state.adam_nu + (1 - ADAM_B2) * gradient**2
        n = jnp.maximum(n, 1.0)
        mu_hat = mu / (1 - ADAM_B1**n)
        nu_hat = nu / (1 - ADAM_B2**n)
        stepped = xi - lr * mu_hat / (jnp.sqrt(nu_hat) + ADAM_EPS)
        new_state = FAMOState(
            logits=jnp.where(known, stepped, xi),
            adam_mu=jnp.where(known, mu, state.adam_mu),
            adam_nu=jnp.where(known, nu, state.adam_nu),
            adam_count=count,
        )

        # The weights of the next step: softmax(xi - log D), over the terms with a loss.
        has_loss = signals.finite | seen
        current = jnp.where(signals.finite, log_d, log_previous)
        x = jnp.where(has_loss, new_state.logits - current, -jnp.inf)
        share = jax.nn.softmax(jnp.where(jnp.any(has_loss), x, 0.0))
        n_terms = jnp.sum(has_loss).astype(dtype)
        proposal = n_terms * share * base_weights.astype(dtype)
        proposal = jnp.where(has_loss, proposal, weights.astype(dtype))
        return proposal, new_state

    return Rule(init=init, propose=propose)


@preset
def famo_weights(
    base_weights: PyTree,
    *,
    lr: float = 0.025,
    weight_decay: float = 1e-3,
    min_losses: PyTree | float = 0.0,
    eps: float = 1e-8,
    **guards: Any,
) -> LossWeighting:
    """FAMO (Liu et al. 2023) as a weighting, its logits' Adam in the state.

    See :func:`adaptive_optax.famo_rule` for the formula and for how the losses after a step are
    taken from the next step; recommended guards: ``ao.RECOMMENDED["famo"]``.

    Args:
      lr: Adam's step size on the logits (the authors' ``w_lr``).
      weight_decay: L2 regularization of the logits (the authors' ``gamma``).
      min_losses: the loss floor FAMO takes the log above: one number, or a pytree of numbers
        shaped like ``base_weights``.
      eps: added to ``L - min_losses`` before the log.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.famo_weights({"a": 1.0, "b": 1.0})
      >>> state = weighting.init()
      >>> weights, state = weighting.update({"a": 1.0, "b": 3.0}, state)
      >>> round(float(weights["a"]), 4)  # 2 * (1 / 1) / (1 / 1 + 1 / 3)
      1.5
      >>> weights, state = weighting.update({"a": 0.5, "b": 3.0}, state)
      >>> float(state.rule_state.logits[0]) < 0  # "a" fell faster: its logit goes down
      True
      >>> safe = ao.famo_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["famo"])

    References:
      Liu, Feng, Stone & Liu, NeurIPS 2023 (arXiv:2306.03792).
    """
    rule = famo_rule(
        lr=lr,
        weight_decay=weight_decay,
        min_losses=_per_term_floors(base_weights, min_losses),
        eps=eps,
    )
    return bare(rule, base_weights, guards)


def _per_term_floors(base_weights: PyTree, min_losses: PyTree | float) -> float | list[float]:
    """``min_losses`` as one number or a list in the leaf order of the base weights."""
    min_losses = validation.check_number(
        "min_losses",
        min_losses,
        low=-np.inf,
        high=np.inf,
        low_open=True,
        high_open=True,
        per_term=True,
        static=True,
    )
    terms = terms_of(base_weights)
    structure = jax.tree.structure(min_losses)
    if jax.tree_util.treedef_is_leaf(structure) and structure != terms.treedef:
        if np.ndim(min_losses) != 0:
            raise ValueError(
                "min_losses must be one number or a pytree of numbers shaped like the base "
                f"weights (terms {list(terms.names)}), got shape {np.shape(min_losses)}"
            )
        return float(min_losses)
    terms.check_structure(min_losses, "min_losses")
    return [float(leaf) for leaf in jax.tree.leaves(min_losses)]
