"""Prints the lowest versions pyproject.toml allows for the core dependencies and the test
runner, one requirement a line (``jax==0.10``): what ``make test-lowest`` installs."""

from __future__ import annotations

import pathlib
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = pathlib.Path(__file__).parents[1]
TEST_RUNNER = ("pytest", "pytest-xdist", "hypothesis")  # from the test extra


def lowest(requirement: str) -> str:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement.strip())
    if match is None:
        sys.exit(f"no lower bound to pin in {requirement!r}: write it as name>=version")
    return f"{match[1]}=={match[2]}"


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    test = {re.split(r"[<>=\[ ]", r)[0]: r for r in project["optional-dependencies"]["test"]}
    for requirement in [*project["dependencies"], *(test[name] for name in TEST_RUNNER)]:
        print(lowest(requirement))


if __name__ == "__main__":
    main()
