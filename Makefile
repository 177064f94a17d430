# Two commands do everything on a fresh machine with only Python:
#   make demo   runs the main job (the stability demo)
#   make test   lint, format check and every test, notebooks included
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/python -m benchmarks.demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 tests --doctest-modules adaptive_optax

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
