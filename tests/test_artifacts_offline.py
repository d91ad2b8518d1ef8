"""Artifacts of runs started while their tracking server was down: they reach the run's
artifact location once the server has created the run, during the process or, after it
exited, by ``autolog sync``; checked with MLflow's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from click.testing import CliRunner

import autolog
from autolog.cli import main

pytest_plugins = ("mlflow_server",)


def downloaded(server, run_id: str, path: str, tmp_path: Path) -> bytes:
    target = tmp_path / "from-mlflow"
    target.mkdir(exist_ok=True)
    return Path(server.client().download_artifacts(run_id, path, str(target))).read_bytes()


def test_artifacts_of_an_offline_run_arrive_once_the_server_answers(fault_server, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "weights.bin").write_bytes(data)
    fault_server.kill()
    autolog.set_tracking_uri(fault_server.uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run starts offline: said by a warning
        with autolog.start_run(experiment="artifacts/offline") as run:
            autolog.log_artifact(tmp_path / "weights.bin", "model")
            autolog.log_text("offline notes", "notes.txt")
        assert run.id.startswith("offline-")
        assert not autolog.flush(timeout=1)  # nothing can be sent yet
        fault_server.start()
        assert autolog.flush(timeout=60)
    remote = fault_server.run_by_local_id(run.id)
    assert remote.info.artifact_uri.startswith("mlflow-artifacts:")
    assert downloaded(fault_server, remote.info.run_id, "model/weights.bin", tmp_path) == data
    assert downloaded(fault_server, remote.info.run_id, "notes.txt", tmp_path) == b"offline notes"


def test_autolog_sync_sends_an_offline_runs_artifacts_after_the_process_exits(fault_server, tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "report.bin").write_bytes(data)
    fault_server.kill()
    script = textwrap.dedent(f"""
        import autolog
        with autolog.start_run(experiment="artifacts/offline-exit") as run:
            autolog.log_artifact({str(tmp_path / 'report.bin')!r})
        print(run.id)
    """)
    env = {**os.environ, "AUTOLOG_TRACKING_URI": fault_server.uri, "AUTOLOG_EXIT_TIMEOUT": "1",
           "AUTOLOG_STRICT": "0"}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, env=env)
    assert child.returncode == 0, child.stderr
    local_id = child.stdout.split()[0]
    assert "1 artifact upload(s), 100.0 KB, not sent yet" in child.stderr
    assert "sent by: autolog sync" in child.stderr

    fault_server.start()
    result = CliRunner().invoke(main, ["sync"], env={"AUTOLOG_TRACKING_URI": fault_server.uri})
    assert result.exit_code == 0, result.output
    assert "uploaded 1 artifact(s)" in result.output
    remote = fault_server.run_by_local_id(local_id)
    assert remote.info.status == "FINISHED"
    assert downloaded(fault_server, remote.info.run_id, "report.bin", tmp_path) == data
