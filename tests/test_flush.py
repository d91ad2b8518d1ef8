"""``autolog.flush(timeout=…)`` with a tracking server: True once the server has
acknowledged all that was logged before the call, False after the timeout, saying what is
left. What reached the server is read with MLflow's own client, right after the flush."""

from __future__ import annotations

import time

import pytest
from test_spool import messages, recorded_warnings

import autolog
from autolog.stores.spool.spool_file import sync_command

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

POINTS = 50_000


def history(server, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in server.client().get_metric_history(run_id, key))


def test_flush_returns_once_the_server_has_every_point_param_tag_and_status(mlflow_server):
    """The issue's script: 50,000 points to a local ``mlflow server``, the run ended, then
    ``flush()``; MLflow's client, right after, sees all of it and the run FINISHED."""
    autolog.set_tracking_uri(mlflow_server.uri)
    with autolog.start_run(run_name="flushed", experiment="flush/acknowledged") as run:
        autolog.log_params({"lr": 0.01, "layers": 3})
        autolog.set_tags({"team": "vision", "phase": "train"})
        for step in range(POINTS):
            autolog.log_metric("loss", 1 / (step + 1), step=step)
    assert autolog.flush()
    remote = mlflow_server.client().get_run(run.id)
    assert remote.info.status == "FINISHED" and remote.info.end_time is not None
    assert remote.data.params == {"lr": "0.01", "layers": "3"}
    assert {"team": "vision", "phase": "train"}.items() <= remote.data.tags.items()
    assert history(mlflow_server, run.id, "loss") == [(step, 1 / (step + 1))
                                                       for step in range(POINTS)]


def test_flush_with_the_server_down_says_what_is_left_and_succeeds_once_it_is_back(
        fault_server, spool_dir):
    autolog.set_tracking_uri(fault_server.uri)
    with autolog.start_run(run_name="outage", experiment="flush/outage") as run:
        autolog.log_param("lr", 0.1)
        for step in range(1_000):
            autolog.log_metric("loss", float(step), step=step)
        assert autolog.flush(timeout=30)
        assert len(history(fault_server, run.id, "loss")) == 1_000
        fault_server.kill()
        autolog.set_tag("phase", "logged while down")
        for step in range(1_000, 3_000):
            autolog.log_metric("loss", float(step), step=step)
    with recorded_warnings() as seen:
        started = time.monotonic()
        assert not autolog.flush(timeout=2)
        waited = time.monotonic() - started
    assert 1.9 < waited < 4, f"flush(timeout=2) returned after {waited:.2f} s"
    [said] = [w for w in messages(seen).splitlines() if "not acknowledged" in w]
    assert "2,000 metric points" in said and "of 1 run(s)" in said
    assert f"`{sync_command(spool_dir)}`" in said

    fault_server.start()
    assert autolog.flush(timeout=60)
    remote = fault_server.client().get_run(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params == {"lr": "0.1"} and remote.data.tags["phase"] == "logged while down"
    assert history(fault_server, run.id, "loss") == [(step, float(step)) for step in range(3_000)]


@pytest.mark.parametrize("timeout, error", [(-1, ValueError), (float("nan"), ValueError),
                                            ("10", TypeError), (True, TypeError)])
def test_a_timeout_that_is_not_seconds_is_refused_at_the_call(timeout, error):
    with pytest.raises(error, match="timeout"):
        autolog.flush(timeout=timeout)
