"""Servers that misbehave, and credentials in messages: real local servers that never
answer, trickle a byte a second, ask to come back in an hour, answer HTML or ``{}``, or
refuse the credentials; a real ``mlflow server`` that four processes log one param into
at once; and the CLI and API messages that name a URI with a password in it."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from urllib3 import HTTPResponse

import autolog
from autolog.cli import main
from autolog.stores import mlflow_rest
from autolog.stores.base import ParamRefusedError, StoreError
from autolog.stores.mlflow_rest import (
    MlflowRestClient,
    MlflowRestError,
    NotMlflowServerError,
    ServerUnreachableError,
)
from autolog.uris import redact_uri, split_credentials

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

SECRET = "hunter2-Zq9"
_REFUSED_PARAM = re.compile(r'"POST /api/2\.0/mlflow/runs/log-(batch|parameter) HTTP/[\d.]+" [45]\d\d')


# -- local servers that misbehave ---------------------------------------------------------


class RawServer:
    """A TCP server on 127.0.0.1 that reads each request's head and then runs
    ``behave(conn, stop)``, one thread per connection; counts the requests it got."""

    def __init__(self, behave):
        self._behave = behave
        self.stop = threading.Event()
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.uri = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with conn:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests += 1
            try:
                self._behave(conn, self.stop)
            except OSError:  # the client gave up and closed
                pass

    def close(self) -> None:
        self.stop.set()
        self._listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def never_answer(conn, stop):
    stop.wait()


def trickle(response: bytes):
    def behave(conn, stop):
        for byte in response:
            if stop.wait(1.0):  # one byte a second
                return
            conn.sendall(bytes([byte]))
    return behave


BODY = json.dumps({"run": {"info": {"run_id": "x", "experiment_id": "0"}, "data": {}},
                   "padding": "x" * 500}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(behave) -> RawServer:
        servers.append(RawServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class _Handler(BaseHTTPRequestHandler):
    """Answers (status, headers, body bytes) from ``server.script``, then 200 ``{}``;
    records each request's path and headers in ``server.seen``."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self):  # noqa: N802
        self._answer()

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})
        status, headers, body = (self.server.script.pop(0) if self.server.script
                                 else (200, {}, b"{}"))
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.script, server.seen = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.uri = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# -- bounded waits ------------------------------------------------------------------------


def test_retry_after_is_capped():
    retry = mlflow_rest._DeadlineRetry(total=3, respect_retry_after_header=True)
    asked = HTTPResponse(status=503, headers={"Retry-After": "3600"})
    assert retry.get_retry_after(asked) == mlflow_rest.RETRY_AFTER_MAX_S == 30.0
    in_an_hour = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    assert retry.get_retry_after(HTTPResponse(headers={"Retry-After": in_an_hour})) == 30.0
    assert retry.get_retry_after(HTTPResponse(headers={"Retry-After": "2"})) == 2.0


@pytest.mark.timeout(60)
def test_a_server_asking_to_come_back_in_an_hour_is_retried_within_the_cap(http_server, monkeypatch):
    monkeypatch.setattr(mlflow_rest, "RETRY_AFTER_MAX_S", 0.2)
    busy = (503, {"Retry-After": "3600"}, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}')
    http_server.script = [busy, busy]
    client = MlflowRestClient(http_server.uri)
    client.update_run("abc", "FINISHED", 5)  # without the cap: two hours asleep here
    assert len(http_server.seen) == 3


@pytest.mark.timeout(60)
def test_retry_after_never_outlasts_the_call_deadline(http_server, monkeypatch):
    """`autolog sync` against a server that always says "in an hour" ends each call at the
    deadline (with Retry-After obeyed, capped, in between), not hours later."""
    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "2")
    http_server.script = [(503, {"Retry-After": "3600"}, b'{"error_code": "UNAVAILABLE"}')] * 10
    started = time.monotonic()
    with pytest.raises(StoreError) as busy:
        MlflowRestClient(http_server.uri).update_run("abc", "FINISHED", 5)
    assert time.monotonic() - started < 10  # not an hour, nor the 30 s cap
    # The wait before the second request took the rest of the deadline: that request ends
    # with the 503 or, on a loaded machine, at the deadline itself; either is "later".
    assert 1 <= len(http_server.seen) <= 2
    if isinstance(busy.value, MlflowRestError):
        assert busy.value.status == 503 and busy.value.retry_later
    else:
        assert isinstance(busy.value, ServerUnreachableError)


