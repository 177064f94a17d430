"""Guard settings as data: bare, original and recommended, per method.

Each is a read-only mapping of keyword settings of :func:`adaptive_optax.guarded`, to pass to
any preset (``ao.dwa_weights(base, **ao.RECOMMENDED["dwa"])``) or to ``guarded`` itself. The
presets, the balancers guide, the suite and the failure gym read these mappings; the guide's
table of recommended guards is tested against them (``tests/test_recommended.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from adaptive_optax._src.guards import RELAXED

GuardSettings = Mapping[str, Any]

BARE: GuardSettings = MappingProxyType(dict(RELAXED) | dict(bounds=None))
"""Guard settings of a bare preset, every preset's default: every guard relaxed and no bounds.

Only non-finite inputs are still skipped; weights lie in ``[0, inf)``. :data:`RELAXED` with
``bounds=None``.
"""

ORIGINAL: GuardSettings = MappingProxyType(
    dict(
        bounds=(0.4, 2.0),
        max_change=0.05,
        warmup_steps=100,
        cooling_period=50,
        min_stable_steps=10,
        auto_rollback=True,
        spike_threshold=None,
        ramp_steps=0,
        spike_prior=None,
    )
)
"""Guard settings of the original controller: the defaults of :func:`adaptive_optax.guarded`.

Slow, gated moves (``max_change=0.05`` after a warmup of 100 steps, 50 steps apart, after
10 stable steps), bounds of 0.4 to 2 times each base weight, and rollback of an adjustment
that a non-finite input follows; no spike guard and no slow start.
``ao.stable_weights(base, low_ratio=0.9, toward_base=False, **ao.ORIGINAL)`` is the original
controller;
``ao.dwa_weights(base, **ao.ORIGINAL)`` is ``ao.guarded(ao.dwa_rule(), base)``.
"""

# Relative weights (they sum to about n, the number of terms): bounded near the base weight,
# slow moves, and the spike guard, which halves a weight whose loss or gradient norm jumps. It
# also fires on ordinary minibatch outliers: switch it off (spike_threshold=None) when training
# is stable and the losses are noisy (the control of results/failures.md).
_RELATIVE = dict(
    bounds=(0.2, 2.0), max_change=0.1, warmup_steps=100, cooling_period=10, spike_threshold=3.0
)
# Weights of 1 / loss, or a random draw, that can leave the base by orders of magnitude.
_WIDE_BOUNDS = dict(bounds=(0.1, 10.0))

_TABLE: dict[str, dict[str, Any]] = {
    # loss-only balancers
    "dwa": _RELATIVE,
    "softadapt": _RELATIVE,
    "relobralo": _RELATIVE,
    # learned weights that tend to 1 / L: within a factor 10 of the base weight
    "uncertainty": _RELATIVE | _WIDE_BOUNDS,
    "famo": _WIDE_BOUNDS,
    "imtl_l": _WIDE_BOUNDS,
    "gls": _WIDE_BOUNDS,
    "rlw": _WIDE_BOUNDS,
    "stch": _WIDE_BOUNDS,
    "uw_so": {},
    "normalized": {},
    # gradient-norm balancers
    "gradnorm": _RELATIVE,
    # a term whose gradient is 0 is proposed R / eps: slow moves, wide bounds, no spike
    # guard (the original controller's guards with bounds (0.1, 10))
    "encodec": dict(
        bounds=(0.1, 10.0),
        max_change=0.05,
        warmup_steps=100,
        cooling_period=50,
        min_stable_steps=10,
        auto_rollback=True,
    ),
    # the rule needs its weight early: a cap instead of a warmup or change limit, and
    # no spike guard (a jumping boundary loss asks for more weight, not less)
    "lr_annealing": dict(max_weight=1e3, cooling_period=10, auto_rollback=True),
    "metabalance": {},
    # Gramian methods: a change limit, bounds or a gate void the guarantees of the
    # solvers (an aggregate that conflicts with no term); run them bare
    "mgda": {},
    "upgrad": {},
    "dualproj": {},
    "imtl_g": {},
    "aligned_mtl": {},
    "cagrad": {},
    "pcgrad": {},
    "gradvac": {},
    "config": {},
    "nash_mtl": {},
    "fairgrad": {},
    "pcd": {},
}
RECOMMENDED: Mapping[str, GuardSettings] = MappingProxyType(
    {name: MappingProxyType(settings) for name, settings in _TABLE.items()}
)
"""The guards recommended for each preset, by the method's name (its factory without
``_weights``): ``ao.gradnorm_weights(base, **ao.RECOMMENDED["gradnorm"])``.

An empty mapping: run the method bare. The guarded arms of the failure gym
(``python -m benchmarks.failures``) use these settings; what they changed is measured in
``results/failures.md``. Why each method gets its guards: the balancers guide.
"""
