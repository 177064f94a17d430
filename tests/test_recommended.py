"""Guard settings as data: ``ao.BARE``, ``ao.ORIGINAL``, ``ao.RECOMMENDED``, and the docs that
state them (the balancers guide's table and the presets' docstrings), parsed and compared."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
from collections.abc import Mapping

import jax
import numpy as np
import pytest

import adaptive_optax as ao

ROOT = pathlib.Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "guides" / "balancers.md"
PRESETS = sorted(n[: -len("_weights")] for n in ao.balancers.__all__ if n.endswith("_weights"))
GUARD_SETTINGS = {
    name
    for name, parameter in inspect.signature(ao.guarded).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
MAIN = {"lr_annealing": dict(main="b"), "metabalance": dict(main="b")}
BASE = {"a": 1.0, "b": 2.0}


def parse_settings(text: str) -> dict:
    """``bounds=(0.2, 2.0), max_change=0.1`` -> a dict; ``none (bare)`` -> ``{}``."""
    if text.startswith("none"):
        return {}
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call) and not call.args, text
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def guide_table() -> dict[str, dict]:
    """The rows of the guide's table of recommended guards, one entry per method named."""
    text = GUIDE.read_text()
    section = text.split("### Recommended guards", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table: dict[str, dict] = {}
    for row in rows:
        methods, settings = (cell.strip() for cell in row.strip("|").split("|")[:2])
        for method in re.findall(r"`(\w+)`", methods):
            assert method not in table, f"{method} appears twice in the guide's table"
            table[method] = parse_settings(settings.strip("`"))
    return table


def test_every_preset_has_recommended_guards_and_nothing_else_does():
    assert sorted(ao.RECOMMENDED) == PRESETS
    assert len(PRESETS) == 27  # the 26 published methods and the scale normalization


def test_the_guides_table_says_what_the_data_says():
    assert guide_table() == {name: dict(settings) for name, settings in ao.RECOMMENDED.items()}


@pytest.mark.parametrize("name", PRESETS)
def test_each_presets_docstring_points_to_its_recommended_guards(name):
    preset = getattr(ao, f"{name}_weights")
    doc = inspect.getdoc(preset)
    assert f'ao.RECOMMENDED["{name}"]' in doc
    assert "Recommended guards: ``bounds" not in doc  # no second copy of the settings
    # an example passes them when there are any
    if ao.RECOMMENDED[name]:
        assert f'**ao.RECOMMENDED["{name}"]' in doc


@pytest.mark.parametrize("name", PRESETS)
def test_recommended_settings_are_guard_keywords_and_build_the_preset(name):
    settings = ao.RECOMMENDED[name]
    assert set(settings) <= GUARD_SETTINGS
    weighting = getattr(ao, f"{name}_weights")(BASE, **MAIN.get(name, {}), **settings)
    assert isinstance(weighting, ao.LossWeighting)


def test_settings_are_read_only():
    for settings in (ao.BARE, ao.ORIGINAL, ao.RECOMMENDED, *ao.RECOMMENDED.values()):
        assert isinstance(settings, Mapping)
        with pytest.raises(TypeError):
            settings["bounds"] = (0.0, 1.0)  # type: ignore[index]


def test_bare_is_relaxed_without_bounds():
    assert dict(ao.BARE) == dict(ao.RELAXED) | dict(bounds=None)
    assert set(ao.BARE) <= GUARD_SETTINGS


def test_original_is_the_defaults_of_guarded():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(ao.guarded).parameters.items()
        if name in ao.ORIGINAL
    }
    assert set(defaults) == set(ao.ORIGINAL)
    assert defaults == dict(ao.ORIGINAL)


def trajectory(weighting, steps=30):
    """Weights over a few steps of losses and norms that move, jitted."""
    rng = np.random.default_rng(0)
    state = weighting.init()
    update = jax.jit(weighting.update)
    out = []
    for _ in range(steps):
        losses = {k: float(v) for k, v in zip(BASE, rng.uniform(0.5, 2.0, 2), strict=True)}
        norms = {k: float(v) for k, v in zip(BASE, rng.uniform(0.5, 2.0, 2), strict=True)}
        weights, state = update(losses, state, grad_norms=norms)
        out.append(jax.tree.leaves(weights))
    return np.asarray(out)


@pytest.mark.parametrize("name", ["dwa", "gradnorm"])
def test_a_preset_under_original_is_its_rule_under_guarded(name):
    rule = getattr(ao, f"{name}_rule")()
    preset = getattr(ao, f"{name}_weights")(BASE, **ao.ORIGINAL)
    np.testing.assert_array_equal(trajectory(preset), trajectory(ao.guarded(rule, BASE)))


def test_stable_weights_under_original_starts_at_the_base():
    weighting = ao.stable_weights(BASE, **ao.ORIGINAL)
    np.testing.assert_array_equal(trajectory(weighting, steps=1)[0], list(BASE.values()))


def test_the_balancers_namespace_holds_the_top_level_objects():
    assert list(ao.balancers.__all__) == sorted(ao.balancers.__all__)
    for name in ao.balancers.__all__:
        assert getattr(ao.balancers, name) is getattr(ao, name), name
    assert len([n for n in ao.balancers.__all__ if n.endswith("_rule")]) == 27


def test_public_names_are_sorted():
    assert list(ao.__all__) == sorted(ao.__all__)
    assert len(ao.__all__) == len(set(ao.__all__))


def test_distilled_weights_is_a_deprecated_alias_of_distill():
    weighting = ao.dwa_weights(BASE)
    state = weighting.init()
    for _ in range(3):
        _, state = weighting.update({"a": 3.0, "b": 1.0}, state)
    with pytest.warns(DeprecationWarning, match="use adaptive_optax.distill"):
        old = ao.distilled_weights(state, total=3.0)
    new = ao.distill(state, total=3.0)
    assert jax.tree.map(float, old) == jax.tree.map(float, new)
