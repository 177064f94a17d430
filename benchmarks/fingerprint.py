"""Behavioural fingerprints of the suite's arms: what a row of results was measured with.

A source hash changes with every refactor; what a row depends on is the arm's behaviour. The
fingerprint trains the arm's weighting (through :func:`benchmarks.harness.trainer`, so per-term
gradients and every guard take their real path) for :data:`STEPS` jitted steps on a fixed
synthetic three-term problem, and hashes the weight trajectory (rounded to six significant
digits; for an arm without weights, :class:`benchmarks.harness.OneTerm`, the metric at each
checkpoint). Two arms with the same fingerprint behave the same; a committed row whose fingerprint
differs from the current code's is stale (``tests/test_results_invariants.py``), and a
``--merge`` refuses it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import problems

STEPS = 3000  # past every warmup and slow start, and long enough to reach the bounds
DIGITS = 6


def synthetic() -> problems.Problem:
    """A three-term problem whose losses differ in scale, move with the step and conflict."""
    targets = jnp.asarray([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 2.0], [0.0, 0.0, -2.0, 1.0]])
    scales = jnp.asarray([1.0, 30.0, 0.05])

    def losses(params, key, step):
        wobble = 1.0 + 0.3 * jnp.sin(0.7 * step) + 0.05 * jax.random.normal(key, ())
        terms = scales * jnp.sum((params["x"][None, :] - targets) ** 2, axis=1) * wobble
        return {"a": terms[0], "b": terms[1], "c": terms[2]}

    return problems.Problem(
        name="fingerprint",
        title="fingerprint",
        setting="a synthetic three-term quadratic",
        base={"a": 1.0, "b": 0.5, "c": 2.0},
        init=lambda key: {"x": jax.random.normal(key, (4,))},
        losses=losses,
        metrics=lambda params: {"x": jnp.sum(params["x"] ** 2)},
        optimizer=problems.adam,
        rates=(0.05,),
        ratios=({"a": 1.0, "b": 0.5, "c": 2.0},),
        scales=(1.0,),
        steps=STEPS,
        main="a",
        metric_name="-",
    )


def of(make: Callable[[problems.Problem], Any] | None) -> str:
    """The fingerprint of one arm: ``make`` builds its weighting from a problem (None: fixed).

    Args:
      make: the arm's ``Variant.make``, or None for fixed weights.

    Returns:
      16 hexadecimal digits.
    """
    if make is None:
        return _fixed()
    return _trajectory_hash(make)


@functools.cache
def _fixed() -> str:
    """The fingerprint of fixed weights (computed once a process)."""
    return _trajectory_hash(None)


def _trajectory_hash(make: Callable[[problems.Problem], Any] | None) -> str:
    """Trains the synthetic problem with the arm and hashes its weight trajectory."""
    from benchmarks import harness  # harness imports this module

    problem = synthetic()
    weighting = make(problem) if make is not None else None
    runs = harness.train(problem, weighting, seeds=[0], rates=[0.05], steps=STEPS, trace=True)
    trace = np.asarray(runs.trace[0], np.float64)
    if isinstance(weighting, harness.OneTerm):  # its weights are 1: hash what it trained
        trace = np.asarray(runs.metrics["x"][0], np.float64)
    text = " ".join(np.format_float_scientific(v, precision=DIGITS - 1) for v in trace.ravel())
    text += repr(bool(runs.finished[0]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def of_label(label: str) -> str:
    """The fingerprint of the arm labelled ``label`` in :func:`benchmarks.harness.variants`."""
    from benchmarks import harness

    if label in ("base", "best fixed") or " (" in label:
        return of(None)
    variant = next(v for v in harness.variants() if v.label == label)
    return of(variant.make)
