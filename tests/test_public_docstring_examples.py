"""Every docstring example of the package runs, a public one as a user would run it.

``pytest --doctest-modules adaptive_optax`` runs the examples with the globals of the module
that defines them, so an example calling a private name of that module (``mgda_from_gramian``
where the public name is ``ao.gramian.mgda``) passes there and raises ``NameError`` for a user.
Here each public object's examples (the names in ``__all__`` of ``adaptive_optax`` and of its
public namespaces, the namespaces' own docstrings, and the methods of public classes) run in a
namespace holding only what the example imports, as a user's session would; the examples no
public name reaches (the guards' records, for instance) run with their module's globals, as
``--doctest-modules`` runs them. Each example runs once, so the test command does not also pass
``--doctest-modules``.
"""

import doctest
import importlib
import pkgutil
import types

import pytest

import adaptive_optax as ao

# Examples are written for users, who run under JAX's default (standard) dtype promotion.
pytestmark = pytest.mark.standard_promotion

NAMESPACES = {"ao": ao, "ao.balancers": ao.balancers, "ao.gramian": ao.gramian}


def public_objects():
    """``{qualified name: object}``: the public namespaces and every name in their ``__all__``."""
    objects = {}
    for prefix, module in NAMESPACES.items():
        objects[prefix] = module
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                continue  # a public namespace, collected on its own
            objects[f"{prefix}.{name}"] = value
    return objects


def examples():
    """Every doctest with at least one example, keyed by a name a user would look up."""
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    found = {}
    for qualified, value in public_objects().items():
        if isinstance(value, types.ModuleType):
            # A module's own docstring only: its members are collected by their public names.
            tests = [
                doctest.DocTestParser().get_doctest(value.__doc__ or "", {}, qualified, None, 0)
            ]
        elif isinstance(value, (type, types.FunctionType)) or callable(value):
            tests = finder.find(value, qualified, module=False, globs={})
        else:
            continue  # constants (ao.RECOMMENDED, ...) carry no docstring of their own
        for test in tests:
            if test.examples:
                found.setdefault(test.name, test)
    return found


EXAMPLES = examples()


def internal_examples():
    """Every doctest of the package's modules that no public name reaches, by its name."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    public = {test.docstring for test in EXAMPLES.values()}
    found = {}
    for info in pkgutil.walk_packages(ao.__path__, "adaptive_optax."):
        module = importlib.import_module(info.name)
        for test in finder.find(module):  # globs: a copy of the module's globals
            if test.examples and test.docstring not in public:
                found.setdefault(test.name, test)
    return found


INTERNAL = internal_examples()


def test_the_public_examples_are_collected():
    assert {"ao.gramian.mgda", "ao.gramian.upgrad", "ao.gramian", "ao.stable_weights"} <= set(
        EXAMPLES
    ), sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_public_docstring_example_runs_with_only_its_imports(name):
    test = EXAMPLES[name]
    test.globs = {}  # only what the example imports
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)


def test_the_internal_examples_are_collected():
    assert "adaptive_optax._src.guards.warmup.Warmup" in INTERNAL, sorted(INTERNAL)
    assert not set(INTERNAL) & set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(INTERNAL))
def test_internal_docstring_example_runs_with_its_modules_globals(name):
    test = INTERNAL[name]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    result = runner.run(test, out=out.append, clear_globs=False)
    assert result.failed == 0, "".join(out)
