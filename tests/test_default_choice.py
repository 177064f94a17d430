"""The committed choice of the default controller: its numbers stand for this code, the rule
chose what the library ships, and the page is generated from the json."""

import json
import pathlib

import numpy as np
import pytest

from adaptive_optax._src import weightings
from benchmarks import default_choice
from tests.golden import default_choice_arms

RESULT = json.loads(pathlib.Path("results/default_choice.json").read_text())


def test_the_measured_arms_behave_as_this_code_does():
    with np.load(default_choice_arms.PATH) as data:
        stored = {key: data[key] for key in data.files}
    current = default_choice_arms.stored_trajectories()
    assert set(current) == set(stored)
    for key, value in current.items():
        np.testing.assert_array_equal(value, stored[key], err_msg=key)


def test_the_rule_chose_what_the_library_ships():
    assert default_choice.choose(RESULT["calibration"]) == RESULT["chosen"]
    threshold = RESULT["chosen"].rsplit("=", 1)[1]
    assert threshold == str(weightings.SPIKE_THRESHOLD)


def test_the_choice_used_calibration_seeds_and_reports_on_others():
    calibration = {s for r in RESULT["calibration"].values() for s in r["seed"]}
    test = {s for r in RESULT["test"].values() for s in r["seed"]}
    assert calibration.isdisjoint(test) and len(test) >= 20 and len(calibration) >= 20


def test_the_page_is_generated_from_the_json():
    page = pathlib.Path("results/default_choice.md").read_text()
    assert page == default_choice.report(RESULT)


@pytest.mark.parametrize("rate", ["0.05"])
def test_a_calm_run_keeps_the_base_weight_on_the_tts_model(rate):
    chosen = default_choice.summary(RESULT["test"][RESULT["chosen"]], float(rate))
    assert abs(chosen["calm_weight"] / default_choice.BASE_MEL - 1) <= 0.05


def test_the_readme_states_the_price_the_json_measured():
    intro = pathlib.Path("README.md").read_text().split("<!-- intro-end -->")[0]
    assert "finishes at least as many\nruns as those fixed weights, most of them collapsed" in intro
    assert "results/default_choice.md" in intro
    chosen, base = RESULT["test"][RESULT["chosen"]], RESULT["test"]["fixed base (mel 2.5)"]
    for rate in (0.14, 0.2, 0.25):
        ours, theirs = default_choice.summary(chosen, rate), default_choice.summary(base, rate)
        assert ours["finished"] >= theirs["finished"]
        assert (
            2 * ours["collapsed"] > ours["finished"] and theirs["collapsed"] == theirs["finished"]
        )


def test_the_readme_states_the_defaults_of_the_code():
    import inspect

    import adaptive_optax as ao

    intro = pathlib.Path("README.md").read_text().split("<!-- intro-end -->")[0]
    low = ao.ORIGINAL["bounds"][0]
    ramp = weightings.SLOW_START["ramp_steps"]
    change = inspect.signature(ao.stable_weights).parameters["max_change"].default
    assert f"enters at {low:g} x its base and reaches it over {ramp} calm steps" in intro
    assert f"{change * 100:g} % per adjustment" in intro


def test_measured_quotes_the_test_seeds_as_the_json_has_them():
    page = pathlib.Path("MEASURED.md").read_text()
    table = default_choice.table(RESULT["test"], list(RESULT["test"]))
    begin = "<!-- generated from results/default_choice.json"
    assert f"test seeds -->\n{table}\n<!-- end of generated block: test seeds -->" in page
    assert begin in page


def test_the_readme_measured_paragraph_as_the_json_has_it():
    measured = pathlib.Path("README.md").read_text().split("## Measured")[1]
    assert "a mel weight fixed at the floor of its bounds finishes them all at lr 0.14" in measured
    floor = default_choice.summary(RESULT["test"]["fixed floor (mel 1.0)"], 0.14)
    assert floor["finished"] == floor["runs"]


def test_measured_quotes_the_failure_gym_as_its_page_has_it():
    head = "| scenario | non-finite runs: fixed / bare / guarded |"

    def table(text):
        start = text.index(head)
        return text[start : text.index("\n\n", start)]

    quoted = table(pathlib.Path("MEASURED.md").read_text())
    assert quoted == table(pathlib.Path("results/failures.md").read_text())
