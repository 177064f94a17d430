"""Every numeric setting of every factory is validated at construction, naming the setting.

One table drives it: for each public ``*_weights`` / ``*_rule`` factory and :func:`guarded`,
each keyword setting with a numeric default (or a numeric ``None``-able one) is given a huge
Python integer, a list, NaN, +/-inf and an out-of-range value; each must fail when the
factory is called, with a message naming the setting (and, for a preset, the preset).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 2.0}
REQUIRED = {"lr_annealing_weights": {"main": 0}, "metabalance_weights": {"main": 0}}

# Settings whose default is None but which take a number.
OPTIONAL_NUMBERS = {
    "max_norm",
    "spike_threshold",
    "spike_prior",
    "min_weight",
    "max_weight",
    "max_change",
}

# Settings that take one value per term (a list of the right length is valid).
PER_TERM = {"min_losses"}

# An out-of-range value of each numeric setting (None: every finite real number is valid).
OUT_OF_RANGE = {
    "alpha": -0.5,
    "beta": None,
    "c": -0.1,
    "cooling_period": -1,
    "ema_decay": 1.0,
    "eps": -1.0,
    "every": 0,
    "expected_rho": 1.5,
    "grad_growth": 0.0,
    "high_ratio": float("inf"),
    "init_log_scale": 31.0,  # beyond max_log_scale
    "init_log_variance": 31.0,
    "interval": 0,
    "iterations": 0,
    "low_ratio": 1.5,  # above the default high_ratio 1.1
    "log_steps": -1,
    "lr": 0.0,
    "main": 5,
    "max_change": 1.0,
    "max_log_scale": 0.0,
    "max_log_variance": 0.0,
    "max_norm": 0.0,
    "max_weight": 0.0,
    "min_loss": 0.0,
    "min_losses": None,
    "min_stable_steps": -1,
    "min_weight": -1.0,
    "mu": 0.0,
    "nadir_steps": 0,
    "norm_eps": 1.5,
    "order": 0,
    "qp_iterations": 0,
    "ramp_steps": -1,
    "reg_eps": -1e-3,
    "relax_factor": 1.0,
    "seed": 0.5,
    "spike_decay": 1.0,
    "spike_factor": 1.0,
    "spike_prior": 0.0,
    "spike_threshold": 0.0,
    "step_size": 1.0,
    "tau": 1.5,
    "temperature": 0.0,
    "total_norm": 0.0,
    "variance_threshold": 0.0,
    "warmup_steps": -1,
    "weight_decay": -1.0,
    "window": 0.5,
}


def factories():
    names = [n for n in ao.__all__ if n.endswith(("_weights", "_rule"))] + ["guarded"]
    names.remove("distilled_weights")  # reads a state: not a factory
    return {name: getattr(ao, name) for name in names}


def numeric_settings(factory):
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = parameter.default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric or (default is None and parameter.name in OPTIONAL_NUMBERS):
            yield parameter.name, default


def call(name, factory, **settings):
    kwargs = REQUIRED.get(name, {}) | settings
    if name == "guarded":
        return factory(ao.tanh_rule(), BASE, **kwargs)
    if name.endswith("_weights"):
        return factory(BASE, **kwargs)
    return factory(**kwargs)


CASES = [
    (name, setting, default)
    for name, factory in factories().items()
    for setting, default in numeric_settings(factory)
]


def bad_values(setting, default):
    values = {"huge int": 2**40}
    if setting not in PER_TERM:
        values["list"] = [1 if default is None else default]
    values |= {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    if OUT_OF_RANGE[setting] is not None:
        values["out of range"] = OUT_OF_RANGE[setting]
    return values


def test_the_table_covers_every_numeric_setting():
    assert len(CASES) > 80
    assert {setting for _, setting, _ in CASES} == set(OUT_OF_RANGE)


@pytest.mark.parametrize("name, setting, default", CASES, ids=[f"{n}-{s}" for n, s, _ in CASES])
def test_bad_values_fail_at_construction_naming_the_setting(name, setting, default):
    factory = factories()[name]
    call(name, factory)  # the defaults are valid
    for kind, value in bad_values(setting, default).items():
        with pytest.raises(ValueError, match=setting) as error:
            call(name, factory, **{setting: value})
        if name.endswith("_weights"):
            assert str(error.value).startswith(f"{name}: "), (kind, str(error.value))


@pytest.mark.parametrize("name", [n for n in factories() if n.endswith("_weights")])
def test_a_misspelled_keyword_names_the_preset_and_its_settings(name):
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword .*'lrr'"):
        call(name, factories()[name], lrr=0.1)
    # guard settings are accepted by every preset, and their errors name the preset
    with pytest.raises(ValueError, match=rf"^{name}: warmup_steps"):
        call(name, factories()[name], warmup_steps=-1)


# Settings that fix the computation's structure or are read only at init: refused when traced.
STATIC = {"iterations", "qp_iterations", "order", "seed", "min_losses", "max_log_scale",
          "max_log_variance", "ramp_steps", "main"}  # fmt: skip


def test_traced_settings_work_or_are_refused_and_the_guide_lists_the_refused():
    refused = set()
    for name, setting, default in CASES:
        value = {"min_weight": 0.1, "max_weight": 10.0}.get(setting, default)

        def build(v, name=name, setting=setting):
            call(name, factories()[name], **{setting: v})
            return jnp.zeros(())

        try:
            jax.jit(build)(jnp.asarray(1 if value is None else value))
        except ValueError as error:
            assert f"{setting} is static: it cannot be traced" in str(error)
            refused.add(setting)
    assert refused == STATIC
    guide = (Path(__file__).parents[1] / "docs" / "guides" / "integration.md").read_text()
    line = next(line for line in guide.splitlines() if "cannot be traced or injected" in line)
    assert all(f"`{setting}`" in line for setting in STATIC), line
