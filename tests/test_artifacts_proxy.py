"""The ``mlflow-artifacts:`` destination against a real ``mlflow server --artifacts-destination``:
what it uploads, MLflow's own client lists and downloads byte for byte, and what MLflow's
client logged, it lists and downloads; URLs formed as MLflow forms them; a server that is
down, refuses, lies about a size, cuts a body short or reads it slowly; a 2 GiB file
streamed with the uploading process's peak RSS under 200 MB."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

import autolog
from autolog.artifacts.destinations import destination_for, proxy
from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    VerificationError,
)
from autolog.artifacts.destinations.proxy import ProxyDestination
from autolog.cli import main

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")

SECRET = "hunter2-Zq9"
MIB = 1 << 20


def sha256_of(path: Path) -> str:
    with open(path, "rb") as reader:
        return hashlib.file_digest(reader, "sha256").hexdigest()


def write_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def upload(destination: ProxyDestination, source: Path, artifact_path: str) -> list[int]:
    """Upload as the uploader thread does; the byte counts progress was called with."""
    moved: list[int] = []
    destination.upload(source, artifact_path, sha256_of(source), source.stat().st_size, moved.append)
    return moved


@pytest.fixture
def server_run(sqlite_server):
    """A run created by MLflow's client on the server, and its destination."""
    client = sqlite_server.client()
    experiment = client.get_experiment_by_name("proxy") or client.get_experiment(
        client.create_experiment("proxy"))
    run = client.create_run(experiment.experiment_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    destination = destination_for(run.info.artifact_uri, sqlite_server.uri)
    assert isinstance(destination, ProxyDestination)
    yield client, run.info.run_id, destination
    destination.close()


def served_path(server, run_id: str, artifact_path: str) -> Path:
    """Where the server's --artifacts-destination holds an artifact of the run."""
    artifact_uri = server.client().get_run(run_id).info.artifact_uri
    return server.workdir / "artifacts" / artifact_uri.partition(":")[2].strip("/") / artifact_path


# -- through MLflow's own client ----------------------------------------------------------


def test_uploads_are_what_mlflow_lists_and_downloads(server_run, sqlite_server, tmp_path):
    client, run_id, destination = server_run
    files = {
        "model.bin": os.urandom(3 * MIB + 17),
        "nested/deeper/notes b+c%.txt": "naïve ünïcode\n".encode() * 100,
        "nested/empty.txt": b"",
    }
    for artifact_path, content in files.items():
        source = write_file(tmp_path / "src" / artifact_path, content)
        moved = upload(destination, source, artifact_path)
        assert sum(moved) == len(content)

    assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id)] == [
        ("model.bin", False), ("nested", True)]
    assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id, "nested")] == [
        ("nested/deeper", True), ("nested/empty.txt", False)]
    for artifact_path, content in files.items():
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(tmp_path / "mlflow" / artifact_path),
            tracking_uri=sqlite_server.uri)
        assert Path(local).read_bytes() == content, artifact_path
        assert destination.stored(artifact_path, "", len(content))
        assert not destination.stored(artifact_path, "", len(content) + 1)
    assert not destination.stored("nested/missing.txt", "", 0)


def test_lists_and_downloads_what_mlflow_logged(server_run, tmp_path):
    client, run_id, destination = server_run
    folder = tmp_path / "logged"
    write_file(folder / "a.txt", b"alpha")
    write_file(folder / "sub" / "b.bin", os.urandom(2 * MIB + 1))
    write_file(folder / "sub" / "deep" / "c.json", b'{"c": 3}')
    client.log_artifacts(run_id, str(folder), "dir")
    client.log_artifact(run_id, str(folder / "a.txt"))

    def mlflow_listing(path):
        return [ArtifactEntry(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, path)]

    for path in (None, "dir", "dir/sub", "dir/sub/deep"):
        assert destination.list(path) == mlflow_listing(path), path
    assert destination.list("dir/sub") == [ArtifactEntry("dir/sub/b.bin", False, 2 * MIB + 1),
                                           ArtifactEntry("dir/sub/deep", True, None)]
    assert destination.list("no/such/folder") == []
    assert destination.list("a.txt") == []  # a file has no entries, as for MLflow's client

    for relative in ("a.txt", "sub/b.bin", "sub/deep/c.json"):
        target = tmp_path / "back" / relative.replace("/", "_")
        target.parent.mkdir(exist_ok=True)
        moved: list[int] = []
        destination.download(f"dir/{relative}", target, moved.append)
        assert target.read_bytes() == (folder / relative).read_bytes()
        assert sum(moved) == target.stat().st_size
    for missing in ("dir/nothing.txt", "dir/sub"):  # no such file; a folder
        with pytest.raises(ArtifactNotFoundError):
            destination.download(missing, tmp_path / "missing")
        assert not (tmp_path / "missing").exists()


