"""Every test runs under strict dtype promotion (no silent bfloat16 -> float32 casts) unless
its module or function is marked ``standard_promotion``.

Tests of integration with optax and flax opt out, since those libraries promote implicitly
(optax's Adam raises a Python float to an int32 power): they say so with
``pytestmark = pytest.mark.standard_promotion``.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def dtype_promotion(request):
    standard = request.node.get_closest_marker("standard_promotion") is not None
    with jax.numpy_dtype_promotion("standard" if standard else "strict"):
        yield
