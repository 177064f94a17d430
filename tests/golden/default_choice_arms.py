"""The arms of ``benchmarks/default_choice.py`` on the golden scenario, stored at the commit
that measured ``results/default_choice.json``; ``tests/test_default_choice.py`` checks that
the current code reproduces them bit for bit, so the committed numbers stand for this code.

``python -m tests.golden.default_choice_arms`` (from the repository root, at the commit named in
the json) rewrites ``tests/golden/default_choice.npz``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from benchmarks import default_choice
from tests.golden import trajectories

PATH = pathlib.Path(__file__).with_name("default_choice.npz")
TTS_BASE = {"mel": 2.5, "stop": 1.0, "attention": 0.1}


def arms() -> dict:
    return {**default_choice.CANDIDATES, **default_choice.ADAPTIVE_CONTROLS}


def stored_trajectories() -> dict:
    """``{"<arm>|<key>": array}`` of every arm on the golden scenario with the TTS terms."""
    out = {}
    for name, make in arms().items():
        for key, value in trajectories.trajectory(make(TTS_BASE), tuple(TTS_BASE)).items():
            out[f"{name}|{key}"] = value
    return out


if __name__ == "__main__":
    np.savez_compressed(PATH, **stored_trajectories())
