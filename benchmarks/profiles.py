"""The suite's named profiles: what ``python -m benchmarks.report --profile NAME`` runs.

- ``quick``: every problem, tiny (the test command; a few minutes on 2 cores);
- ``committed``: what ``results/`` holds and ``make figures`` regenerates, sized for a 2-core
  machine (under 15 minutes a problem): shortened training, the default controller and the
  methods the choosing page weighs, 5 calibration seeds, 10 or 20 evaluation seeds;
- ``full``: every arm of :data:`benchmarks.harness.ARMS` at each problem's full length;
- ``confirm``: the confirmation tier (:data:`benchmarks.problems.CONFIRMATION`): each problem's
  base weights, the tuned fixed sum with its ratios seeded by the screen's three best, the
  default controller and the screen's three best methods, all chosen from the screen's
  committed ``results/<screen>.json`` by calibration scores only (never its test scores).

Every row of a result records its profile; ``--merge`` keeps only rows of the same profile.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping

import numpy as np

from benchmarks import harness, problems

SCREEN_RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"
"""Where the confirmation tier reads the screen's committed results."""

SCREEN_PICKS = 3
"""How many of the screen's methods, and of its fixed-weight ratios, the confirmation takes."""


def _screen(screen: str, results: pathlib.Path) -> dict:
    path = results / f"{screen}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"the confirmation tier reads the screen's results, {path}, which does not exist: "
            f"run `python -m benchmarks.report --problems {screen}` first"
        )
    return json.loads(path.read_text())


def screen_methods(screen: str, count: int = SCREEN_PICKS, results=SCREEN_RESULTS) -> tuple:
    """The screen's ``count`` best methods, by their calibration median (the default controller
    and its variants left out: the confirmation always runs the default).

    Args:
      screen: the screen problem's name.
      count: how many.
      results: the folder of the screen's ``<screen>.json``.

    Returns:
      Arm labels, best first.
    """
    rows = [
        r
        for r in _screen(screen, results)["rows"]
        if r["kind"] == "method"
        and not r["label"].startswith("stable")
        and r.get("calibration") is not None
        and math.isfinite(float(r["calibration"]))  # the json writes a NaN as "nan"
    ]
    rows.sort(key=lambda r: (float(r["calibration"]), r["label"]))
    return tuple(r["label"] for r in rows[:count])


def screen_ratios(screen: str, count: int = SCREEN_PICKS, results=SCREEN_RESULTS) -> tuple:
    """The screen's ``count`` best fixed-weight ratios: its grid's cells whose every
    calibration run finished, ranked by calibration median, each ratio once.

    Args:
      screen: the screen problem's name.
      count: how many.
      results: the folder of the screen's ``<screen>.json``.

    Returns:
      Dicts of weights normalised to sum 1, best first.
    """
    data = _screen(screen, results)
    seeds = len(data["calibration_seeds"])
    cells = [c for c in data["grid"] if c["finished"] == seeds and math.isfinite(float(c["score"]))]
    cells.sort(key=lambda c: float(c["score"]))
    ratios: list[dict[str, float]] = []
    for cell in cells:
        total = sum(cell["weights"].values())
        ratio = {k: v / total for k, v in cell["weights"].items()}
        if not any(np.allclose(list(ratio.values()), list(r.values())) for r in ratios):
            ratios.append(ratio)
        if len(ratios) == count:
            break
    return tuple(ratios)


@dataclasses.dataclass(frozen=True)
class Profile:
    """One named way to run the suite.

    Attributes:
      name: the name on the command line and in every row.
      plan: seeds, vmap width and rate extensions (:class:`benchmarks.harness.Plan`).
      steps: training steps per problem (a problem not named: its own ``steps``).
      arms: the arm labels per problem (base and best fixed always run); None: every arm.
      quick: use each problem's ``quick_version`` (tiny grids).
      confirmation: the confirmation tier: a problem with a ``screen`` trains the default
        and the screen's best methods, with fixed ratios seeded by the screen's best.
    """

    name: str
    plan: harness.Plan
    steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    arms: Mapping[str, tuple[str, ...]] | None = None
    quick: bool = False
    confirmation: bool = False

    def problem(self, name: str) -> problems.Problem:
        """The problem ``name`` as this profile runs it."""
        problem = problems.ALL[name]()
        if self.confirmation and problem.screen is not None:
            problem = dataclasses.replace(problem, ratios=screen_ratios(problem.screen))
        if self.quick:
            problem = problem.quick_version()
        if name in self.steps:
            problem = dataclasses.replace(problem, steps=self.steps[name])
        return problem

    def labels(self, name: str) -> tuple[str, ...] | None:
        """The arm labels this profile trains on problem ``name`` (None: every arm)."""
        screen = problems.ALL[name]().screen
        if self.confirmation and screen is not None:
            return ("stable", *screen_methods(screen))
        return None if self.arms is None else self.arms.get(name, ())


COMMITTED_ARMS = (
    "stable",
    "stable ratios",
    "metabalance",
    "config",
    "encodec",
    "lr_annealing+guards",
    "pcgrad",
    "relobralo+guards",
    "softadapt+guards",
    "uncertainty",
    "uncertainty+guards",
    "stable seed-start",
    "dwa+guards",
    "famo+guards",
    "imtl_l+guards",
    "gradnorm+guards",
    "mgda",
    "upgrad",
    "upgrad every 10",
    "upgrad every 100",
    "nash_mtl",
    "stch+guards",
    "gradvac",
    "fairgrad",
    "pcd",
    "m_config",
)
"""The committed profile's methods: the default controller and its ratio-moving option, and the
methods the choosing page weighed (MetaBalance, ConFIG, EnCodec, learning-rate annealing,
PCGrad, ReLoBRaLo and SoftAdapt under their guards, uncertainty weighting bare and guarded,
which is also IMTL-L bare), the controller as the seed started it, the loss-only balancers
and GradNorm under their recommended guards, three Gramian methods (MGDA, UPGrad,
Nash-MTL; UPGrad also with its weights held for 10 and 100 steps), and issue 28's additions
(STCH under its recommended guards, GradVac, FairGrad, PCD, and M-ConFIG, a gradient
transformation fed one term's gradient per step). Every other arm runs in the ``full`` profile
only."""

CONFIRMATION_NOT_RUN: dict[str, dict[str, str]] = {}
"""Arms the confirmation profile chooses but the committed results lack, per problem, each with
the reason; the confirmation page lists them as not run, and a test fails on any other gap."""

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        plan=harness.Plan(
            calibration_seeds=(100, 101),
            evaluation_seeds=(0, 1),
            min_evaluation=2,
            batch=4,
            extensions=1,
        ),
        arms={"digits": ("stable",), "toy": ("stable", "mgda")},
        quick=True,
    ),
    "committed": Profile(
        name="committed",
        plan=harness.Plan(),
        steps={"tts_sgd": 600, "tts_adam": 600, "poisson": 1000, "burgers": 400, "digits": 1000},
        arms={name: COMMITTED_ARMS for name in problems.PROBLEMS},
    ),
    "full": Profile(name="full", plan=harness.Plan()),
    "confirm": Profile(
        name="confirm",
        plan=harness.Plan(),
        steps={"digits_wide": 1000},
        confirmation=True,
    ),
}
"""Every profile, by name."""
