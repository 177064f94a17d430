"""The suite's named profiles: what ``python -m benchmarks.report --profile NAME`` runs.

- ``quick``: every problem, tiny (the test command; a few minutes on 2 cores);
- ``committed``: what ``results/`` holds and ``make figures`` regenerates, sized for a 2-core
  machine (under 15 minutes a problem): shortened training, the default controller and the
  methods the choosing page weighs, 5 calibration seeds, 10 or 20 evaluation seeds;
- ``full``: every arm of :data:`benchmarks.harness.ARMS` at each problem's full length.

Every row of a result records its profile; ``--merge`` keeps only rows of the same profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from benchmarks import harness, problems


@dataclasses.dataclass(frozen=True)
class Profile:
    """One named way to run the suite.

    Attributes:
      name: the name on the command line and in every row.
      plan: seeds, vmap width and rate extensions (:class:`benchmarks.harness.Plan`).
      steps: training steps per problem (a problem not named: its own ``steps``).
      arms: the arm labels per problem (base and best fixed always run); None: every arm.
      quick: use each problem's ``quick_version`` (tiny grids).
    """

    name: str
    plan: harness.Plan
    steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    arms: Mapping[str, tuple[str, ...]] | None = None
    quick: bool = False

    def problem(self, name: str) -> problems.Problem:
        """The problem ``name`` as this profile runs it."""
        problem = problems.PROBLEMS[name]()
        if self.quick:
            problem = problem.quick_version()
        if name in self.steps:
            problem = dataclasses.replace(problem, steps=self.steps[name])
        return problem

    def labels(self, name: str) -> tuple[str, ...] | None:
        """The arm labels this profile trains on problem ``name`` (None: every arm)."""
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
    "nash_mtl",
)
"""The committed profile's methods: the default controller and its ratio-moving option, and the
methods the choosing page weighed (MetaBalance, ConFIG, EnCodec, learning-rate annealing,
PCGrad, ReLoBRaLo and SoftAdapt under their guards, uncertainty weighting bare and guarded,
which is also IMTL-L bare), the controller as the seed started it, the loss-only balancers
and GradNorm under their recommended guards, and three Gramian methods (MGDA, UPGrad,
Nash-MTL). Every other arm runs in the ``full`` profile only."""

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
}
"""Every profile, by name."""
