"""Library code is tested under strict dtype promotion: no silent bfloat16 -> float32 casts.

Tests of integration with optax and flax run with standard promotion, since those libraries
promote implicitly (optax's Adam raises a Python float to an int32 power).
"""

import jax
import pytest

STRICT_MODULES = ("test_core_", "test_balancers")


@pytest.fixture(autouse=True)
def dtype_promotion(request):
    strict = request.module.__name__.startswith(
        STRICT_MODULES
    ) and not request.node.get_closest_marker("standard_promotion")
    with jax.numpy_dtype_promotion("strict" if strict else "standard"):
        yield
