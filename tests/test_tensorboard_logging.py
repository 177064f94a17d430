"""The TensorBoard example writes ``ao.metrics`` with tensorboardX; the values read back from
the event file are the ones logged, for every key of ``ao.metrics``."""

import numpy as np
import pytest

import adaptive_optax as ao
from examples import tensorboard_logging

pytestmark = pytest.mark.standard_promotion


def test_metrics_written_to_tensorboard_read_back_exactly(tmp_path):
    logged = tensorboard_logging.train(tmp_path, steps=40, log_every=10)
    read = tensorboard_logging.read_scalars(tmp_path)
    assert sorted(read) == [10, 20, 30, 40]
    keys = ao.metrics(ao.stable_weights(tensorboard_logging.BASE).init()).keys()
    for step, tags in logged.items():
        assert set(read[step]) == set(tags)
        assert {f"adaptive/{k}" for k in keys} <= set(tags)
        for tag, value in tags.items():
            assert read[step][tag] == np.float32(value), tag
    assert read[40]["adaptive/step"] == 40.0
    assert read[40]["adaptive/weight/fit"] > 0
    assert read[40]["adaptive/first_nonfinite_step/fit"] == 0.0
    assert read[40]["loss/fit"] < read[10]["loss/fit"]
