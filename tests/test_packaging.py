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


def test_make_demo_installs_the_examples_extra_only():
    """``make demo`` needs the examples extra, not the test and docs stack; ``make test``
    still installs the test extra (which holds the examples)."""
    make = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo: (.+)$", make, re.M)[1].split()
    recipes = {}
    for target in demo:
        marker = re.search(rf"^{re.escape(target)}: (\S+)$", make, re.M)
        name = marker[1] if marker else target
        recipes[target] = make.split(f"\n{name}: pyproject.toml\n", 1)[1].split("\n\n", 1)[0]
    installs = [line for r in recipes.values() for line in r.splitlines() if "pip install" in line]
    extras = [re.search(r'-e "\.\[([^\]]*)\]"', line) for line in installs]
    assert [m[1] for m in extras if m] == ["examples"], installs
    assert re.search(r"^test: install$", make, re.M)
    test_install = make.split("\n$(VENV)/.installed: pyproject.toml\n", 1)[1].split("\n\n", 1)[0]
    assert '-e ".[test]"' in test_install


def test_pre_commit_runs_the_checks_of_the_test_command():
    """Each hook of .pre-commit-config.yaml is a command of the Makefile's test target."""
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\ntest: install\n", 1)[1].split("\n\n", 1)[0]
    commands = {
        line.strip().replace("$(BIN)/", ".venv/bin/").removesuffix(" .")  # pre-commit: files
        for line in recipe.splitlines()
    }
    hooks = re.findall(r"^\s+entry: (.+)$", (ROOT / ".pre-commit-config.yaml").read_text(), re.M)
    assert [h.split()[0].rsplit("/", 1)[1] for h in hooks] == ["ruff", "ruff", "mypy"]
    for hook in hooks:
        assert hook.replace(" --force-exclude", "") in commands, hook
    assert "$(MAKE) test-lowest" in commands


def test_the_lowest_versions_leg_pins_every_core_dependency_at_its_lower_bound():
    import subprocess
    import sys

    script = ROOT / ".ci" / "lowest_requirements.py"
    pins = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    ).stdout.split()
    names = {pin.split("==")[0] for pin in pins}
    assert names == {"jax", "jaxlib", "optax", "chex", "pytest", "pytest-xdist", "hypothesis"}
    for requirement in project()["dependencies"]:
        name, bound = re.fullmatch(r"([\w.\-]+)>=(\S+)", requirement).groups()
        assert f"{name}=={bound}" in pins
