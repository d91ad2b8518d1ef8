"""The `autolog` command: runs list/show, experiments list, clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import autolog
from autolog.cli import main

pytest_plugins = ("mlflow_server",)


@pytest.fixture
def logged_run(store_uri):
    with autolog.start_run(run_name="baseline", experiment="team/proj") as run:
        autolog.log_param("lr", 0.1)
        autolog.log_metric("loss", 0.5, step=1)
        autolog.log_metric("loss", 0.25, step=2)
        autolog.log_metric("diverged", float("nan"))
        autolog.set_tag("team", "vision")
    return run


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_runs_list_table_and_json(logged_run):
    table = invoke("runs", "list")
    assert table.exit_code == 0
    assert logged_run.id in table.output and "baseline" in table.output
    assert "team/proj" in table.output and "FINISHED" in table.output
    listed = json.loads(invoke("runs", "list", "--experiment", "team/proj", "--json").output)
    assert [r["run_id"] for r in listed] == [logged_run.id]


def test_runs_show(logged_run):
    shown = invoke("runs", "show", logged_run.id)
    assert shown.exit_code == 0
    for fragment in ("status     FINISHED", "lr = 0.1", "loss = 0.25", "team = vision"):
        assert fragment in shown.output
    data = json.loads(invoke("runs", "show", logged_run.id, "--json").output)
    assert data["params"] == {"lr": "0.1"}
    assert data["metrics"] == {"diverged": "nan", "loss": 0.25}
    assert data["status"] == "FINISHED"


def test_experiments_list(logged_run):
    out = invoke("experiments", "list", "--json")
    assert [e["name"] for e in json.loads(out.output)] == ["Default", "team/proj"]  # MLflow's 0


def test_unknown_run_and_experiment_exit_non_zero(logged_run):
    missing = invoke("runs", "show", "0123")
    assert missing.exit_code == 1 and "no run '0123'" in missing.output
    unknown = invoke("runs", "list", "--experiment", "nope")
    assert unknown.exit_code == 1 and "no experiment named 'nope'" in unknown.output


def test_missing_store_is_an_error_not_a_new_file(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    out = invoke("runs", "list", "--tracking-uri", uri)
    assert out.exit_code == 1 and "no MLflow database" in out.output
    assert not (tmp_path / "absent.db").exists()
    bad = invoke("runs", "list", "--tracking-uri", "ftp://x")
    assert bad.exit_code == 1 and "tracking URI must be" in bad.output


def test_installed_console_script(logged_run, store_uri):
    beside_python = Path(sys.executable).parent / "autolog"
    executable = str(beside_python) if beside_python.exists() else shutil.which("autolog")
    assert executable, "the autolog console script is not installed"
    out = subprocess.run([executable, "runs", "show", logged_run.id, "--tracking-uri", store_uri],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "lr = 0.1" in out.stdout


@pytest.fixture
def broken_stores(tmp_path, unused_uri, scripted_server):
    """A tracking URI per operational failure, each as a user meets it."""
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database " * 400)
    scripted_server.script = [(500, {"error_code": "INTERNAL_ERROR", "message": "boom"})] * 20
    return {
        "server down": unused_uri,
        "https to an http server": scripted_server.uri.replace("http://", "https://"),
        "server error": scripted_server.uri,
        "missing file": f"sqlite:///{tmp_path / 'absent.db'}",
        "corrupt file": f"sqlite:///{corrupt}",
    }


@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "show", "0123"],
                                     ["runs", "end", "0123"], ["experiments", "list"],
                                     ["sync", "--to", "sqlite:///copy.db"]], ids=" ".join)
@pytest.mark.parametrize("failure", ["server down", "https to an http server", "server error",
                                     "missing file", "corrupt file"])
def test_an_operational_error_is_one_line_and_a_non_zero_exit(command, failure, broken_stores,
                                                              monkeypatch):
    from autolog.stores import mlflow_rest

    monkeypatch.setattr(mlflow_rest, "BACKOFF_FACTOR_S", 0.01)
    option = "--from" if command[0] == "sync" else "--tracking-uri"
    out = invoke(*command, option, broken_stores[failure])  # raises if it escapes
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.output
    assert "Traceback" not in out.output


def _killed_job(tracking_uri: str, tmp_path: Path) -> str:
    """A job that starts a run, logs, and dies by SIGKILL: the run is left RUNNING."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, autolog\n"
        "run = autolog.start_run(run_name='dead job')\n"
        "autolog.log_metric('loss', 0.5)\n"
        "autolog.flush()\n"
        "print(run.id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "AUTOLOG_TRACKING_URI": tracking_uri}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.split()[0]


def test_runs_end_closes_what_a_killed_job_left_running(store_uri, tmp_path):
    run_id = _killed_job(store_uri, tmp_path)
    assert autolog.get_run(run_id).status == "RUNNING"
    out = invoke("runs", "end", run_id)
    assert out.exit_code == 0 and out.output == f"{run_id}: RUNNING -> KILLED\n"
    ended = autolog.get_run(run_id)
    assert ended.status == "KILLED" and ended.info.end_time is not None
    assert ended.metrics == {"loss": 0.5}

    again = invoke("runs", "end", run_id, "--status", "FAILED")
    assert again.exit_code == 0 and "already KILLED, left as it is" in again.output
    assert autolog.get_run(run_id).status == "KILLED"

    missing = CliRunner().invoke(main, ["runs", "end", "0123", run_id])
    assert missing.exit_code == 1 and "no run '0123'" in missing.output


def test_runs_end_on_a_server_as_mlflow_sees_it(sqlite_server, spool_dir, tmp_path):
    run_id = _killed_job(sqlite_server.uri, tmp_path)
    client = sqlite_server.client()
    assert client.get_run(run_id).info.status == "RUNNING"
    out = invoke("runs", "end", run_id, "--status", "FAILED", "--tracking-uri", sqlite_server.uri)
    assert out.exit_code == 0, out.output
    info = client.get_run(run_id).info
    assert info.status == "FAILED" and info.end_time is not None


def test_version_names_the_distribution_autolog_ml():
    from importlib.metadata import version

    out = invoke("--version")
    assert out.exit_code == 0 and out.output.strip().endswith(f", version {version('autolog-ml')}")
