"""Recovery after an outage, and a misconfiguration that is not one.

The outage is real: the MLflow server is SIGKILLed mid-run and started again on the same
port, and what reached it is read back with MLflow's own client. The misconfigurations
are real too: a host under ``.invalid`` (which never resolves), a plain static-file web
server, ``https://`` to a server that speaks http, and a TLS server whose self-signed
certificate fails verification.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from mlflow_server import Scripted
from test_spool import messages, recorded_warnings

import autolog
from autolog.cli import main
from autolog.stores import close_all
from autolog.stores.mlflow_rest import MisconfiguredServerError, NotMlflowServerError
from autolog.stores.spool.spool_file import spool_files
from autolog.writer import get_writer

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

DRAIN_BOUND_S = 10.0  # generous: the wanted figure is 2 s plus the send time
_LOG_BATCH = re.compile(r'"POST /api/2\.0/mlflow/runs/log-batch HTTP/[\d.]+" 200')


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def test_the_backlog_is_sent_and_the_run_ended_within_seconds_of_the_servers_return(
        fault_server, capsys):
    """Logged in flushes of 10 points while the server is down, ended while it is down:
    once it is back, the process itself sends everything in a few merged requests and
    ends the run, with no ``autolog sync`` and no exit."""
    autolog.set_tracking_uri(fault_server.uri)
    with recorded_warnings() as seen:
        with autolog.start_run(run_name="outage", experiment="recovery/outage") as run:
            for step in range(500):
                autolog.log_metric("loss", 1 / (step + 1), step=step)
            assert autolog.flush(timeout=30)
            fault_server.kill()
            for step in range(500, 3500):
                autolog.log_metric("loss", 1 / (step + 1), step=step)
                if step % 10 == 9:
                    get_writer().flush()  # 300 stored batches of 10 points
            autolog.set_tag("phase", "logged while down")
        store = run.store
        wait_for(lambda: store._outage is not None, 30, "the sender noticed the outage")
        left = store.backlog()
        assert left.points == 3000 and left.batches >= 300, left
        log_before = len(fault_server.log_text())

        fault_server.start()
        back = time.monotonic()
        wait_for(lambda: store.backlog().empty, 60, "the backlog was sent")
        drained = time.monotonic() - back
        # The sender says so once its pass ends, a moment after the last batch is deleted.
        wait_for(lambda: "answers again" in messages(seen), 10, "the sender said it was sent")
    requests = len(_LOG_BATCH.findall(fault_server.log_text()[log_before:]))
    with capsys.disabled():  # the figure, shown with -s
        print(f"\nserver back -> backlog of {left.points} points in {left.batches} stored "
              f"batches drained in {drained:.2f} s, {requests} log-batch requests")
    assert drained < DRAIN_BOUND_S
    assert requests <= 4  # 3 of 1,000 points, plus the tag; not one per stored batch

    remote = fault_server.client().get_run(run.id)
    assert remote.info.status == "FINISHED"  # ended by the process, not by `autolog sync`
    assert remote.data.tags["phase"] == "logged while down"
    history = fault_server.client().get_metric_history(run.id, "loss")
    assert sorted(m.step for m in history) == list(range(3500))
    said = messages(seen)
    assert "does not take data now" in said
    assert f"{fault_server.uri} answers again; the spooled data was sent" in said
    close_all()
    assert "not sent" not in capsys.readouterr().err
    assert fault_server.refused_log_batches() == []


def spooled_offline(unused_uri: str, spool_dir, name: str, points: int, param: bool = False):
    """A run started and ended while its server is down (from the start): the run and its
    points, in stored batches of 50, left in the spool file it returns."""
    autolog.set_tracking_uri(unused_uri)
    with pytest.warns(autolog.AutologWarning, match="started offline"):
        with autolog.start_run(run_name=name, experiment=f"recovery/{name}") as run:
            for step in range(points):
                autolog.log_metric("loss", float(step), step=step)
                if step % 50 == 49:
                    get_writer().flush()
            if param:
                autolog.log_param("lr", 0.1)
    close_all()  # nothing answers: the spool is kept
    [path] = spool_files(spool_dir)
    return run, path


def test_sync_dry_run_shows_what_would_go_where_and_sends_nothing(
        unused_uri, scripted_server, spool_dir):
    run, path = spooled_offline(unused_uri, spool_dir, "kept", points=250, param=True)
    # Really damaged bytes: one stored batch's body no longer matches its checksum.
    with sqlite3.connect(path) as conn:
        seq, body = conn.execute("SELECT seq, body FROM batches WHERE kind = 'metrics' "
                                 "ORDER BY seq LIMIT 1").fetchone()
        conn.execute("UPDATE batches SET body = ? WHERE seq = ?",
                     (bytes([body[0] ^ 0xFF]) + body[1:], seq))
    size = path.stat().st_size

    result = CliRunner().invoke(main, ["sync", "--dry-run", "--to", scripted_server.uri])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"would send to {scripted_server.uri} (recorded for {unused_uri})" in out
    assert (f"run {run.id} (kept): 200 metric points in 6 batches, created on the server "
            "first, then ended FINISHED") in out  # 4 metric batches, the param, the status
    assert "1 damaged batch(es) of 50 metric points" in out
    assert scripted_server.seen == []  # nothing sent
    assert spool_files(spool_dir) == [path] and path.stat().st_size == size

    same = CliRunner().invoke(main, ["sync", "--dry-run"])  # to the configured server
    assert same.exit_code == 0 and f"would send to {unused_uri}\n" in same.output
    autolog.set_tracking_uri(scripted_server.uri)
    other = CliRunner().invoke(main, ["sync", "--dry-run"])
    assert other.exit_code == 0
    assert f"would not be sent: not sent: it names {unused_uri}" in other.output
    assert scripted_server.seen == []


class SlowMlflow(Scripted):
    """Answers the few calls the sender makes as MLflow would, each log-batch after
    ``LOG_BATCH_S``; counts the metric points it was sent in ``server.points``."""

    LOG_BATCH_S = 0.05

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0].rsplit("/mlflow/", 1)[-1]
        answer: dict = {}
        if path.startswith("experiments/get"):
            answer = {"experiment": {"experiment_id": "1", "name": "recovery/exit"}}
        elif path == "runs/create":
            answer = {"run": {"info": {"run_id": "r1", "experiment_id": "1"}}}
        elif path == "runs/log-batch":
            self.server.points += len(json.loads(body).get("metrics", ()))
            time.sleep(self.LOG_BATCH_S)
        self.send_json(200, answer)


POINTS_AT_EXIT = 20_000  # 20 requests of 1,000: more than the exit waits for


def test_a_backlog_cut_short_at_exit_is_never_said_to_be_sent(unused_uri, capsys, monkeypatch):
    """The server comes back just before exit and takes the backlog slower than the exit
    waits: the sender stops half-way. It must not say "the spooled data was sent"; the exit
    line counts what is left, and what the server got plus what is left is all of it."""
    autolog.set_tracking_uri(unused_uri)
    with pytest.warns(autolog.AutologWarning, match="started offline"):
        with autolog.start_run(experiment="recovery/exit"):
            for step in range(POINTS_AT_EXIT):
                autolog.log_metric("loss", float(step), step=step)
                if step % 100 == 99:
                    get_writer().flush()
    port = int(unused_uri.rsplit(":", 1)[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), SlowMlflow)
    server.points = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AUTOLOG_EXIT_TIMEOUT", "0.5")
    try:
        senders = [t for t in threading.enumerate() if t.name == "autolog-spool-sender"]
        with recorded_warnings() as seen:
            close_all()
            for sender in senders:  # what it says after the exit line counts too
                sender.join(10)
    finally:
        server.shutdown()
        server.server_close()
    said = messages(seen)
    err = capsys.readouterr().err
    left = re.search(r"not sent to \S+ within [\d.]+ s, kept in \S+: ([\d,]+) metric points", err)
    assert left is not None, err
    left_points = int(left[1].replace(",", ""))
    assert "the spooled data was sent" not in said
    assert server.points > 0 and left_points > 0
    # a request abandoned in flight at exit is counted by both (sent again by sync)
    assert POINTS_AT_EXIT <= server.points + left_points <= POINTS_AT_EXIT + 1000


# -- a misconfiguration is a clear error at start_run, not an offline run -------------------


def start_run_fails(uri: str, error: type, match: str, spool_dir) -> None:
    """start_run on ``uri`` raises ``error`` naming the URI, and no spool (no offline
    run) is made."""
    autolog.set_tracking_uri(uri)
    with pytest.raises(error, match=match) as raised:
        autolog.start_run(experiment="recovery/misconfigured")
    assert uri.split("://")[1].split("/")[0] in str(raised.value)
    assert autolog.active_run() is None
    assert spool_files(spool_dir) == []


def test_an_unresolvable_host_is_an_error(spool_dir):
    try:
        socket.getaddrinfo("no-such-host.invalid", 5000)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver does not say 'no such name' ({exc})")
    start_run_fails("http://no-such-host.invalid:5000", MisconfiguredServerError,
                    "host name does not resolve", spool_dir)


@pytest.fixture
def static_web_server(tmp_path):
    """What ``python -m http.server`` runs: HTML 404 pages for MLflow's API."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_web_server_that_is_not_mlflow_is_an_error(static_web_server, spool_dir):
    start_run_fails(static_web_server, NotMlflowServerError,
                    r"is not an MLflow tracking server .* answered HTTP 404", spool_dir)


