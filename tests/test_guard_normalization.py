"""The scale normalization (a change of the base, not a guard), tested alone under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.guards.base_weights import Normalization
from adaptive_optax._src.statistics import init_stats


def stats_with(first_loss, loss_mean, count):
    stats = init_stats(len(first_loss), jnp.float32)
    return stats._replace(
        first_loss=jnp.asarray(first_loss, jnp.float32),
        loss_mean=jnp.asarray(loss_mean, jnp.float32),
        loss_count=jnp.asarray(count, jnp.int32),
    )


@pytest.mark.parametrize("value", ["first", "mean", 1, True])
def test_checked_names_normalize_and_its_value(value):
    with pytest.raises(ValueError, match=r"^normalize must be one of"):
        Normalization.checked(normalize=value)


def test_off_the_base_is_the_base():
    base = jnp.array([1.0, 2.0])
    stats = stats_with([1.0, 100.0], [1.0, 100.0], [1, 1])
    assert Normalization.checked(normalize=None).base(base, stats, np.ones(2, bool)) is base


def test_first_loss_puts_the_terms_on_a_common_scale_and_keeps_the_total():
    norm = Normalization.checked(normalize="first_loss")
    stats = stats_with([1.0, 100.0, 5.0], [9.0, 9.0, 9.0], [3, 3, 3])
    adaptive = np.array([True, True, False])
    out = jax.jit(lambda base, stats: norm.base(base, stats, adaptive))(
        jnp.array([1.0, 1.0, 4.0]), stats
    )
    np.testing.assert_allclose(out[:2].sum(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[0] * 1.0, out[1] * 100.0, rtol=1e-5)
    assert out[2] == 4.0  # not adaptive: its base


def test_running_reads_the_running_mean_and_a_term_without_a_loss_keeps_its_base():
    norm = Normalization.checked(normalize="running")
    stats = stats_with([1.0, 1.0], [2.0, 8.0], [4, 0])
    out = norm.base(jnp.array([1.0, 3.0]), stats, np.ones(2, bool))
    np.testing.assert_array_equal(out, [1.0, 3.0])  # only one known term: its own total


@settings(max_examples=100, deadline=None)
@given(
    losses=st.lists(
        st.one_of(st.floats(-1e30, 1e30), st.sampled_from([0.0, 1e-38])),
        min_size=3,
        max_size=3,
    ),
)
def test_the_normalized_base_is_positive_and_finite(losses):
    norm = Normalization.checked(normalize="first_loss")
    out = np.asarray(
        norm.base(
            jnp.array([1.0, 2.0, 3.0]), stats_with(losses, losses, [1, 1, 1]), np.ones(3, bool)
        )
    )
    assert np.all(np.isfinite(out) & (out > 0))
