"""Fuzz: keys, values, steps and timestamps through a real ``mlflow server``.

Every input is either refused at the call site (``ValueError``/``TypeError``, raised in
the caller's call) or stored exactly, as read back with MLflow's own ``MlflowClient``;
and the server refuses no request. Inputs: text with lone surrogates, NUL, astral and
accented characters, lengths at MLflow's limits; ints far beyond a float and an int64;
floats with NaN, ±inf and subnormals; numpy, Decimal and Fraction scalars.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autolog
from autolog.validation import MAX_KEY_LENGTH, MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

FLOAT_MAX = sys.float_info.max
ODD_CHARACTERS = ["\udcff", "\ud800", "\x00", "\U0001f600", "\U00010348", "é", "\u2028",
                  "\r", "\n", "\t", "'", '"', "`", "\\", "%", "?", "&", "#", "=", "+"]

any_character = st.one_of(st.characters(exclude_categories=()), st.sampled_from(ODD_CHARACTERS))
key_character = st.one_of(st.sampled_from(list("abcXYZ019_-./ :")), any_character)


def near(limit: int) -> st.SearchStrategy[str]:
    """A string of one repeated character, a few characters either side of ``limit``."""
    return st.tuples(st.integers(limit - 3, limit + 3), any_character).map(lambda t: t[1] * t[0])


valid_keys = st.one_of(st.from_regex(r"[a-z][a-z0-9_./ :-]{0,30}", fullmatch=True),
                       st.text(st.characters(categories=["L", "Nd"]), min_size=1, max_size=10))
keys = st.one_of(valid_keys, valid_keys, valid_keys, st.text(key_character, max_size=12),
                 near(MAX_KEY_LENGTH), st.integers(0, 9))
param_values = st.one_of(st.text(any_character, max_size=40), near(MAX_PARAM_VALUE_LENGTH))
tag_values = st.one_of(st.text(any_character, max_size=40), near(MAX_TAG_VALUE_LENGTH))
metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.integers(-(2**1100), 2**1100),
    st.sampled_from([10**400, -(10**400), 2**1024 - 2**970, 2**1024 - 2**970 - 1, 2**53 + 1]),
    st.floats(width=32, allow_nan=True, allow_infinity=True).map(np.float32),
    st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(0, 2**64 - 1).map(np.uint64),
    st.fractions(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from([None, "1.0", b"1", [1.0], complex(1, 0)]),
)
steps = st.one_of(st.none(), st.integers(-(2**64), 2**64), st.integers(-(2**63), 2**63 - 1),
                  st.floats(allow_nan=True, allow_infinity=True),
                  st.integers(-(2**63), 2**63 - 1).map(np.int64), st.integers(0, 2**64 - 1).map(np.uint64))
timestamps = st.one_of(st.none(), st.none(), st.integers(-5, 2**64), st.integers(0, 2**63 - 1),
                       st.floats(min_value=-1.0, max_value=2e19), st.just(math.nan))

operations = st.one_of(
    st.tuples(st.just("param"), keys, param_values),
    st.tuples(st.just("tag"), keys, tag_values),
    st.tuples(st.just("metric"), keys, metric_values, steps, timestamps),
    st.tuples(st.just("metric"), valid_keys, metric_values, steps, timestamps),
)


def as_mlflow_stores(value: float) -> object:
    """NaN is NaN (not equal to itself: compared as a marker); ±inf is ±max float."""
    if math.isnan(value):
        return "nan"
    return max(-FLOAT_MAX, min(FLOAT_MAX, value))


@settings(max_examples=70, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(operations, min_size=1, max_size=8))
def test_every_input_is_refused_at_the_call_or_stored_exactly(sqlite_server, batch):
    refused_before = len(sqlite_server.refused_log_batches())
    autolog.set_tracking_uri(sqlite_server.uri)
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    points: dict[str, set] = {}
    explicit: dict[str, set] = {}  # points with a timestamp given
    with autolog.start_run(run_name="fuzz") as run:
        for operation in batch:
            kind, key, value = operation[:3]
            try:
                if kind == "param":
                    autolog.log_param(key, value)
                elif kind == "tag":
                    autolog.set_tag(key, value)
                else:
                    autolog.log_metric(key, value, step=operation[3], timestamp=operation[4])
            except (ValueError, TypeError):
                continue  # refused at the call: nothing to find on the server
            if kind == "param":
                params.setdefault(key, value)  # an equivalent repeat is not sent again
            elif kind == "tag":
                tags[key] = value
            else:
                step = 0 if operation[3] is None else int(operation[3])
                stored = as_mlflow_stores(float(value))
                points.setdefault(key, set()).add((step, stored))
                if operation[4] is not None:
                    explicit.setdefault(key, set()).add((step, int(operation[4]), stored))
    assert run.store.wait_until_sent(60)

    client = sqlite_server.client()
    remote = client.get_run(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params == params
    for key, value in tags.items():
        assert remote.data.tags[key] == value
    for key in points:
        history = client.get_metric_history(run.id, key)
        assert {(m.step, as_mlflow_stores(m.value)) for m in history} == points[key], key
        held = {(m.step, m.timestamp, as_mlflow_stores(m.value)) for m in history}
        assert explicit.get(key, set()) <= held, key
    assert set(remote.data.metrics) == set(points)
    assert sqlite_server.refused_log_batches()[refused_before:] == []

