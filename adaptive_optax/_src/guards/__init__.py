"""The guards: :func:`guarded` puts any rule under them; one module per guard.

Gates (whether a proposal may land): :mod:`.warmup`, :mod:`.cooling`, :mod:`.stability`.
Limits (how much of it lands): :mod:`.ratios`, :mod:`.change`, :mod:`.bounds`, :mod:`.ramp`.
On what landed: :mod:`.rollback`, and the fast :mod:`.spike` guard. Always on:
:mod:`.always`. Not guards: :mod:`.base_weights` (schedules and normalization change the base)
and ``adaptive_optax._src.combinators`` (``every_k`` changes when the rule proposes).
"""

from adaptive_optax._src.guards.core import RELAXED as RELAXED
from adaptive_optax._src.guards.core import TABLE as TABLE
from adaptive_optax._src.guards.core import checked_guards as checked_guards
from adaptive_optax._src.guards.core import guarded as guarded
from adaptive_optax._src.guards.decision import Decision as Decision

__all__ = ["RELAXED", "TABLE", "Decision", "checked_guards", "guarded"]