@pytest.mark.timeout(60)
def test_a_server_that_accepts_and_never_answers_costs_one_deadline(raw_server, monkeypatch):
    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "1")
    server = raw_server(never_answer)
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=r"no complete answer within 1 s") as silent:
        MlflowRestClient(server.uri).get_run("abc")
    assert time.monotonic() - started < 10  # was 4 reads × the timeout, plus backoff
    assert server.requests == 1  # no retry past the deadline (it was 4 attempts)
    assert server.uri in str(silent.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("part", ["head", "body"])
def test_a_server_that_trickles_a_byte_a_second_costs_one_deadline(raw_server, monkeypatch, part):
    """requests' read timeout is per socket read: a byte a second never trips it."""
    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "2")
    if part == "body":
        def behave(conn, stop):
            conn.sendall(HEAD)
            trickle(BODY)(conn, stop)
    else:
        behave = trickle(HEAD + BODY)
    server = raw_server(behave)
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=r"no complete answer within 2 s"):
        MlflowRestClient(server.uri).get_run("abc")
    assert time.monotonic() - started < 15  # the whole answer takes over 500 s
    assert server.requests == 1


def test_a_prompt_server_is_unaffected_by_the_deadline(sqlite_server, monkeypatch):
    """The deadline timers are cancelled once a call has its answer: many calls in a row on
    pooled connections, each well within a short deadline, all succeed."""
    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "5")
    client = MlflowRestClient(sqlite_server.uri)
    experiment = client.get_or_create_experiment("rest-faults/prompt")
    run_id = client.create_run(experiment.experiment_id, "prompt", 1, {}).run_id
    for step in range(40):
        client.log_batch(run_id, metrics=[("m", float(step), 1, step)])
    time.sleep(5.5)  # past every deadline armed above: no timer may fire on a pooled socket
    client.log_batch(run_id, metrics=[("m", 40.0, 1, 40)])
    assert len(sqlite_server.client().get_metric_history(run_id, "m")) == 41
    client.close()


# -- answers that are not MLflow's --------------------------------------------------------

NOT_MLFLOW = {
    "an HTML login page": (b"<html><head><title>Sign in</title></head><body>"
                           b"<form action=/login>...</form></body></html>", "text/html"),
    "an empty JSON object": (b"{}", "application/json"),
    "JSON without the expected fields": (b'{"experiment": {"name": "Default"}}', "application/json"),
    "a JSON list": (b'["ok"]', "application/json"),
}


@pytest.mark.parametrize("answer", sorted(NOT_MLFLOW))
def test_an_answer_that_is_not_mlflow_fails_start_run_naming_the_uri(http_server, answer):
    body, content_type = NOT_MLFLOW[answer]
    http_server.script = [(200, {"Content-Type": content_type}, body)] * 5
    autolog.set_tracking_uri(http_server.uri)
    with pytest.raises(NotMlflowServerError) as excinfo:
        autolog.start_run()
    message = str(excinfo.value)
    assert f"{http_server.uri} is not an MLflow tracking server" in message
    assert "KeyError" not in message and "experiment-id" not in message
    assert isinstance(excinfo.value, StoreError)
    assert autolog.active_run() is None


