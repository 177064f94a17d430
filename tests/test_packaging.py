"""What a user gets besides the code: the license, the changelog, the extras."""

from __future__ import annotations

import pathlib
import re

import pytest

import adaptive_optax

ROOT = pathlib.Path(__file__).parents[1]


def project():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_the_apache_2_text_the_metadata_names():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice
    meta = project()
    assert meta["license"] == "Apache-2.0"
    assert meta["license-files"] == ["LICENSE"]


def test_changelog_has_unreleased_and_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased"
    assert adaptive_optax.__version__ in headings


def test_extras_install_what_users_and_the_test_command_need():
    extras = project()["optional-dependencies"]

    def names(extra):
        return {re.split(r"[<>=\[ ]", requirement)[0] for requirement in extras[extra]}

    assert {"jupyterlab", "nbconvert", "ipykernel"} <= names("notebooks")
    assert {"sphinx", "myst-nb", "furo"} <= names("docs")
    assert "adaptive_optax[examples,docs]" in extras["test"]  # make install builds the docs too
