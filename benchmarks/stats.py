"""The suite's statistics: selection under noise, paired regret with a bootstrap interval, calls.

Every function here reads per-seed final scores (lower is better; a failed run is ``+inf``):

- :func:`select` is the one selection rule of the suite (the fixed grid, every arm's learning
  rate): among the settings whose every calibration run finished with a finite validation
  score, the lowest median; a setting within the noise of that median (one standard error of
  it) and more conservative (smaller learning rate, then smaller scale) wins the tie.
- :func:`paired_regret` is an arm's regret against the tuned fixed weights on the same seeds:
  the median of the per-seed differences, with a 95 % percentile-bootstrap interval over seeds.
- :func:`margin` is the per-problem margin of "as good as the tuned sum", from the tuned arm's
  own seed noise; :func:`call` turns an interval and the margin into a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

BOOTSTRAP = 4000  # resamples of the seeds
CONFIDENCE = 0.95
MEDIAN_EFFICIENCY = math.sqrt(math.pi / 2)  # the standard error of a median over a mean's


class Candidate(NamedTuple):
    """One setting on the calibration seeds.

    Attributes:
      key: what identifies the setting (e.g. a learning rate, or a grid cell and rate).
      scores: its final validation scores, one per calibration seed (``+inf``: failed).
      caution: smaller is more conservative, compared as a tuple (learning rate, scale).
    """

    key: Hashable
    scores: np.ndarray
    caution: tuple[float, ...]


def robust_sigma(scores: np.ndarray) -> float:
    """One run's spread: the normal-consistent median absolute deviation of finite scores."""
    finite = np.asarray(scores, float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return math.inf
    return float(scipy_stats.median_abs_deviation(finite, scale="normal"))


def median_se(scores: np.ndarray) -> float:
    """The standard error of the median of ``scores``: ``sqrt(pi / 2) sigma / sqrt(n)``."""
    return MEDIAN_EFFICIENCY * robust_sigma(scores) / math.sqrt(len(scores))


def complete(candidate: Candidate) -> bool:
    """Whether every calibration run of the setting finished with a finite score."""
    return bool(np.all(np.isfinite(candidate.scores)))


def select(candidates: Sequence[Candidate]) -> tuple[Candidate, str]:
    """The suite's selection rule (the module docstring).

    Args:
      candidates: the settings, each with its calibration scores.

    Returns:
      ``(chosen, how)``: ``how`` is ``"lowest"`` (the lowest median), ``"tie"`` (a more
      conservative setting within one standard error of it) or ``"none finished"`` (no
      setting finished every calibration run: the most conservative one, which a reader must
      read as a failure of the arm).
    """
    finished = [c for c in candidates if complete(c)]
    if not finished:
        return min(candidates, key=lambda c: c.caution), "none finished"
    best = min(finished, key=lambda c: (float(np.median(c.scores)), c.caution))
    bar = float(np.median(best.scores)) + median_se(best.scores)
    close = [c for c in finished if float(np.median(c.scores)) <= bar]
    chosen = min(close, key=lambda c: (c.caution, float(np.median(c.scores))))
    return chosen, "lowest" if chosen is best else "tie"


def differences(arm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-seed ``arm - reference``; a failed run loses to a finished one, two failures tie."""
    arm, reference = np.asarray(arm, float), np.asarray(reference, float)
    both_failed = ~np.isfinite(arm) & ~np.isfinite(reference)
    with np.errstate(invalid="ignore"):
        d = arm - reference
    return np.where(both_failed, 0.0, d)


class Regret(NamedTuple):
    """A paired regret: the median per-seed difference and its bootstrap interval.

    Relative problems divide by the reference's median (``+0.1``: 10 % worse).
    """

    value: float
    low: float
    high: float


def paired_regret(
    arm: np.ndarray, reference: np.ndarray, *, relative: bool, seed: int = 0
) -> Regret:
    """The arm's regret against the reference on the same seeds (module docstring).

    Args:
      arm: the arm's final test scores, one per evaluation seed.
      reference: the reference's, on the same seeds in the same order.
      relative: divide by the reference's median score.
      seed: the bootstrap's generator seed (fixed: the interval is reproducible).

    Returns:
      A :class:`Regret`.
    """
    d = differences(arm, reference)
    scale = float(np.median(reference)) if relative else 1.0
    if not (math.isfinite(scale) and scale > 0):
        return Regret(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    resampled = d[rng.integers(0, d.size, (BOOTSTRAP, d.size))]
    medians = np.median(resampled, axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(medians, [tail, 1 - tail], method="inverted_cdf")
    return Regret(float(np.median(d)) / scale, float(low) / scale, float(high) / scale)


def median_difference(arm: np.ndarray, reference: np.ndarray, *, relative: bool) -> float:
    """:func:`paired_regret`'s value alone (no interval)."""
    scale = float(np.median(reference)) if relative else 1.0
    if not (math.isfinite(scale) and scale > 0):
        return math.nan
    return float(np.median(differences(arm, reference))) / scale


def margin(reference: np.ndarray, *, relative: bool) -> float:
    """The margin of "as good as the tuned sum": the standard error of the tuned arm's median.

    ``sqrt(pi / 2) sigma / sqrt(n)`` with ``sigma`` the normal-consistent median absolute
    deviation of the tuned arm's ``n`` test scores (divided by its median on a relative
    problem): an arm's median that far above the tuned one is within the precision with which
    the tuned arm's own median is known.
    """
    se = median_se(reference)
    return se / float(np.median(reference)) if relative else se


def call(regret: Regret, margin_: float) -> str:
    """``"better"`` (the interval below 0), ``"as good"`` (its upper end below the margin),
    ``"worse"`` (its lower end above the margin) or ``"unclear"``."""
    if regret.high < 0:
        return "better"
    if regret.high < margin_:
        return "as good"
    if regret.low > margin_:
        return "worse"
    return "unclear"