def test_a_run_answer_that_is_not_mlflow_fails_start_run(http_server):
    """The experiment answer was MLflow's, the run's is not."""
    experiment = json.dumps({"experiment": {"experiment_id": "7", "name": "Default",
                                            "lifecycle_stage": "active"}}).encode()
    http_server.script = [(200, {}, experiment), (200, {}, b'{"run": {}}')]
    autolog.set_tracking_uri(http_server.uri)
    with pytest.raises(NotMlflowServerError, match="is not an MLflow tracking server.*runs/create"):
        autolog.start_run()
    assert [seen["path"].split("?")[0] for seen in http_server.seen] == [
        "/api/2.0/mlflow/experiments/get-by-name", "/api/2.0/mlflow/runs/create"]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_say_check_your_credentials(http_server, status, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    refusal = (status, {}, json.dumps({"error_code": "PERMISSION_DENIED",
                                       "message": f"bad token {SECRET}"}).encode())
    http_server.script = [refusal] * 4
    with pytest.raises(MlflowRestError) as refused:
        MlflowRestClient(http_server.uri).get_run("abc")
    message = str(refused.value)
    assert f"HTTP {status}" in message and "check your credentials" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_TOKEN" in message
    assert "no answer" not in message and "does not answer" not in message
    assert SECRET not in message
    assert refused.value.retry_later  # kept in the spool until `autolog sync` with good ones


# -- four processes, one param key, one run -----------------------------------------------

_RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from autolog.stores.mlflow_rest import MlflowRestClient
    uri, run_id, go, rounds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    client = MlflowRestClient(uri)
    for r in range(rounds):
        flag = go.with_name(f"go-{r}")
        while not flag.exists():
            time.sleep(0.001)
        client.log_params(run_id, {f"lr{r}": "0.1", f"batch{r}": "32", f"seed{r}": "7"})
    print("ok")
""")


@pytest.mark.parametrize("server_kind", ["sqlite", "postgres"])
def test_four_processes_logging_one_param_get_no_refusal(request, tmp_path, server_kind):
    """DDP ranks log the same params into one run at the same moment. A log-batch that
    loses the race is refused with HTTP 400 (the server's unique key); the client logs
    params so that the server refuses nothing, and each value is stored once."""
    server = request.getfixturevalue(f"{server_kind}_server")
    refused_before = len(_refused_param_requests(server))
    batches_before = len(server.refused_log_batches())
    client = MlflowRestClient(server.uri)
    experiment = client.get_or_create_experiment("rest-faults/param-race")
    run_id = client.create_run(experiment.experiment_id, "race", 1, {}).run_id
    rounds = 8
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, server.uri, run_id, str(go),
                                str(rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(4)]
    time.sleep(2.0)  # all four imported and waiting
    for r in range(rounds):
        go.with_name(f"go-{r}").touch()
        time.sleep(0.3)
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, outputs
    params = server.client().get_run(run_id).data.params
    assert params == {f"{name}{r}": value for r in range(rounds)
                      for name, value in (("lr", "0.1"), ("batch", "32"), ("seed", "7"))}
    assert server.refused_log_batches()[batches_before:] == []
    assert _refused_param_requests(server)[refused_before:] == []
    client.close()


def _refused_param_requests(server) -> list[str]:
    return [line for line in server.log_text().splitlines() if _REFUSED_PARAM.search(line)]


def test_a_param_another_process_changed_meanwhile_is_reported_not_retried(sqlite_server):
    client = MlflowRestClient(sqlite_server.uri)
    experiment = client.get_or_create_experiment("rest-faults/param-change")
    run_id = client.create_run(experiment.experiment_id, "change", 1, {}).run_id
    sqlite_server.client().log_param(run_id, "lr", "0.5")
    with pytest.raises(ParamRefusedError, match="'lr' is '0.5' on the server, refused '0.1'"):
        client.log_params(run_id, {"lr": "0.1", "epochs": "3"})
    assert sqlite_server.client().get_run(run_id).data.params == {"lr": "0.5", "epochs": "3"}
    client.close()


# -- credentials --------------------------------------------------------------------------


def test_redact_uri_hides_the_password_of_any_uri():
    assert redact_uri(f"http://bob:{SECRET}@host:5000/x") == "http://bob:***@host:5000/x"
    assert redact_uri(f"htp://bob:{SECRET}@h") == "htp://bob:***@h"
    assert redact_uri(f"https://{SECRET}@host") == "https://***@host"  # a token as userinfo
    assert redact_uri(f"http://bob:p@ss{SECRET}@host/a@b") == "http://bob:***@host/a@b"
    assert redact_uri("sqlite:///tmp/a@b.db") == "sqlite:///tmp/a@b.db"
    assert redact_uri("http://host:5000") == "http://host:5000"
    assert redact_uri(f"bob:{SECRET}@host:5000") == "bob:***@host:5000"  # no scheme at all
    assert redact_uri(f"//bob:{SECRET}@host") == "//bob:***@host"
    assert split_credentials("http://bob:p%40ss%3A1@host:5000/") == ("http://host:5000", "bob", "p@ss:1")


def test_a_percent_encoded_password_is_sent_decoded(http_server):
    encoded = f"http://bob:p%40ss%2F{SECRET}@{http_server.uri.removeprefix('http://')}"
    http_server.script = [(400, {}, b'{"error_code": "BAD", "message": "no"}')]
    client = MlflowRestClient(encoded)
    with pytest.raises(MlflowRestError) as refused:
        client.get_run("abc")
    header = http_server.seen[0]["headers"]["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"bob:p@ss/{SECRET}"
    for shown in (str(refused.value), client.uri, repr(client)):
        assert SECRET not in shown and "p%40ss" not in shown


def test_no_message_shows_a_uri_password(tmp_path, http_server):
    bad_scheme = f"htp://bob:{SECRET}@h"
    with autolog.start_run():  # the default store is tmp_path/mlflow.db
        autolog.log_metric("m", 1.0)
    source = autolog.get_tracking_uri()
    with_password = f"http://bob:{SECRET}@{http_server.uri.removeprefix('http://')}"
    runner = CliRunner()
    results = {
        "runs list": runner.invoke(main, ["runs", "list", "--tracking-uri", bad_scheme]),
        "sync --from": runner.invoke(main, ["sync", "--from", bad_scheme,
                                            "--to", f"sqlite:///{tmp_path / 'to.db'}"]),
        "sync --to": runner.invoke(main, ["sync", "--from", source, "--to", bad_scheme]),
        "sync --from X --to X": runner.invoke(main, ["sync", "--from", with_password,
                                                     "--to", with_password]),
    }
    for name, result in results.items():
        assert result.exit_code != 0, name
        assert SECRET not in result.output, (name, result.output)
        assert "bob:***@" in result.output, (name, result.output)
    assert "got 'htp://bob:***@h'" in results["runs list"].output
    assert "--from and --to are the same store" in results["sync --from X --to X"].output

    with pytest.raises(ValueError) as refused:
        autolog.set_tracking_uri(bad_scheme)
    assert SECRET not in str(refused.value) and "htp://bob:***@h" in str(refused.value)
    with pytest.raises(ValueError) as refused:
        MlflowRestClient(f"ftp://bob:{SECRET}@h")
    assert SECRET not in str(refused.value)
    with pytest.raises(ValueError) as refused:
        autolog.autolog(tracking_uri=bad_scheme)
    assert SECRET not in str(refused.value)


def test_a_run_started_against_refused_credentials_says_so_and_keeps_its_data(http_server, monkeypatch):
    """start_run does not fail (the data waits in the spool for `autolog sync` with good
    credentials), and the warning tells the user to check them."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.setenv("AUTOLOG_EXIT_TIMEOUT", "0.5")
    refusal = (401, {}, b'{"error_code": "UNAUTHENTICATED", "message": "who are you"}')
    http_server.script = [refusal] * 1000
    autolog.set_tracking_uri(http_server.uri)
    with pytest.warns(autolog.AutologWarning, match="check your credentials") as seen:
        run = autolog.start_run()
    assert all(SECRET not in str(w.message) for w in seen)
    for step in range(100):
        autolog.log_metric("m", float(step), step=step)
    autolog.end_run()
    assert run.store.backlog().points == 100  # kept for `autolog sync`, not dropped


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificate for a TLS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.mark.timeout(60)
def test_over_tls_the_deadline_holds_and_the_configured_ca_is_used(http_server, tls_files,
                                                                   monkeypatch):
    """HTTPS connections keep the deadline too; and MLFLOW_TRACKING_SERVER_CERT_PATH is
    used even where REQUESTS_CA_BUNDLE is set (requests let that override the session's)."""
    cert, context = tls_files
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "1.5")
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    https_uri = http_server.uri.replace("http://", "https://")
    client = MlflowRestClient(https_uri)
    for _ in range(3):
        client.update_run("abc", "FINISHED", 5)
    assert len(http_server.seen) == 3

    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[ssl.SSLSocket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = silent.accept()
                accepted.append(context.wrap_socket(conn, server_side=True))  # then nothing

    threading.Thread(target=accept, daemon=True).start()
    try:
        with pytest.raises(ServerUnreachableError, match="no complete answer within 1.5 s"):
            MlflowRestClient(f"https://127.0.0.1:{silent.getsockname()[1]}").get_run("abc")
        assert len(accepted) == 1
    finally:
        silent.close()
        for conn in accepted:
            conn.close()


def test_a_call_at_interpreter_shutdown_still_goes_out(http_server, monkeypatch):
    """Python 3.12+ starts no thread at shutdown, where the exit drain sends the spool: the
    deadline's timer cannot start then, and the request goes out all the same."""
    def no_thread_now(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setenv("AUTOLOG_HTTP_TIMEOUT", "5")
    monkeypatch.setattr(threading.Timer, "start", no_thread_now)
    http_server.script = [(200, {}, b"{}")]
    MlflowRestClient(http_server.uri).update_run("abc", "FINISHED", 5)
    assert len(http_server.seen) == 1
