"""An S3-compatible server for tests: moto's server mode, in a process of its own.

A separate process rather than moto's in-process server, so the S3 traffic crosses a real
socket as it does to MinIO or AWS, and a test can SIGKILL the endpoint mid-upload. Its
spilled object bodies go to a temp dir. A mlflow server whose default artifact root is in
that bucket (``--no-serve-artifacts``: clients go to S3 themselves) comes with it, and a
scripted endpoint answers what moto will not (throttling, refusals).
"""

from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from mlflow_server import MlflowServer, ServerProcess

BUCKET = "autolog-artifacts"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer(ServerProcess):
    """``python -m moto.server`` on a free 127.0.0.1 port; its state (buckets, objects)
    lives in the process, so a restart starts empty."""

    name = "moto server"

    def __init__(self, workdir: Path, port: int | None = None):
        super().__init__(workdir, port, "moto.log")

    def __repr__(self) -> str:
        return f"MotoServer({self.uri})"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_", "AUTOLOG_", "AWS_"))}
        env["TMPDIR"] = str(self.workdir)  # object bodies over 5 MB spill to files there
        return env

    def answers(self) -> bool:
        requests.get(f"{self.uri}/moto-api/", timeout=1)
        return True

    def client(self):
        """A boto3 client of its own (not autolog's), for checking what the bucket holds."""
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.uri, aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"])

    def create_bucket(self, name: str = BUCKET) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """What a process needs to use this endpoint as MLflow's S3 artifact store."""
        return {**AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": self.uri}


def start_moto(workdir: Path, port: int | None = None) -> MotoServer:
    """A started moto server with the test bucket; the test skips, saying why, where moto
    is not installed or does not start."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f'moto\'s S3 server is not installed ({exc}): pip install "moto[server]" boto3')
    server = MotoServer(workdir, port)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"moto's S3 server did not start: {exc}")
    server.create_bucket()
    return server


def use_s3_endpoint(monkeypatch, endpoint_url: str) -> None:
    """This process uses ``endpoint_url`` with the test credentials, as an MLflow user
    configures an S3-compatible store; no other AWS or MLFLOW_S3_* setting leaks in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_S3_")):
            monkeypatch.delenv(name)
    for name, value in {**AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint_url}.items():
        monkeypatch.setenv(name, value)


class ScriptedS3(BaseHTTPRequestHandler):
    """Answers every request with ``server.answer`` = (HTTP status, S3 error code), as S3
    words an error, and counts the requests."""

    def _answer(self):
        self.server.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, code = self.server.answer
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>scripted {code}</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815 - http.server's naming

    def log_message(self, *args):
        pass


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server for the session, with the bucket ``BUCKET``."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process uses the session's S3 server (see :func:`use_s3_endpoint`)."""
    use_s3_endpoint(monkeypatch, s3_server.uri)
    return s3_server


@pytest.fixture(scope="session")
def s3_mlflow_server(s3_server, tmp_path_factory):
    """``mlflow server --default-artifact-root s3://BUCKET/mlflow --no-serve-artifacts``:
    runs get ``s3://`` artifact URIs, and clients put and read the files in S3 themselves."""
    workdir = tmp_path_factory.mktemp("mlflow-s3")
    server = MlflowServer(
        f"sqlite:///{workdir / 'mlflow.db'}", workdir,
        artifact_args=["--default-artifact-root", f"s3://{BUCKET}/mlflow", "--no-serve-artifacts"],
        env=s3_server.env())
    yield server.start()
    server.stop()


@pytest.fixture
def scripted_s3(monkeypatch):
    """A local endpoint that answers every S3 request with the error the test sets in
    ``.answer``; this process is configured to use it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedS3)
    server.answer, server.requests = (500, "InternalError"), 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    use_s3_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()
