"""Every preset reproduces its stored trajectory bit for bit (see ``tests/golden``)."""

import numpy as np
import pytest
from golden.trajectories import PATH, arms, trajectory

ARMS = arms()


@pytest.fixture(scope="module")
def stored():
    with np.load(PATH) as data:
        return {key: data[key] for key in data.files}


def test_every_stored_arm_still_exists(stored):
    assert {key.split("|")[0] for key in stored} == set(ARMS)


@pytest.mark.parametrize("name", sorted(ARMS))
def test_trajectory_is_identical(name, stored):
    for key, value in trajectory(ARMS[name]).items():
        np.testing.assert_array_equal(value, stored[f"{name}|{key}"], err_msg=f"{name}: {key}")