def test_a_path_the_server_refuses_is_refused_for_good_naming_the_url(server_run, tmp_path):
    _client, _run_id, destination = server_run
    source = write_file(tmp_path / "f.txt", b"x")
    refused = (r"PUT http://127\.0\.0\.1:\d+/api/2\.0/mlflow-artifacts/artifacts/.*/a%23b\.txt "
               r"failed with HTTP 400.*Invalid path")
    with pytest.raises(ArtifactRefusedError, match=refused):
        upload(destination, source, "a#b.txt")  # MLflow's server refuses '#' in a path


# -- URLs as MLflow forms them ------------------------------------------------------------


@pytest.mark.parametrize("artifact_uri, tracking_uri", [
    ("mlflow-artifacts:/1/abc/artifacts", "http://127.0.0.1:5000"),
    ("mlflow-artifacts:/1/abc/artifacts", "https://tracking.example/prefix/"),
    ("mlflow-artifacts://other.example:8443/1/abc/artifacts", "https://tracking.example/prefix"),
    ("mlflow-artifacts://other.example/1/abc/artifacts", "http://tracking.example:5000"),
    ("mlflow-artifacts:/", "http://tracking.example:5000"),
    ("mlflow-artifacts:/api/2.0/mlflow-artifacts/artifacts", "http://tracking.example:5000"),
])
def test_urls_are_mlflows(artifact_uri, tracking_uri):
    destination = ProxyDestination(artifact_uri, tracking_uri)
    assert destination._url("") == MlflowArtifactsRepository.resolve_uri(artifact_uri, tracking_uri)
    assert destination.uri == artifact_uri.rstrip("/")


def test_an_http_artifact_uri_is_used_as_is_and_credentials_are_never_shown():
    uri = "https://artifacts.example:8443/mlflow/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
    destination = ProxyDestination(uri, f"https://alice:{SECRET}@tracking.example")
    assert destination._url("m/x y.bin") == uri + "/m/x%20y.bin"
    assert SECRET not in repr(destination) + destination.uri + destination._url("")
    assert destination._session.auth == ("alice", SECRET)

    own = ProxyDestination(uri.replace("https://", f"https://bob:{SECRET}@"), "sqlite:///mlflow.db")
    assert own.uri == uri and own._session.auth == ("bob", SECRET)


def test_a_uri_that_cannot_lead_to_a_proxy_is_refused():
    with pytest.raises(ArtifactRefusedError, match=r"tracking URI is 'sqlite:///m\.db'.*http\(s\)://"):
        ProxyDestination("mlflow-artifacts:/1/abc/artifacts", "sqlite:///m.db")
    with pytest.raises(ArtifactRefusedError, match=r"tracking URI is 'postgresql://db/x'") as caught:
        ProxyDestination("mlflow-artifacts:/1/abc/artifacts", f"postgresql://u:{SECRET}@db/x")
    assert SECRET not in str(caught.value)
    with pytest.raises(ArtifactRefusedError, match="not an MLflow artifact proxy"):
        ProxyDestination("https://files.example/run/1", "https://files.example")


# -- servers that are down, refuse, lie or are slow ---------------------------------------


def test_a_server_that_is_down_is_unavailable_at_once(unused_uri, tmp_path):
    destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", unused_uri)
    source = write_file(tmp_path / "f.bin", b"x" * 1000)
    started = time.monotonic()
    with pytest.raises(DestinationUnavailableError, match=r"PUT http://127\.0\.0\.1:\d+/.*no answer"):
        upload(destination, source, "f.bin")
    with pytest.raises(DestinationUnavailableError):
        destination.list()
    with pytest.raises(DestinationUnavailableError):
        destination.download("f.bin", tmp_path / "back")
    assert time.monotonic() - started < 10  # two quick retries each, no hang


