"""Old public names, kept working: each warns once per call site and calls its new name."""

from __future__ import annotations

import warnings

from adaptive_optax._src.base import PyTree
from adaptive_optax._src.control import distill as _distill


def distilled_weights(tree: PyTree, total: float | None = None) -> PyTree:
    """Deprecated: use :func:`adaptive_optax.distill`, which takes the same arguments.

    The ``_weights`` suffix names the factories of a weighting; this reads a state.
    """
    warnings.warn(
        "adaptive_optax.distilled_weights is deprecated: use adaptive_optax.distill (same "
        "arguments)",
        DeprecationWarning,
        stacklevel=2,
    )
    return _distill(tree, total)
