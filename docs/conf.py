"""Sphinx configuration: guides in MyST Markdown, the notebooks rendered without executing them,
and the API reference generated from the docstrings of ``adaptive_optax.__all__``, grouped by kind
in ``api.md``."""

from __future__ import annotations

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import adaptive_optax  # noqa: E402

project = "adaptive_optax"
author = "the adaptive_optax developers"
copyright = "the adaptive_optax developers, Apache-2.0"
release = adaptive_optax.__version__
version = release

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# The notebooks live in notebooks/, committed without outputs; they are copied here at each
# build and rendered as they are, never executed, so that the build stays fast. The test
# command executes them (tests/test_notebooks.py).
nb_execution_mode = "off"
_notebooks = DOCS / "notebooks"
shutil.rmtree(_notebooks, ignore_errors=True)
shutil.copytree(ROOT / "notebooks", _notebooks, ignore=shutil.ignore_patterns(".*"))

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# API reference: one page per name of adaptive_optax.__all__ (templates in _templates/), listed
# by kind in api.md; a public name missing there, or a name there that is not public, fails the
# build.
_public = set(adaptive_optax.__all__)
_listed = {
    line.strip()
    for line in (DOCS / "api.md").read_text().splitlines()
    if line.startswith("   ") and not line.strip().startswith(":")
}
if _listed != _public:
    raise RuntimeError(
        "docs/api.md must list every name of adaptive_optax.__all__: missing "
        f"{sorted(_public - _listed)}, not public {sorted(_listed - _public)}"
    )
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_imported_members = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_default_options = {"no-value": True}  # a constant's repr is not documentation
napoleon_attr_annotations = False  # the docstrings give shapes and dtypes; no repeated "Type:"

# `-n` (nitpicky) makes an unresolved reference an error. Types of other libraries cannot be
# resolved without intersphinx, which needs the network: they are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|optax|chex|flax|collections|typing)(\..*)?"),
    (r"py:.*", r"adaptive_optax\._src\..*"),  # private aliases in signatures (PyTree, UpdateFn)
]
# Private rule-state classes that the balancers' docstrings name but the package does not
# export; any other unresolved name in a docstring or a page fails the build.
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "DWAState",
        "EncodecState",
        "GradNormState",
        "MetaBalanceState",
        "ReLoBRaLoState",
        "SoftAdaptState",
        "UncertaintyState",
    )
]

html_theme = "furo"
html_title = f"adaptive_optax {release}"


def _require_docstring(app, what, name, obj, options, lines):
    """A public object without a docstring is a warning, an error under ``-W``.

    A constant cannot carry a docstring: autodoc would show its type's (``dict``'s); it gets a
    line generated from its value instead.
    """
    if what == "data" and "\n".join(lines).strip() == (type(obj).__doc__ or "").strip():
        keys = f" with keys {', '.join(f'``{k!r}``' for k in obj)}" if isinstance(obj, dict) else ""
        lines[:] = [f"A ``{type(obj).__name__}``{keys}."]
    if name.startswith("adaptive_optax.") and not any(line.strip() for line in lines):
        from sphinx.util import logging

        logging.getLogger(__name__).warning(f"{name} has no docstring", type="docs")


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple field's docstring is "Alias for field number N": the class's "Attributes:"
    section documents it instead."""
    if what == "class" and (getattr(obj, "__doc__", None) or "").startswith("Alias for field"):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
