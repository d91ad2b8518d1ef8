"""Values no store can take are refused at the caller's line, and nothing logged before
(or after) is lost: on the embedded store and on a real ``mlflow server``.

Before, these were accepted and jammed the writer: the embedded store kept the run
RUNNING with 0 points, and on a server every later batch of the process's spool was stuck.
"""

from __future__ import annotations

import math
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import autolog

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

THIS_FILE = Path(__file__).resolve()
AUTOLOG_DIR = Path(autolog.__file__).resolve().parent
POINTS_BEFORE, POINTS_AFTER = 150, 50
SURROGATE_PATH = "/data/\udcff.csv"  # what os.fsdecode gives for the bytes b"/data/\xff.csv"

BAD_CALLS = {
    "param value with a lone surrogate": (lambda: autolog.log_param("path", SURROGATE_PATH),
                                          "not valid Unicode text"),
    "params dict with a lone surrogate": (lambda: autolog.log_params({"ok": 1, "path": SURROGATE_PATH}),
                                          "not valid Unicode text"),
    "param key with a lone surrogate": (lambda: autolog.log_param("p\udcff", 1),
                                        "not valid Unicode text"),
    "tag value with a lone surrogate": (lambda: autolog.set_tag("path", SURROGATE_PATH),
                                        "not valid Unicode text"),
    "tag value with NUL": (lambda: autolog.set_tag("blob", "a\x00b"), "NUL character"),
    "run name with a lone surrogate": (
        lambda: autolog.start_run(run_name="run-\udcff", nested=True), "not valid Unicode text"),
    "experiment name with a lone surrogate": (lambda: autolog.set_experiment("exp-\udcff"),
                                              "not valid Unicode text"),
    "start_run experiment with a lone surrogate": (
        lambda: autolog.start_run(experiment="exp-\udcff", nested=True), "not valid Unicode text"),
    "int value beyond a float": (lambda: autolog.log_metric("m", 10**400), "beyond the range"),
    "negative int value beyond a float": (lambda: autolog.log_metric("m", -(10**400)),
                                          "beyond the range"),
    "Fraction beyond a float": (lambda: autolog.log_metric("m", Fraction(10**400, 3)),
                                "beyond the range"),
    "Decimal beyond a float": (lambda: autolog.log_metric("m", Decimal("1e400")),
                               "beyond the range"),
    "signaling NaN Decimal": (lambda: autolog.log_metric("m", Decimal("sNaN")),
                              "not a number a float can hold"),
    "log_metrics with an int beyond a float": (lambda: autolog.log_metrics({"a": 1.0, "m": 10**400}),
                                               "beyond the range"),
    "step 2**63": (lambda: autolog.log_metric("m", 1.0, step=2**63), "64-bit integer"),
    "step below -2**63": (lambda: autolog.log_metric("m", 1.0, step=-(2**63) - 1), "64-bit integer"),
    "step inf": (lambda: autolog.log_metric("m", 1.0, step=math.inf), "must be an integer"),
    "numpy step inf": (lambda: autolog.log_metric("m", 1.0, step=np.float64("inf")),
                       "must be an integer"),
    "log_metrics step 2**63": (lambda: autolog.log_metrics({"m": 1.0}, step=2**63), "64-bit integer"),
    "timestamp 2**63": (lambda: autolog.log_metric("m", 1.0, timestamp=2**63), "64-bit integer"),
    "timestamp 10**400": (lambda: autolog.log_metric("m", 1.0, timestamp=10**400), "64-bit integer"),
    "timestamp negative": (lambda: autolog.log_metric("m", 1.0, timestamp=-1), "non-negative"),
    "timestamp NaN": (lambda: autolog.log_metric("m", 1.0, timestamp=math.nan), "64-bit integer"),
}
if np.finfo(np.longdouble).max > sys.float_info.max:  # x86-64: 80-bit long double
    BAD_CALLS["numpy longdouble beyond a float"] = (
        lambda: autolog.log_metric("m", np.longdouble("1e400")), "beyond the range")


def assert_raised_at_call_site(excinfo: pytest.ExceptionInfo) -> None:
    """Raised synchronously in the caller's call: the traceback runs from this file
    straight into autolog's checks, with no writer thread or store in between."""
    paths = [Path(str(entry.path)).resolve() for entry in excinfo.traceback]
    assert paths[0] == THIS_FILE
    inside = [path for path in paths if path != THIS_FILE]
    assert inside, "raised in the test itself"
    assert paths.index(inside[0]) == len(paths) - len(inside), paths  # the caller, then autolog
    assert all(AUTOLOG_DIR in path.parents for path in inside), paths
    assert inside[-1].name == "validation.py", paths
    assert "stores" not in {part for path in inside for part in path.parts}, paths


