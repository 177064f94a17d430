# Two commands do everything on a fresh machine with only Python:
#   make demo   runs the main job (the stability demo), writing to out/demo/ (ignored by git)
#   make test   lint, format check, every test (notebooks included) and the docs build
# Also:
#   make docs     the documentation site, in docs/_build/html (ignored by git)
#   make figures  regenerates the benchmark outputs committed in results/ (the suite's committed
#                 profile, benchmarks/profiles.py: one command per problem, about an hour on 2
#                 cores in all; then the summary and the pages' generated blocks; the demo; the
#                 failure gym)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPHINX_OPTS ?= -W --keep-going -q

.PHONY: demo test docs figures bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/python -m benchmarks.demo

figures: install
	for p in tts_sgd tts_adam poisson burgers digits imbalanced toy; do \
		$(BIN)/python -m benchmarks.report --profile committed --problems $$p --out results \
			|| exit 1; done
	$(BIN)/python -m benchmarks.demo --out results
	$(BIN)/python -m benchmarks.failures --out results

docs: install
	$(BIN)/sphinx-build $(SPHINX_OPTS) -b html docs docs/_build/html
	@echo "Open docs/_build/html/index.html"

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 tests --doctest-modules adaptive_optax
	$(BIN)/sphinx-build $(SPHINX_OPTS) -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/_autosummary docs/notebooks out