def test_upload_request_is_one_streamed_put_with_its_length_and_credentials(
        scripted_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    source = write_file(tmp_path / "f.bin", os.urandom(MIB + 3))
    scripted_server.script = [
        (200, {}),  # the PUT
        (200, {"files": [{"path": "f.bin", "is_dir": False, "file_size": str(MIB + 3)}]}),
    ]
    destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", scripted_server.uri)
    upload(destination, source, "m/f.bin")

    put, listing = scripted_server.seen
    assert put["path"] == "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/m/f.bin"
    assert put["headers"]["Content-Length"] == str(MIB + 3)
    assert "Transfer-Encoding" not in put["headers"]
    assert put["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert put["body"] == source.read_bytes()
    assert listing["path"] == "/api/2.0/mlflow-artifacts/artifacts?path=1%2Fabc%2Fartifacts%2Fm"


@pytest.mark.parametrize("status, error", [
    (403, ArtifactRefusedError), (401, ArtifactRefusedError), (400, ArtifactRefusedError),
    (413, ArtifactRefusedError), (408, DestinationUnavailableError), (429, DestinationUnavailableError),
    (500, DestinationUnavailableError), (503, DestinationUnavailableError),
])
def test_error_answers_to_an_upload(status, error, scripted_server, tmp_path):
    source = write_file(tmp_path / "f.bin", b"payload")
    scripted_server.script = [(status, {"error_code": "PERMISSION_DENIED", "message": "not yours"})]
    tracking = scripted_server.uri.replace("http://", f"http://alice:{SECRET}@")
    destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", tracking)
    with pytest.raises(error) as caught:
        upload(destination, source, "f.bin")
    message = str(caught.value)
    assert f"PUT {scripted_server.uri}/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/f.bin" in message
    assert f"HTTP {status}: PERMISSION_DENIED: not yours" in message
    assert SECRET not in message
    if status in (401, 403):
        assert "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD" in message
    assert len(scripted_server.seen) == 1  # a PUT's body is not sent again by urllib3


def test_a_size_that_differs_after_the_upload_fails_verification(scripted_server, tmp_path):
    source = write_file(tmp_path / "f.bin", b"12345")
    destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", scripted_server.uri)
    scripted_server.script = [(200, {}), (200, {"files": [{"path": "f.bin", "is_dir": False,
                                                           "file_size": "3"}]})]
    with pytest.raises(VerificationError, match=r"lists 3 bytes, not 5 bytes"):
        upload(destination, source, "f.bin")
    scripted_server.script = [(200, {}), (200, {})]
    with pytest.raises(VerificationError, match=r"lists no such file, not 5 bytes"):
        upload(destination, source, "f.bin")
    assert issubclass(VerificationError, DestinationUnavailableError)  # uploaded again later


def test_a_listing_that_is_not_mlflows_is_refused(scripted_server):
    destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", scripted_server.uri)
    scripted_server.script = [(200, ["not", "a", "listing"])]
    with pytest.raises(ArtifactRefusedError, match="is not an MLflow artifact proxy"):
        destination.list()
    scripted_server.script = [(200, {"files": [{"path": "../../etc/passwd", "is_dir": False}]})]
    with pytest.raises(proxy.ArtifactError, match="unsafe path"):
        destination.list()


class CutServer:
    """Reads a request's head and ``keep`` bytes of its body, then closes the connection;
    counts the connections it accepted."""

    def __init__(self, keep: int):
        self.keep = keep
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                received = b""
                while b"\r\n\r\n" not in received and (block := conn.recv(65536)):
                    received += block
                body = len(received.partition(b"\r\n\r\n")[2])
                while body < self.keep and (block := conn.recv(65536)):
                    body += len(block)

    def close(self) -> None:
        self._listener.close()


def test_a_body_cut_short_is_not_sent_again_here(tmp_path):
    server = CutServer(keep=MIB)
    try:
        source = write_file(tmp_path / "f.bin", os.urandom(16 * MIB))
        destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts", server.uri)
        with pytest.raises(DestinationUnavailableError, match="no answer"):
            upload(destination, source, "f.bin")
        assert server.connections == 1  # the uploader thread sends the whole file again later
    finally:
        server.close()


class SlowReader(BaseHTTPRequestHandler):
    """Waits ``server.pause`` seconds before reading a PUT's body (a server busy writing
    its disk), then lists what it got."""

    def do_PUT(self):  # noqa: N802 - http.server's naming
        time.sleep(self.server.pause)
        length = int(self.headers["Content-Length"])
        while length:
            length -= len(self.rfile.read(min(length, MIB)))
        self.server.sizes[self.path.rpartition("/")[2]] = int(self.headers["Content-Length"])
        self._send({})

    def do_GET(self):  # noqa: N802
        self._send({"files": [{"path": name, "is_dir": False, "file_size": str(size)}
                              for name, size in self.server.sizes.items()]})

    def _send(self, answer: dict) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_a_server_slow_to_read_the_body_waits_the_read_timeout_not_the_connect_timeout(
        monkeypatch, tmp_path):
    monkeypatch.setattr(proxy, "CONNECT_TIMEOUT_S", 0.3)
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowReader)
    server.pause, server.sizes = 1.5, {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # more than the socket buffers hold, so that sending blocks while the server waits
        source = write_file(tmp_path / "f.bin", os.urandom(64 * MIB))
        destination = ProxyDestination("mlflow-artifacts:/1/abc/artifacts",
                                        f"http://127.0.0.1:{server.server_address[1]}")
        assert destination._timeout[0] == 0.3
        upload(destination, source, "f.bin")
        assert server.sizes == {"f.bin": 64 * MIB}
    finally:
        server.shutdown()
        server.server_close()


# -- a large file -------------------------------------------------------------------------

LARGE_BLOCKS = 2048  # 2 GiB of 1 MiB blocks
UPLOADER = textwrap.dedent("""
    import json, sys, time
    import autolog

    tracking_uri, run_id, source = sys.argv[1:]
    autolog.set_tracking_uri(tracking_uri)
    started = time.monotonic()
    with autolog.start_run(run_id=run_id):
        autolog.log_artifact(source, "large")  # staged (copied), then uploaded in the background
    flushed = autolog.flush(timeout=240)
    # VmHWM, this process's own peak: ru_maxrss keeps the peak of the image before exec,
    # pytest's, when the child is started by vfork.
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": time.monotonic() - started, "flushed": flushed,
                      "peak_rss_kib": peak}))
""")


def write_large_file(path: Path, blocks: int) -> str:
    """``blocks`` MiB of a random block, each copy numbered (no two blocks alike); its sha256."""
    pattern = os.urandom(MIB)
    digest = hashlib.sha256()
    with open(path, "wb") as writer:
        for number in range(blocks):
            block = number.to_bytes(8, "little") + pattern[8:]
            digest.update(block)
            writer.write(block)
    return digest.hexdigest()


def test_a_2_gib_file_streams_with_flat_memory(server_run, sqlite_server, tmp_path):
    client, run_id, destination = server_run
    source = tmp_path / "blocks.bin"
    sha256 = write_large_file(source, LARGE_BLOCKS)
    size = LARGE_BLOCKS * MIB
    done = subprocess.run([sys.executable, "-c", UPLOADER, sqlite_server.uri, run_id, str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"2 GiB through log_artifact and flush: {report['seconds']:.1f} s, "
          f"peak RSS {report['peak_rss_kib'] / 1024:.0f} MiB")
    assert report["flushed"]
    assert report["peak_rss_kib"] < 200 * 1000  # 200 MB, the logging process's own peak

    served = served_path(sqlite_server, run_id, "large/blocks.bin")
    assert served.stat().st_size == size
    assert sha256_of(served) == sha256
    assert [(f.path, f.file_size) for f in client.list_artifacts(run_id, "large")] == [
        ("large/blocks.bin", size)]
    served.unlink()
    source.unlink()


# -- end to end: autolog's API, the uploader, autolog sync --------------------------------


def put_requests(server, path_end: str) -> int:
    """The uploads of a file (``PUT …/<path_end>``) in the server's access log."""
    return len([line for line in server.log_text().splitlines()
                if '"PUT /api/2.0/mlflow-artifacts/artifacts/' in line and f'/{path_end} HTTP/' in line])


def test_the_api_logs_to_the_server_and_mlflows_client_reads_it(sqlite_server, tmp_path):
    autolog.set_tracking_uri(sqlite_server.uri)
    model = write_file(tmp_path / "model.bin", os.urandom(5 * MIB + 1))
    folder = tmp_path / "data"
    write_file(folder / "train.csv", b"x,y\n1,2\n")
    write_file(folder / "split" / "test.csv", b"x,y\n3,4\n")
    with autolog.start_run() as run:
        autolog.log_artifact(model, "models")
        autolog.log_artifacts(folder, "data")
        autolog.log_text("hello", "notes/readme.txt")
    assert autolog.flush()

    client = sqlite_server.client()
    run_id = run.id
    assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id)] == [
        ("data", True), ("models", True), ("notes", True)]
    expected = {"models/model.bin": model.read_bytes(), "data/train.csv": b"x,y\n1,2\n",
                "data/split/test.csv": b"x,y\n3,4\n", "notes/readme.txt": b"hello"}
    for artifact_path, content in expected.items():
        local = client.download_artifacts(run_id, artifact_path, str(tmp_path / "mlflow"))
        assert Path(local).read_bytes() == content, artifact_path
    assert autolog.list_artifacts(run_id, "data") == [
        ArtifactEntry(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, "data")]
    back = autolog.download_artifacts(run_id, "data", tmp_path / "autolog")
    assert (Path(back) / "split" / "test.csv").read_bytes() == b"x,y\n3,4\n"

    # The same bytes to the same place: the proxy already holds them, nothing is sent.
    assert put_requests(sqlite_server, f"{run_id}/artifacts/models/model.bin") == 1
    with autolog.start_run(run_id=run_id):
        autolog.log_artifact(model, "models")
    assert autolog.flush()
    assert put_requests(sqlite_server, f"{run_id}/artifacts/models/model.bin") == 1

    # New bytes of the same size to the same place (a checkpoint saved every epoch): the
    # proxy lists only sizes, so they are sent, and MLflow reads the new ones.
    newer = write_file(tmp_path / "model.bin", os.urandom(5 * MIB + 1))
    with autolog.start_run(run_id=run_id):
        autolog.log_artifact(newer, "models")
    assert autolog.flush()
    assert put_requests(sqlite_server, f"{run_id}/artifacts/models/model.bin") == 2
    local = client.download_artifacts(run_id, "models/model.bin", str(tmp_path / "mlflow-newer"))
    assert Path(local).read_bytes() == newer.read_bytes()


KILLED_UPLOADER = textwrap.dedent("""
    import sys, autolog
    autolog.set_tracking_uri(sys.argv[1])
    with autolog.start_run() as run:
        print(run.id, flush=True)
        autolog.log_artifact(sys.argv[2], "large")
""")


def test_a_server_killed_mid_upload_gets_the_whole_file_from_autolog_sync(fault_server, tmp_path):
    source = tmp_path / "blocks.bin"
    sha256 = write_large_file(source, 768)
    env = {**os.environ, "AUTOLOG_STRICT": "0", "AUTOLOG_EXIT_TIMEOUT": "2"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, fault_server.uri, str(source)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run_id = child.stdout.readline().strip()
        served = served_path(fault_server, run_id, "large/blocks.bin")
        uploading = fault_server.workdir / "artifacts"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the server's half-written file grows
            partial = [path for path in uploading.rglob(".artifact.uploading.*")
                       if f"/{run_id}/" in str(path) and path.stat().st_size > 64 * MIB]
            if partial:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the upload never started")
        fault_server.kill()
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    assert "autolog sync" in stderr  # the exit names the command that sends the rest
    assert not served.exists()  # killed mid-upload

    fault_server.start()
    synced = CliRunner().invoke(main, ["sync"])
    assert synced.exit_code == 0, synced.output
    assert "uploaded 1 artifact(s)" in synced.output
    assert served.stat().st_size == source.stat().st_size
    assert sha256_of(served) == sha256
    assert [(f.path, f.file_size) for f in fault_server.client().list_artifacts(run_id, "large")] == [
        ("large/blocks.bin", source.stat().st_size)]
    served.unlink()
    for partial in uploading.rglob(".artifact.uploading.*"):  # what the killed server left
        partial.unlink()
