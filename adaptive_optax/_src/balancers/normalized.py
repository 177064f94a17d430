"""Scale normalization: each term's weight divided by its loss scale, as GradNorm's L_i / L_i(0)."""

from __future__ import annotations

from typing import Any

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


def base_rule() -> Rule:
    """Proposes the base weights it is given: the rule of :func:`normalized_weights`.

    Under ``normalize=`` of :func:`adaptive_optax.guarded` the base a rule is given is the
    normalized one, so this rule is the scale normalization alone; without it, it proposes the
    base weights (fixed weights, with the guards' spike cuts and slow start).

    Returns:
      A stateless :class:`adaptive_optax.Rule`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.base_rule(), {"a": 1.0}, spike_threshold=3.0)
    """

    def propose(signals: Signals, weights, base_weights, rule_state):
        del signals, weights
        return base_weights, rule_state

    return Rule(init=lambda base_weights: (), propose=propose)


@preset
def normalized_weights(
    base_weights: PyTree, *, reference: str = "first_loss", **guards: Any
) -> LossWeighting:
    """Weights ``b_i * c / L_i``: every term brought to a common scale, their total kept.

    ``L_i`` is the term's first finite loss (``reference="first_loss"``, GradNorm's ``L_i(0)``) or
    the running mean of its losses (``"running"``), and ``c`` keeps the sum of the base weights:
    ``guarded(base_rule(), base_weights, normalize=reference)``, bare. To put another rule on the
    normalized scale, pass ``normalize=`` to :func:`adaptive_optax.guarded` or to its preset.
    Recommended guards: ``ao.RECOMMENDED["normalized"]`` (none: run it bare).

    Args:
      reference: ``"first_loss"`` or ``"running"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.normalized_weights({"a": 1.0, "b": 1.0})
      >>> weights, state = weighting.update({"a": 1000.0, "b": 1.0}, weighting.init())
      >>> round(float(weights["a"]), 5), round(float(weights["b"]), 5)  # 2 * (1e-3, 1) / 1.001
      (0.002, 1.998)

    References:
      Chen et al., "GradNorm", ICML 2018 (arXiv:1711.02257): the loss ratio ``L_i / L_i(0)``.
    """
    return bare(base_rule(), base_weights, dict(normalize=reference) | guards)
