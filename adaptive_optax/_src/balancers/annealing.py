"""Learning-rate annealing of Wang, Teng & Perdikaris (2021), for physics-informed networks."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, main_index, preset, require
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


def lr_annealing_rule(
    main: int = 0, *, alpha: float = 0.9, interval: int = 1, eps: float = 1e-12
) -> Rule:
    """Weights that bring each term's mean gradient up to the main term's largest gradient.

    Algorithm 1 of the paper: every ``interval`` steps, for each term ``i`` other than the main
    (PDE-residual) term ``r``::

        lambda_hat_i = max_theta |grad_theta L_r| / mean_theta |lambda_i grad_theta L_i|
        lambda_i    <- (1 - alpha) * lambda_i + alpha * lambda_hat_i

    ``lambda_i`` is the term's current weight; the main term keeps its weight (1 in the
    paper; its base weight multiplies its gradient here, so ``w_r max|grad L_r|`` is used).
    The statistics come from the unweighted per-term gradients that
    :func:`adaptive_optax.weight_gradients` computes (``"max_abs"`` of the main term,
    ``"mean_abs"`` of each term), or from ``grad_stats`` given to ``update``. Between updates,
    and when the main term's statistics are not finite, the weights hold.

    Where the paper and the authors' code differ we follow the paper. The code (the
    ``GradientPathologiesPINNs`` scripts) reads the weight matrices only, not the biases: its
    Helmholtz and Klein-Gordon scripts divide the largest absolute gradient over the layers by
    the mean of the layers' mean absolute gradients, and its lid-driven cavity script takes that
    ratio layer by layer and keeps the largest, rather than one ratio over all parameters. It
    updates every 10 iterations and keeps 0.9 of the old value
    (``lambda <- 0.1 lambda_hat + 0.9 lambda``), whereas Algorithm 1 gives ``alpha`` to the new
    estimate. ``interval=10, alpha=0.1`` reproduces the code's schedule; its statistics can be
    given through ``grad_stats`` (``benchmarks/papers.py`` does, for the Helmholtz and
    Klein-Gordon tables).

    Args:
      main: index of the main (residual) term in the order of the weights' leaves.
      alpha: weight of the new estimate in the moving average, in ``(0, 1]``.
      interval: update every ``interval`` steps (at steps 1, 1 + interval, ...), >= 1.
      eps: added to the denominator (>= 0).

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"max_abs"`` and ``"mean_abs"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.lr_annealing_rule(main=1), {"bc": 1.0, "res": 1.0},
      ...                        bounds=None, max_change=0.5)

    References:
      Wang, Teng & Perdikaris, "Understanding and mitigating gradient flow pathologies in
      physics-informed neural networks", SIAM J. Sci. Comput. 43(5), 2021 (arXiv:2001.04536),
      Algorithm 1.
    """
    main = validation.check_number("main", main, low=0, integer=True)
    alpha = validation.check_number("alpha", alpha, low=0, high=1, low_open=True)
    interval = validation.check_number("interval", interval, low=1, integer=True)
    eps = validation.check_number("eps", eps, low=0)
    main = int(main)

    def propose(signals: Signals, weights, base_weights, rule_state):
        del base_weights
        if main >= weights.shape[0]:
            raise ValueError(f"main must index a term (< {weights.shape[0]}), got {main}")
        max_abs = require(signals, "max_abs", "lr_annealing_rule")
        mean_abs = require(signals, "mean_abs", "lr_annealing_rule")
        w = weights.astype(float_dtype(signals.losses))
        estimate = w[main] * max_abs[main] / (w * mean_abs + eps)
        annealed = (1 - alpha) * w + alpha * estimate
        due = ((signals.step - 1) % interval == 0) & signals.finite[main]
        others = jnp.arange(w.shape[0]) != main
        return jnp.where(due & others, annealed, w), rule_state

    return Rule(init=lambda base_weights: (), propose=propose, needs=("max_abs", "mean_abs"))


@preset
def lr_annealing_weights(
    base_weights: PyTree,
    *,
    main: str | int,
    alpha: float = 0.9,
    interval: int = 1,
    eps: float = 1e-12,
    **guards: Any,
) -> LossWeighting:
    """Learning-rate annealing (Wang, Teng & Perdikaris 2021) as a weighting.

    See :func:`adaptive_optax.lr_annealing_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["lr_annealing"]``.

    Args:
      main: the main (PDE-residual) term, by name (``"residual"``) or leaf index.
      alpha: weight of the new estimate in the moving average.
      interval: update every ``interval`` steps.
      eps: added to the denominator.

    Returns:
      A :class:`adaptive_optax.LossWeighting` whose ``update`` needs
      ``grad_stats={"max_abs": ..., "mean_abs": ...}`` per term.

    Raises:
      ValueError: if ``main`` names no term.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.lr_annealing_weights({"bc": 1.0, "res": 1.0}, main="res")
      >>> weights, state = weighting.update(
      ...     {"bc": 0.1, "res": 3.0}, weighting.init(),
      ...     grad_stats={"max_abs": {"bc": 0.1, "res": 5.0},
      ...                 "mean_abs": {"bc": 0.05, "res": 1.0}})
      >>> round(float(weights["bc"]), 3)  # 0.1 * 1 + 0.9 * 5 / 0.05
      90.1
      >>> safe = ao.lr_annealing_weights({"bc": 1.0, "res": 1.0}, main="res",
      ...                                **ao.RECOMMENDED["lr_annealing"])

    References:
      Wang, Teng & Perdikaris, SIAM J. Sci. Comput. 43(5), 2021, Algorithm 1.
    """
    rule = lr_annealing_rule(
        main_index(base_weights, main), alpha=alpha, interval=interval, eps=eps
    )
    return bare(rule, base_weights, guards)
