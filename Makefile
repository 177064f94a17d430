# Two commands do everything on a fresh machine with only Python:
#   make demo   runs the main job (the stability demo), writing to out/demo/ (ignored by git);
#               it installs the package with the `examples` extra only (not the test and docs
#               stack; `make test` adds it to the same .venv)
#   make test   lint, format check, type check, every test (notebooks included), the docs build,
#               and the core tests under the lowest versions pyproject.toml allows (test-lowest)
# Also:
#   make docs     the documentation site, in docs/_build/html (ignored by git)
#   make test-lowest  core tests (guard settings, rules, balancers) in a venv of their own, build/venv-lowest,
#                 under the lowest jax, jaxlib, optax, chex, pytest, pytest-xdist and hypothesis that
#                 pyproject.toml allows (.ci/lowest_requirements.py reads them)
#   make figures  regenerates the benchmark outputs committed in results/ (the suite's committed
#                 profile, benchmarks/profiles.py: one command per problem, about an hour on 2
#                 cores in all; then the summary and the pages' generated blocks; the demo; the
#                 failure gym)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPHINX_OPTS ?= -W --keep-going -q
LOWEST ?= build/venv-lowest
# The core tests of test-lowest: the fastest files that cover the guards' settings, the rules and
# every balancer (the whole suite under the lowest versions would not fit the test command's
# budget). The deselected test reads jax.dtypes.TypePromotionError, public from jax 0.10.1 on;
# the library itself needs only jax 0.10.
CORE_TESTS ?= tests/test_rules.py tests/test_guards_settings.py tests/test_recommended.py \
	tests/test_uw_so_metabalance.py \
	--deselect tests/test_guards_settings.py::test_library_tests_run_under_strict_dtype_promotion

.PHONY: demo test test-lowest docs figures bench install install-examples clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed-examples

# What the demo needs: the package and its `examples` extra (the test extra holds it too).
install-examples: $(VENV)/.installed-examples

$(VENV)/.installed-examples: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[examples]"
	touch $@

demo: install-examples
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
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --durations=25 tests
	$(BIN)/sphinx-build $(SPHINX_OPTS) -b html docs docs/_build/html
	$(MAKE) test-lowest

# The venv is rebuilt only when the pinned versions change; the package runs from the work tree.
test-lowest:
	@mkdir -p build
	$(PYTHON) .ci/lowest_requirements.py > build/lowest-requirements.txt
	cmp -s build/lowest-requirements.txt $(LOWEST)/requirements.txt || { \
		rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST) && \
		$(LOWEST)/bin/python -m pip install --quiet --upgrade pip && \
		$(LOWEST)/bin/python -m pip install --quiet -r build/lowest-requirements.txt && \
		cp build/lowest-requirements.txt $(LOWEST)/requirements.txt; }
	PYTHONPATH=$(CURDIR) $(LOWEST)/bin/python -m pytest -q -n 2 -p no:cacheprovider $(CORE_TESTS)

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache .mypy_cache docs/_build docs/_autosummary docs/notebooks out