@pytest.fixture(params=["embedded", "server"])
def backend(request):
    if request.param == "server":
        server = request.getfixturevalue("sqlite_server")
        autolog.set_tracking_uri(server.uri)
        return server
    return None


def stored(backend, run) -> tuple[list[tuple[int, float]], dict[str, str], dict[str, str], str]:
    """(step, value) of metric ``m``, params, tags and status as the store holds them; on a
    server read with MLflow's own client."""
    if backend is None:
        history = autolog.get_metric_history(run.id, "m")
        record = autolog.get_run(run.id)
        return ([(p.step, p.value) for p in history], record.params, record.tags,
                record.info.status)
    assert run.store.wait_until_sent(60)
    client = backend.client()
    remote = client.get_run(run.id)
    history = sorted(client.get_metric_history(run.id, "m"), key=lambda p: p.step)
    return ([(p.step, p.value) for p in history], remote.data.params, remote.data.tags,
            remote.info.status)


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_a_value_no_store_can_take_is_refused_at_the_call_and_nothing_is_lost(backend, case):
    bad_call, message = BAD_CALLS[case]
    refused_before = len(backend.refused_log_batches()) if backend else 0
    run = autolog.start_run(run_name=f"refused {case}")
    autolog.log_param("lr", 0.1)
    autolog.set_tag("team", "vision")
    for step in range(POINTS_BEFORE):
        autolog.log_metric("m", step / 10, step=step)

    with pytest.raises(ValueError, match=message) as excinfo:
        bad_call()
    assert_raised_at_call_site(excinfo)
    assert autolog.active_run() is run  # the run goes on

    for step in range(POINTS_BEFORE, POINTS_BEFORE + POINTS_AFTER):
        autolog.log_metric("m", step / 10, step=step)
    autolog.log_param("after", "yes")
    autolog.end_run()

    points, params, tags, status = stored(backend, run)
    assert len(points) == POINTS_BEFORE + POINTS_AFTER
    assert points == [(step, step / 10) for step in range(POINTS_BEFORE + POINTS_AFTER)]
    assert params == {"lr": "0.1", "after": "yes"}
    assert tags["team"] == "vision" and "path" not in tags and "blob" not in tags
    assert status == "FINISHED"
    if backend is not None:
        assert len(backend.refused_log_batches()) == refused_before


def test_values_at_the_edges_are_accepted_and_stored_exactly(backend):
    """The other side of each limit is taken, and stored as a float64 holds it."""
    edges = [
        (2**1023, 0, None), (-(2**1023), 1, None), (2**1024 - 2**971, 2, None),  # largest float
        (Fraction(1, 3), 3, None), (Decimal("1e308"), 4, None), (Decimal("-Infinity"), 5, None),
        (np.int64(2**63 - 1), 6, None), (np.uint64(2**64 - 1), 7, None), (True, 8, None),
        (0.5, 2**63 - 1, 2**63 - 1), (0.25, -(2**63), 0), (1.0, np.int64(9), None),
    ]
    with autolog.start_run() as run:
        autolog.log_param("path", "/data/\U0001f600 ünïcode.csv")  # astral and accented: text
        for value, step, timestamp in edges:
            autolog.log_metric("m", value, step=step, timestamp=timestamp)
    points, params, _, status = stored(backend, run)
    expected = sorted((int(step), float(value)) for value, step, _ in edges)
    # -inf is kept as the lowest float, MLflow's own rule on every store
    expected = [(s, -sys.float_info.max if v == -math.inf else v) for s, v in expected]
    assert sorted(points) == expected
    assert params == {"path": "/data/\U0001f600 ünïcode.csv"}
    assert status == "FINISHED"


def test_log_metric_fast_path_still_checks_an_int_step_range():
    """``type(step) is int`` was the whole check on the hot path; 2**63 slipped through."""
    with autolog.start_run() as run:
        run.log_metric("m", 1.0, step=2**63 - 1)
        with pytest.raises(ValueError, match="64-bit integer") as excinfo:
            run.log_metric("m", 1.0, step=2**63)
        assert_raised_at_call_site(excinfo)
        with pytest.raises(ValueError, match="beyond the range") as excinfo:
            run.log_metric("m", 2**1024, step=1)
        assert_raised_at_call_site(excinfo)
    assert [(p.step, p.value) for p in autolog.get_metric_history(run.id, "m")] == [(2**63 - 1, 1.0)]


def test_an_autologged_param_with_a_surrogate_is_skipped_with_a_warning():
    """Integrations never raise for a bad value: it is skipped, said, and the rest kept."""
    with autolog.start_run() as run:
        with pytest.warns(autolog.AutologWarning, match="skipped param.*not valid Unicode text"):
            kept = run.log_autolog_params({"path": SURROGATE_PATH, "alpha": 0.5}, "sklearn")
    assert kept == {"alpha": "0.5"}
    assert autolog.get_run(run.id).params == {"alpha": "0.5"}
