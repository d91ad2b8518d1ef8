"""The fluent API: runs, logging, reading back, active-run semantics across threads."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import autolog
from autolog.config import settings


def test_context_manager_run_records_everything(store_uri):
    with autolog.start_run(run_name="baseline", tags={"purpose": "sweep"}) as run:
        assert autolog.active_run() is run
        autolog.log_param("data_version", "v3")
        autolog.log_params({"lr": 0.01, "layers": 3})
        for step in range(5):
            autolog.log_metric("loss", 1.0 / (step + 1), step=step)
        autolog.log_metrics({"a": 1.0, "b": 2.0}, step=3)
        autolog.set_tag("team", "vision")
        autolog.set_tags({"owner": "ana"})
    assert autolog.active_run() is None
    record = autolog.get_run(run.id)
    assert record.status == "FINISHED" and record.info.end_time >= record.info.start_time
    assert record.info.run_name == "baseline"
    assert record.params == {"data_version": "v3", "lr": "0.01", "layers": "3"}
    assert record.metrics == {"loss": 0.2, "a": 1.0, "b": 2.0}
    assert {"purpose": "sweep", "team": "vision", "owner": "ana",
            "mlflow.runName": "baseline"}.items() <= record.tags.items()
    history = autolog.get_metric_history(run.id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]


def test_system_tags_say_who_and_where(store_uri, tmp_path):
    with autolog.start_run() as run:
        pass
    tags = autolog.get_run(run.id).tags
    for key in ("mlflow.user", "mlflow.source.name", "autolog.host", "autolog.python_version"):
        assert tags[key]
    assert tags["autolog.python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_git_tags_in_a_work_tree(tmp_path):
    from autolog.source import git_tags

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "feature"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert git_tags(str(repo)) == {"mlflow.source.git.commit": commit,
                                   "mlflow.source.git.branch": "feature",
                                   "autolog.source.git.dirty": "false"}
    (repo / "f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], cwd=repo, check=True)
    assert git_tags(str(repo))["autolog.source.git.dirty"] == "true"
    assert git_tags(str(tmp_path)) == {}


def test_failed_and_killed_runs(store_uri):
    with pytest.raises(RuntimeError):
        with autolog.start_run() as failed:
            autolog.log_metric("m", 1.0)
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with autolog.start_run() as killed:
            raise KeyboardInterrupt
    assert autolog.get_run(failed.id).status == "FAILED"
    assert autolog.get_run(failed.id).metrics == {"m": 1.0}
    assert autolog.get_run(killed.id).status == "KILLED"


def test_plain_calls_and_end_status(store_uri):
    run = autolog.start_run()
    autolog.log_metric("m", 2.0)
    autolog.end_run("KILLED")
    assert autolog.get_run(run.id).status == "KILLED"
    autolog.end_run()  # no active run: nothing to do
    with pytest.raises(ValueError, match="status"):
        autolog.start_run().end("DONE")


def test_logging_after_end_is_a_clear_error(store_uri):
    with autolog.start_run() as run:
        pass
    with pytest.raises(RuntimeError, match="has ended"):
        run.log_metric("late", 1.0)


def test_second_run_in_a_thread_needs_nested(store_uri):
    with autolog.start_run() as parent:
        with pytest.raises(RuntimeError, match="nested=True"):
            autolog.start_run()
        with autolog.start_run(run_name="child", nested=True) as child:
            assert autolog.active_run() is child
            autolog.log_metric("c", 1.0)
        assert autolog.active_run() is parent
    assert autolog.get_run(child.id).tags["mlflow.parentRunId"] == parent.id
    assert child.parent_id == parent.id
    assert child.server_id == child.id  # the embedded store has one id per run


def test_a_child_run_lives_in_its_parents_experiment(store_uri):
    with autolog.start_run(experiment="team/a") as parent:
        with autolog.start_run(nested=True) as child:
            pass
    assert child.experiment_id == parent.experiment_id
    found = autolog.search_runs("team/a")
    assert {r.run_id for r in found} == {child.id, parent.id}
    # newest first; runs started in the same millisecond (often both) by run id, as MLflow
    assert found == sorted(found, key=lambda r: (-r.info.start_time, r.run_id))


def test_a_run_started_in_one_thread_is_active_in_others(store_uri):
    seen = {}

    def worker():
        seen["active"] = autolog.active_run()
        autolog.log_metric("from_worker", 1.0, step=1)
        with autolog.start_run(run_name="worker-own") as own:  # its own run: not nested
            autolog.log_metric("own", 2.0)
            seen["own"] = own
        seen["after"] = autolog.active_run()

    with autolog.start_run() as run:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert autolog.active_run() is run  # the worker's own run never became ours
    assert seen["active"] is run and seen["after"] is run
    assert autolog.get_run(run.id).metrics == {"from_worker": 1.0}
    assert autolog.get_run(seen["own"].id).metrics == {"own": 2.0}
    assert "mlflow.parentRunId" not in autolog.get_run(seen["own"].id).tags


def test_log_metric_without_a_run_starts_one_that_ends_at_exit(tmp_path):
    script = textwrap.dedent(
        """
        import autolog
        autolog.log_metric("m", 1.0)
        autolog.log_param("p", 2)
        print(autolog.active_run().id)
        """
    )
    uri = f"sqlite:///{tmp_path / 'exit.db'}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "AUTOLOG_TRACKING_URI": uri}, check=True, timeout=60)
    run_id = out.stdout.strip()
    autolog.set_tracking_uri(uri)
    record = autolog.get_run(run_id)
    assert record.status == "FINISHED" and record.metrics == {"m": 1.0}
    assert record.params == {"p": "2"}


def test_uncaught_exception_ends_open_run_failed(tmp_path):
    script = "import autolog\nrun = autolog.start_run()\nprint(run.id, flush=True)\nraise SystemError('x')\n"
    uri = f"sqlite:///{tmp_path / 'crash.db'}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "AUTOLOG_TRACKING_URI": uri}, timeout=60)
    assert out.returncode == 1
    autolog.set_tracking_uri(uri)
    assert autolog.get_run(out.stdout.strip()).status == "FAILED"


def test_ctrl_c_ends_a_run_opened_without_with_killed(tmp_path):
    """A real SIGINT, as Ctrl-C sends it, reaches Python as an uncaught KeyboardInterrupt."""
    script = textwrap.dedent(
        """
        import os, signal, time, autolog
        run = autolog.start_run()
        for step in range(1000):
            autolog.log_metric("loss", 1.0 / (step + 1), step=step)
        print(run.id, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        """
    )
    uri = f"sqlite:///{tmp_path / 'interrupted.db'}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "AUTOLOG_TRACKING_URI": uri}, timeout=60)
    assert out.returncode == -signal.SIGINT and "KeyboardInterrupt" in out.stderr
    autolog.set_tracking_uri(uri)
    run_id = out.stdout.strip()
    assert autolog.get_run(run_id).status == "KILLED"
    assert len(autolog.get_metric_history(run_id, "loss")) == 1000


def test_numpy_nan_and_inf_values(store_uri):
    with autolog.start_run() as run:
        autolog.log_metric("f32", np.float32(0.5), step=np.int64(2))
        autolog.log_metric("nan", math.nan)
        autolog.log_metric("inf", math.inf)
        autolog.log_metric("ninf", -math.inf)
        autolog.log_metric("arr", np.array([3.0]))
        autolog.log_metric("int", 7)
    metrics = autolog.get_run(run.id).metrics
    assert metrics["f32"] == 0.5 and metrics["int"] == 7.0 and metrics["arr"] == 3.0
    # as MLflow's SQL store keeps them: NaN, and ±inf as ±max float
    assert math.isnan(metrics["nan"]) and metrics["inf"] == sys.float_info.max
    assert metrics["ninf"] == -sys.float_info.max
    assert autolog.get_metric_history(run.id, "f32")[0].step == 2


def test_history_orders_by_step_then_time(store_uri):
    with autolog.start_run() as run:
        autolog.log_metric("m", 3.0, step=3, timestamp=1000)
        autolog.log_metric("m", 1.0, step=1, timestamp=3000)
        autolog.flush()
        autolog.log_metric("m", 2.0, step=1, timestamp=2000)
        autolog.log_metric("m", 0.0, step=0, timestamp=5000)
    history = autolog.get_metric_history(run.id, "m")
    assert [(m.step, m.timestamp, m.value) for m in history] == [
        (0, 5000, 0.0), (1, 2000, 2.0), (1, 3000, 1.0), (3, 1000, 3.0)]
    assert autolog.get_run(run.id).metrics["m"] == 3.0  # latest = highest step


def test_experiments_and_search(store_uri, monkeypatch):
    with autolog.start_run(experiment="team/project/model") as first:
        pass
    autolog.set_experiment("team/project/other")
    with autolog.start_run() as second:
        pass
    monkeypatch.setenv("AUTOLOG_EXPERIMENT", "from-env")
    settings.experiment = None
    with autolog.start_run() as third:
        pass
    assert [r.run_id for r in autolog.search_runs("team/project/model")] == [first.id]
    found = autolog.search_runs(["team/project/other", "from-env"])  # newest first, as MLflow
    assert [r.run_id for r in found] == [r.run_id for r in sorted(
        found, key=lambda r: (-r.info.start_time, r.run_id))]
    assert {r.run_id for r in found} == {second.id, third.id}
    with pytest.raises(ValueError, match="no experiment named 'no-such-experiment' in sqlite:///"):
        autolog.search_runs(["team/project/model", "no-such-experiment"])
    monkeypatch.setenv("AUTOLOG_EXPERIMENT", "no-run-yet")  # the current one: no error
    assert autolog.search_runs("no-run-yet") == autolog.search_runs() == []
    with pytest.raises(ValueError, match="experiment name"):
        autolog.set_experiment("")


def test_tracking_uri_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOLOG_TRACKING_URI")
    assert autolog.get_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow-env.db")
    assert autolog.get_tracking_uri() == "sqlite:///mlflow-env.db"
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", "sqlite:///autolog-env.db")
    assert autolog.get_tracking_uri() == "sqlite:///autolog-env.db"
    autolog.autolog(tracking_uri="sqlite:///argument.db")
    assert autolog.get_tracking_uri() == "sqlite:///argument.db"
    with pytest.raises(ValueError, match="tracking URI"):
        autolog.set_tracking_uri("file:///mlruns")


def test_resume_unknown_run_is_a_clear_error(store_uri):
    with pytest.raises(autolog.RunNotFoundError, match="no run 'missing'"):
        autolog.start_run(run_id="missing")


def test_autolog_rejects_unknown_integrations():
    with pytest.raises(TypeError, match="unknown integration"):
        autolog.autolog(caffe=True)