def test_https_to_an_http_server_is_an_error(scripted_server, spool_dir):
    start_run_fails(scripted_server.uri.replace("http://", "https://"),
                    MisconfiguredServerError, "does not speak TLS; check the scheme", spool_dir)
    assert scripted_server.seen == []


@pytest.fixture
def untrusted_tls_server(tmp_path, scripted_server):
    """The scripted server's handler behind TLS with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to serve")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), scripted_server.RequestHandlerClass)
    server.script, server.seen = [], []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_a_certificate_that_fails_verification_is_an_error(untrusted_tls_server, spool_dir):
    uri, server = untrusted_tls_server
    start_run_fails(uri, MisconfiguredServerError,
                    "certificate fails verification; check MLFLOW_TRACKING_SERVER_CERT_PATH",
                    spool_dir)
    assert server.seen == []


def test_connection_refused_is_still_an_outage(unused_uri, spool_dir, capsys):
    """The contrast: nothing listening is a server down, so the run starts offline and
    every point is kept in the spool."""
    autolog.set_tracking_uri(unused_uri)
    with pytest.warns(autolog.AutologWarning, match="started offline"):
        with autolog.start_run(experiment="recovery/refused") as run:
            for step in range(100):
                autolog.log_metric("loss", float(step), step=step)
    assert run.id.startswith("offline-")
    assert run.store.backlog().points == 100
    close_all()
    assert len(spool_files(spool_dir)) == 1
    # (in as many batches as the writer made: two, or more on a loaded machine)
    assert re.search(r"100 metric points in \d+ batches", capsys.readouterr().err)



def test_autolog_itself_refuses_a_server_that_cannot_be_mlflows(static_web_server, unused_uri,
                                                                 spool_dir):
    """A typo'd server URI is an error at ``autolog()``, before any fit; a server that is
    down is not (its runs start offline)."""
    with pytest.raises(NotMlflowServerError, match="is not an MLflow tracking server"):
        autolog.autolog(tracking_uri=static_web_server)
    assert autolog.get_tracking_uri() != static_web_server  # left as it was
    autolog.autolog(tracking_uri=unused_uri)  # down: no error, no warning
    assert autolog.get_tracking_uri() == unused_uri
    assert not spool_dir.exists()


@pytest.mark.parametrize("uri", ["http://localhost:99999", "http://localhost:port"])
def test_a_uri_that_cannot_be_read_is_an_error_not_an_outage(uri, spool_dir):
    with pytest.raises(MisconfiguredServerError, match="the URI cannot be read"):
        autolog.autolog(tracking_uri=uri)
    assert not spool_dir.exists()


def test_a_dry_run_counts_the_refused_batches_that_sync_retries(unused_uri, spool_dir):
    run, path = spooled_offline(unused_uri, spool_dir, "refused", points=100)
    with sqlite3.connect(path) as conn:  # as a server that refused them would leave them
        conn.execute("UPDATE batches SET error = 'refused' WHERE kind = 'metrics'")
    result = CliRunner().invoke(main, ["sync", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"run {run.id} (refused): 100 metric points in 3 batches" in result.output
