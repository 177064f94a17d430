"""A grid of fixed loss weights, stacked for ``jax.vmap``: ratio and scale apart."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any


def weight_grid(ratios: Sequence[PyTree], scales: Sequence[float] = (1.0,)) -> PyTree:
    """Every ``scale * ratio`` of a grid of weight ratios and scales, stacked on a leading axis.

    A fixed weighted sum has a direction (the ratios of its weights) and a size (their total).
    Under SGD the size is also a learning rate; under Adam it hardly matters. Sweeping them
    apart (``w = s * r`` with ``sum(r) = 1``) tells which one a problem is sensitive to. Each
    ratio pytree is normalized to sum 1; the result has the structure of the ratios, each leaf
    a ``(len(ratios) * len(scales),)`` float32 array (ratio-major: all scales of the first
    ratio, then the next), ready for ``jax.vmap`` over weight settings.

    Args:
      ratios: pytrees of the same structure (e.g. dicts keyed by loss term) of non-negative
        finite floats, each with a positive sum.
      scales: positive finite totals of the weights.

    Returns:
      A pytree of the ratios' structure whose leaves are the stacked weights.

    Raises:
      ValueError: when ``ratios`` or ``scales`` is empty, a ratio has another structure, a
        negative or non-finite entry or a zero sum, or a scale is not positive and finite.

    Examples:
      >>> import adaptive_optax as ao
      >>> grid = ao.weight_grid([{"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 1.0}], scales=(1.0, 2.0))
      >>> [float(x) for x in grid["a"]]
      [0.5, 1.0, 0.75, 1.5]
      >>> [float(x) for x in grid["b"]]
      [0.5, 1.0, 0.25, 0.5]

    References:
      Gama & Grassi (2025), "Unitary scalarization or smarter optimizers?" (scale and ratio
      of adaptive weights apart); Kurin et al. (NeurIPS 2022), "In Defense of the Unitary
      Scalarization for Deep Multi-Task Learning" (tuned weighted sums as the baseline).
    """
    ratios, scales = list(ratios), [float(s) for s in scales]
    if not ratios:
        raise ValueError("weight_grid needs at least one ratio, got ratios=[]")
    if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"scales must be positive and finite, got scales={scales}")
    treedef = jax.tree.structure(ratios[0])
    rows = []
    for ratio in ratios:
        if jax.tree.structure(ratio) != treedef:
            raise ValueError(
                f"every ratio must have the structure {treedef}, got {jax.tree.structure(ratio)}"
            )
        r = np.asarray([float(x) for x in jax.tree.leaves(ratio)], np.float64)
        if not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
            raise ValueError(
                f"a ratio must be non-negative and finite with a positive sum, got {ratio}"
            )
        rows.append(r / r.sum())
    stacked = np.asarray([s * r for r, s in itertools.product(rows, scales)], np.float32)
    return jax.tree.unflatten(treedef, list(stacked.T))
