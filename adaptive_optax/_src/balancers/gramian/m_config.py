"""M-ConFIG: ConFIG's momentum variant, one term's gradient per step; a gradient transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.balancers.gramian.config import config_from_gramian
from adaptive_optax._src.base import PyTree
from adaptive_optax._src.statistics import at_least_float32

#: The authors' defaults (``PseudoMomentumOperator``).
B1 = 0.9
B2 = 0.999
EPS = 1e-8


class MConfigState(NamedTuple):
    """State of :func:`m_config`.

    Attributes:
      momenta: the first moments of the terms' gradients: the parameters' structure, each leaf
        with a leading axis of length ``num_terms`` (``m_i``).
      counts: ``(num_terms,)`` int32, the gradients each term has given (its ``m_i``'s
        bias-correction count).
      count: int32, the steps since every term had given a gradient (the authors' ``t``).
      direction_momentum: the parameters' structure: the ConFIG direction of the last step times
        ``1 - b1**count`` (the authors' ``fake_m``, the momentum that direction stands for).
      second_moment: the parameters' structure: the running mean of the squared pseudo-gradient
        (the authors' ``s``).
      skipped: int32, the steps skipped for a non-finite gradient or loss, or an index out of
        range.
    """

    momenta: PyTree
    counts: chex.Array
    count: chex.Array
    direction_momentum: PyTree
    second_moment: PyTree
    skipped: chex.Array


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(jnp.asarray(x))) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _momenta_gramian(momenta: PyTree, num_terms: int) -> jax.Array:
    """``M M^T`` of the ``(num_terms, n)`` matrix of the flattened momenta, leaf by leaf (no
    concatenated copy), in float32 at least."""
    dtypes = [at_least_float32(jnp.asarray(leaf).dtype) for leaf in jax.tree.leaves(momenta)]
    widest = max(dtypes, key=lambda dtype: jnp.dtype(dtype).itemsize, default=jnp.float32)
    gramian = jnp.zeros((num_terms, num_terms), widest)
    for leaf in jax.tree.leaves(momenta):
        rows = jnp.reshape(leaf, (num_terms, -1)).astype(gramian.dtype)
        gramian = gramian + rows @ rows.T
    return gramian


def m_config(
    num_terms: int, *, b1: float = B1, b2: float = B2, eps: float = EPS
) -> optax.GradientTransformationExtraArgs:
    """M-ConFIG: ConFIG's momentum variant, fed one term's gradient per step.

    Each step computes the gradient of one term ``i`` only (one backward pass, where ConFIG
    needs ``K``), chosen in turn (``i = step % K`` in the authors' trainer), and passes it with
    ``index=i``. The transform keeps a first moment per term and returns the ConFIG direction
    of the bias-corrected moments, scaled elementwise as Adam scales a gradient, by a second
    moment of the pseudo-gradient that direction stands for (the authors'
    ``PseudoMomentumOperator`` with ``ConFIGOperator``)::

        m_i <- b1 m_i + (1 - b1) g_i                  (the term given this step only)
        c_i <- c_i + 1;  m_hat_i = m_i / (1 - b1**c_i)
        d = ConFIG(m_hat_1, ..., m_hat_K)             (ao.gramian.config of their Gramian)
        t <- t + 1;  f = d (1 - b1**t);  p = (f - b1 f_prev) / (1 - b1)
        s <- b2 s + (1 - b2) p**2;  update = d / (sqrt(s / (1 - b2**t)) + eps)

    Until every term has given a gradient, the moments fill and the update is zero (``t``,
    ``s`` and ``f`` wait), as in the authors' code. The update is Adam-scaled already: follow
    it with a plain step, ``optax.sgd(learning_rate)``, as the authors do (they advise against
    Adam after it).

    The direction is formed from the ``K x K`` Gramian of the moments
    (:func:`adaptive_optax.gramian.config`), without stacking them into one matrix; the
    state holds ``K + 2`` parameter-sized buffers. Departure: for two terms the authors take
    ``ConFIG_update_double`` (a closed form), which equals the general solution for two
    gradients that are neither parallel nor zero; where they are (two parallel moments),
    ``ConFIG_update_double`` divides 0 by 0 and here the direction is the general one
    (TorchJD's).

    The guards: no input makes the state non-finite. A step whose gradient or ``losses=``
    (when passed) is not finite, or whose ``index`` is outside ``[0, num_terms)``, changes
    nothing: the update is zero and ``skipped`` counts it. A step whose result would not be
    finite (a gradient so large that its square overflows) is skipped the same way. The guards
    of :func:`adaptive_optax.guarded` act on loss weights, which M-ConFIG has none of.
    Under data parallelism, average the term's gradient over the devices before this
    transform, as for any optimizer.

    Args:
      num_terms: ``K``, the number of loss terms (a Python int ``>= 1``).
      b1: decay of the per-term first moments, in ``[0, 1)``.
      b2: decay of the second moment, in ``[0, 1)``.
      eps: added to the root of the second moment (``>= 0``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grad, state, params=None,
      *, index, losses=None)`` takes one term's gradient (the parameters' structure) and that
      term's index (a Python or traced integer), and whose state is a :class:`MConfigState`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import adaptive_optax as ao
      >>> terms = (  # two losses whose minima, (1, 0) and (0, 1), conflict
      ...     lambda p: (p[0] - 1.0) ** 2 + p[1] ** 2,
      ...     lambda p: p[0] ** 2 + (p[1] - 1.0) ** 2,
      ... )
      >>> tx = optax.chain(ao.m_config(len(terms)), optax.sgd(1e-2))
      >>> params = jnp.array([2.0, 1.5])
      >>> opt_state = tx.init(params)
      >>> @jax.jit
      ... def step(params, opt_state, index):
      ...     # one backward pass: the gradient of the term chosen this step only
      ...     grad = jax.grad(lambda p: jax.lax.switch(index, terms, p))(params)
      ...     updates, opt_state = tx.update(grad, opt_state, params, index=index)
      ...     return optax.apply_updates(params, updates), opt_state
      >>> for t in range(400):
      ...     params, opt_state = step(params, opt_state, t % len(terms))
      >>> round(float(params[0] + params[1]), 1)  # on the Pareto front x + y = 1
      1.0

    References:
      Liu, Chu, Xie, Scholz, Zhang & Thuerey, *ConFIG: Towards Conflict-free Training of
      Physics Informed Neural Networks*, ICLR 2025 (https://arxiv.org/abs/2408.11104),
      Section 3.3; the authors' ``conflictfree.momentum_operator.PseudoMomentumOperator``
      (https://github.com/tum-pbs/ConFIG).
    """
    validation.check_number("num_terms", num_terms, low=1, integer=True, static=True)
    if isinstance(num_terms, bool) or not isinstance(num_terms, int):
        raise ValueError(f"num_terms must be an int (the number of loss terms), got {num_terms!r}")
    validation.check_number("b1", b1, low=0, high=1, high_open=True)
    validation.check_number("b2", b2, low=0, high=1, high_open=True)
    validation.check_number("eps", eps, low=0)
    k = num_terms

    def init_fn(params: PyTree) -> MConfigState:
        def zeros(x):
            return jnp.zeros_like(jnp.asarray(x))

        return MConfigState(
            momenta=jax.tree.map(
                lambda x: jnp.zeros((k, *jnp.shape(x)), jnp.result_type(x)), params
            ),
            counts=jnp.zeros((k,), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            direction_momentum=jax.tree.map(zeros, params),
            second_moment=jax.tree.map(zeros, params),
            skipped=jnp.zeros((), jnp.int32),
        )

    def update_fn(
        updates: PyTree,
        state: MConfigState,
        params: PyTree | None = None,
        *,
        index: Any = None,
        **extra_args: Any,
    ) -> tuple[PyTree, MConfigState]:
        del params
        if index is None:
            raise ValueError(
                "m_config needs the index of the term whose gradient this step holds: call "
                "tx.update(grad, opt_state, params, index=i), with i = step % num_terms"
            )
        index = jnp.asarray(index)
        if index.shape != () or not jnp.issubdtype(index.dtype, jnp.integer):
            raise ValueError(
                f"index must be one integer (the term's index), got shape {index.shape} "
                f"and dtype {index.dtype}"
            )
        index = index.astype(jnp.int32)
        finite = _all_finite(updates) & (index >= 0) & (index < k)
        if extra_args.get("losses") is not None:
            finite = finite & _all_finite(extra_args["losses"])
        chosen = jnp.arange(k, dtype=jnp.int32) == index

        def moment(m, g):
            mask = jnp.reshape(chosen, (k,) + (1,) * jnp.ndim(g))
            new = b1 * m + (1 - b1) * jnp.asarray(g, m.dtype)[None]
            return jnp.where(mask, new, m)

        momenta = jax.tree.map(moment, state.momenta, updates)
        counts = state.counts + chosen.astype(jnp.int32)
        ready = jnp.all(counts > 0)
        count = state.count + ready.astype(jnp.int32)

        # The ConFIG direction of the bias-corrected moments, from their Gramian.
        gramian = _momenta_gramian(momenta, k)
        dtype = gramian.dtype
        seen = counts > 0
        correction = jnp.where(
            seen, 1.0 / (1.0 - b1 ** jnp.where(seen, counts, 1).astype(dtype)), 0.0
        )
        weights = config_from_gramian(correction[:, None] * gramian * correction[None, :])
        coefficients = weights * correction
        direction = jax.tree.map(
            lambda m: jnp.tensordot(coefficients.astype(m.dtype), m, axes=1), momenta
        )

        # The pseudo-gradient the direction stands for, and its second moment.
        t = jnp.maximum(count, 1).astype(dtype)
        momentum = jax.tree.map(lambda d: d * (1 - b1**t).astype(d.dtype), direction)
        second = jax.tree.map(
            lambda f, f_prev, s: b2 * s + (1 - b2) * ((f - b1 * f_prev) / (1 - b1)) ** 2,
            momentum,
            state.direction_momentum,
            state.second_moment,
        )
        out = jax.tree.map(
            lambda d, s: d / (jnp.sqrt(s / (1 - b2**t).astype(s.dtype)) + eps), direction, second
        )
        moved = MConfigState(momenta, counts, count, momentum, second, state.skipped)
        waiting = MConfigState(
            momenta, counts, state.count, state.direction_momentum, state.second_moment,
            state.skipped,
        )  # fmt: skip
        new_state = jax.tree.map(lambda a, b: jnp.where(ready, a, b), moved, waiting)
        out = jax.tree.map(lambda u: jnp.where(ready, u, jnp.zeros_like(u)), out)
        finite = finite & _all_finite(out) & _all_finite(new_state)
        skipped = state._replace(skipped=optax.safe_increment(state.skipped))
        new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_state, skipped)
        out = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), out)
        out = jax.tree.map(lambda u, g: jnp.asarray(u, jnp.result_type(g)), out, updates)
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
