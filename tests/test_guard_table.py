"""The one table from the settings of ``guarded`` to the guard records, and the records' shape."""

import inspect

import jax
import pytest

import adaptive_optax as ao
from adaptive_optax._src.guards import RELAXED as PACKAGE_RELAXED
from adaptive_optax._src.guards import TABLE, Decision, checked_guards, guarded

NOT_GUARD_SETTINGS = {"adapt", "every", "axis_name", "dtype"}  # terms, a combinator, the run
RECORDS = set(TABLE.values())


def keyword_settings():
    return {
        name: parameter.default
        for name, parameter in inspect.signature(ao.guarded).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_every_setting_of_guarded_is_routed_by_the_table():
    assert set(keyword_settings()) - NOT_GUARD_SETTINGS == set(TABLE)


def test_each_record_owns_exactly_its_rows_of_the_table():
    for record in RECORDS:
        rows = [name for name, owner in TABLE.items() if owner is record]
        assert list(record._fields) == rows, record.__name__


def test_each_record_checks_its_settings_and_documents_them():
    for record in RECORDS:
        assert inspect.signature(record.checked).parameters.keys() == set(record._fields)
        assert "Raises:" in record.checked.__doc__, record.__name__
        for field in record._fields:
            assert f"{field}:" in record.__doc__, (record.__name__, field)


def test_the_defaults_of_guarded_pass_every_check():
    defaults = keyword_settings()
    guards = checked_guards(defaults)
    assert set(guards) == RECORDS
    for record, value in guards.items():
        assert isinstance(value, record)


def test_the_old_import_path_still_works():
    assert guarded is ao.guarded and PACKAGE_RELAXED is ao.RELAXED


def test_the_state_structure_does_not_depend_on_the_settings():
    # settings are closed over, never in the state: the state's structure is the same under
    # any settings, so any checkpoint resumes under any settings
    base = {"a": 1.0, "b": 2.0}
    plain = ao.guarded(ao.tanh_rule(), base).init()
    for settings in (ao.RELAXED, dict(spike_threshold=3.0, ramp_steps=5, moves="ratios")):
        other = ao.guarded(ao.tanh_rule(), base, **settings).init()
        assert jax.tree.structure(other) == jax.tree.structure(plain)


def test_decision_fields_are_documented():
    for field in Decision._fields:
        assert f"{field}:" in Decision.__doc__


@pytest.mark.parametrize("name", sorted(TABLE))
def test_a_bad_value_of_each_setting_is_named(name):
    bad = {"bounds": (2.0, 1.0, 0.5), "moves": "scale", "normalize": "mean", "auto_rollback": 2}
    with pytest.raises(ValueError, match=f"^{name}"):
        ao.guarded(ao.tanh_rule(), {"a": 1.0}, **{name: bad.get(name, -5)})
