"""A real ``mlflow server`` for tests, and the fixtures that start one.

The server runs from this interpreter's environment on a free 127.0.0.1 port, with a
SQLite backend store in a temp dir, or a PostgreSQL one in a database of its own when
PostgreSQL answers at 127.0.0.1:5432 (created for the test session and dropped after),
or on any database a test names (:func:`mlflow_server_on`), or as ``mlflow ui`` with
MLflow's default store, as a user starts it in a directory.
Its log (uvicorn's access log included) goes to a file, so a test can assert that no
log-batch was refused; it can be killed with SIGKILL and started again on the same port.
A scripted HTTP server stands in where a test needs answers a real server will not give.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from databases import POSTGRES, fresh_postgres_database

START_TIMEOUT_S = 120.0
_REFUSED_LOG_BATCH = re.compile(r'"POST /api/2\.0/mlflow/runs/log-batch HTTP/[\d.]+" (4\d\d|5\d\d)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server run as a process of its own (its own process group, so that a kill reaches
    its workers), on a free 127.0.0.1 port that a restart keeps, its output in a log file.
    Subclasses say how to start it (:meth:`command`, :meth:`environment`) and when it is up
    (:meth:`answers`)."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None, log_name: str):
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / log_name
        self._process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self):
        """Start (or restart, on the same port) and wait until it answers."""
        assert not self.running, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.environment(), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                if self.answers():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT_S:.0f} s:\n"
                           f"{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (no clean shutdown)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass
        try:
            self._process.wait(timeout=3)
        except subprocess.TimeoutExpired:  # a graceful stop waits for idle keep-alive clients
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=15)
        self._process = None


class MlflowServer(ServerProcess):
    """``mlflow server --backend-store-uri <backend_uri>`` run in ``workdir``; with
    ``backend_uri=None``, ``mlflow ui`` with no store flag: MLflow's default store there.

    Its artifacts are proxied to ``workdir/artifacts`` unless ``artifact_args`` says
    otherwise (``--default-artifact-root s3://… --no-serve-artifacts``). Its environment is
    this one without MLFLOW_*, AUTOLOG_* settings, plus ``env`` (an S3 endpoint, say)."""

    name = "mlflow server"

    def __init__(self, backend_uri: str | None, workdir: Path, port: int | None = None,
                 artifact_args: list[str] | None = None, env: dict[str, str] | None = None):
        super().__init__(workdir, port, "server.log")
        self.backend_uri = backend_uri
        self.artifact_args = artifact_args or ["--artifacts-destination", str(workdir / "artifacts")]
        self.env = env or {}

    def __repr__(self) -> str:
        backend = self.backend_uri.split(":")[0] if self.backend_uri else "mlflow ui default"
        return f"MlflowServer({self.uri}, backend={backend})"

    def command(self) -> list[str]:
        if self.backend_uri is None:
            command = ["ui"]
        else:
            command = ["server", "--backend-store-uri", self.backend_uri, *self.artifact_args]
        return [sys.executable, "-m", "mlflow", *command,
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_", "AUTOLOG_"))}
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1", **self.env)
        return env

    def answers(self) -> bool:
        return requests.get(f"{self.uri}/health", timeout=1).status_code == 200

    def client(self):
        """MLflow's own client: what the tests check the server against."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def run_by_local_id(self, local_id: str):
        """The server's run that a run started offline (``offline-…``) became."""
        from autolog.stores.spool.sender import LOCAL_RUN_ID_TAG

        client = self.client()
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments,
                                   filter_string=f"tags.`{LOCAL_RUN_ID_TAG}` = '{local_id}'")
        assert len(found) == 1, f"{len(found)} server runs for {local_id}"
        return found[0]

    def refused_log_batches(self) -> list[str]:
        """Access-log lines of log-batch requests the server answered with an error."""
        return [line for line in self.log_text().splitlines() if _REFUSED_LOG_BATCH.search(line)]


class Scripted(BaseHTTPRequestHandler):
    """Answers from ``server.script``, a list of (status, body or body(request)), then 200
    ``{}``; records every request in ``server.seen``."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self):  # noqa: N802
        self._answer()

    def do_PUT(self):  # noqa: N802
        self._answer()

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"path": self.path, "headers": dict(self.headers),
                                 "body": self.rfile.read(length)})
        status, body = self.server.script.pop(0) if self.server.script else (200, {})
        if callable(body):
            body = body(self.server.seen[-1])
        self.send_json(status, body)

    def send_json(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow-sqlite")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    with fresh_postgres_database("autolog_test") as database:
        workdir = tmp_path_factory.mktemp("mlflow-postgres")
        server = MlflowServer(
            f"postgresql+psycopg2://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}", workdir)
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def mlflow_server(request):
    """Each test that takes it runs against a SQLite-backed and a PostgreSQL-backed server."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def spare_server(tmp_path_factory):
    """A SQLite-backed server that tests may kill and restart (see :func:`fault_server`)."""
    workdir = tmp_path_factory.mktemp("mlflow-spare")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir).start()
    yield server
    server.stop()


@pytest.fixture
def fault_server(spare_server):
    """The spare server, running when the test starts, whatever the last test did to it."""
    if not spare_server.running:
        spare_server.start()
    return spare_server


@pytest.fixture
def mlflow_server_on(tmp_path_factory):
    """``mlflow_server_on(uri)`` starts ``mlflow server --backend-store-uri <uri>`` and
    returns it; ``mlflow_server_on(None, workdir=d)`` starts ``mlflow ui`` in ``d`` with no
    flag. Every server it started is stopped after the test (before a database fixture
    the test took first is dropped)."""
    servers: list[MlflowServer] = []

    def start(uri: str | None, workdir: Path | None = None) -> MlflowServer:
        server = MlflowServer(uri, workdir or tmp_path_factory.mktemp("mlflow-server"))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def scripted_server():
    """A local HTTP server that answers what the test scripts (transport details, errors)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.uri = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def unused_uri() -> str:
    """An http URI nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    """Spools go to the test's temp dir, and no credentials from the environment."""
    directory = tmp_path / "spool"
    monkeypatch.setenv("AUTOLOG_SPOOL_DIR", str(directory))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    return directory
