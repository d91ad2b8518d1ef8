"""The ``s3://`` destination against moto's S3 server, checked with MLflow's own client on a
``mlflow server --default-artifact-root s3://… --no-serve-artifacts``: what autolog puts in
the bucket MLflow lists and downloads, and what MLflow put there autolog reads."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow_server import MlflowServer, free_port
from s3_server import BUCKET, start_moto, use_s3_endpoint

import autolog
from autolog.artifacts.destinations import destination_for
from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    VerificationError,
)
from autolog.artifacts.destinations.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Destination
from autolog.artifacts.reading import download, files_under
from autolog.cli import main

pytest_plugins = ("mlflow_server", "s3_server")

BLOCK = 1 << 20
LARGE_FILE_BYTES = 2 << 30
PEAK_RSS_LIMIT = 200 << 20


def _write(path: Path, data: bytes) -> tuple[Path, str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def _generate(path: Path, blocks: int) -> tuple[Path, str, int]:
    """``blocks`` MiB of varying bytes: one random block, each copy stamped with its number
    (so no two parts of the file are alike), written and hashed block by block."""
    block = bytearray(os.urandom(BLOCK))
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for number in range(blocks):
            block[:8] = number.to_bytes(8, "little")
            out.write(block)
            digest.update(block)
    return path, digest.hexdigest(), blocks * BLOCK


def _entries(file_infos) -> list[ArtifactEntry]:
    return [ArtifactEntry(info.path, info.is_dir, info.file_size) for info in file_infos]


@pytest.fixture
def mlflow_run(s3_env, s3_mlflow_server):
    """A run MLflow created on the server; its artifact URI is in the moto bucket."""
    client = s3_mlflow_server.client()
    run = client.create_run("0")
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    return client, run


def test_what_autolog_uploads_mlflow_lists_and_downloads(mlflow_run, tmp_path):
    client, run = mlflow_run
    destination = destination_for(run.info.artifact_uri, "http://unused")
    assert isinstance(destination, S3Destination)
    files = {
        "notes.txt": b"hello from autolog\n",
        "model/weights.bin": os.urandom(300_000),
        "model/config/params.json": json.dumps({"lr": 0.1}).encode(),
    }
    for artifact_path, data in files.items():
        source, sha256, size = _write(tmp_path / "src" / artifact_path, data)
        moved = []
        destination.upload(source, artifact_path, sha256, size, moved.append)
        assert sum(moved) == size
        assert destination.stored(artifact_path, sha256, size)

    assert _entries(client.list_artifacts(run.info.run_id)) == [
        ArtifactEntry("model", True, None), ArtifactEntry("notes.txt", False, 19)]
    assert _entries(client.list_artifacts(run.info.run_id, "model")) == [
        ArtifactEntry("model/config", True, None), ArtifactEntry("model/weights.bin", False, 300_000)]
    for path in (None, "model", "model/config"):
        assert destination.list(path) == _entries(client.list_artifacts(run.info.run_id, path))
    for artifact_path, data in files.items():
        downloaded = client.download_artifacts(run.info.run_id, artifact_path, str(tmp_path / "mlflow"))
        assert Path(downloaded).read_bytes() == data
        ours = tmp_path / "ours" / artifact_path
        ours.parent.mkdir(parents=True, exist_ok=True)
        destination.download(artifact_path, ours)
        assert ours.read_bytes() == data


def test_a_key_that_climbs_out_of_the_run_is_never_written_outside_the_download(
        s3_env, mlflow_run, tmp_path):
    """An S3 key can be anything: ``<run>/artifacts/../escaped.txt`` lists as a folder
    ``..``. A download of the run refuses it rather than write outside its folder."""
    client, run = mlflow_run
    root = run.info.artifact_uri.removeprefix(f"s3://{BUCKET}/")
    s3_env.client().put_object(Bucket=BUCKET, Key=f"{root}/../escaped.txt", Body=b"out")
    s3_env.client().put_object(Bucket=BUCKET, Key=f"{root}/fine.txt", Body=b"in")
    destination = S3Destination(run.info.artifact_uri)
    with pytest.raises(ArtifactError, match="unsafe artifact path"):
        files_under(destination, "")
    with pytest.raises(ArtifactError, match="unsafe artifact path"):
        download(destination, "", tmp_path / "dl" / "inner")
    assert not list((tmp_path / "dl").rglob("*.txt"))  # nothing written, inside or out
    s3_env.client().delete_object(Bucket=BUCKET, Key=f"{root}/../escaped.txt")


def test_what_mlflow_logged_autolog_lists_and_downloads(mlflow_run, tmp_path):
    client, run = mlflow_run
    folder = tmp_path / "outputs"
    _write(folder / "a.csv", b"x,y\n1,2\n")
    _write(folder / "deep" / "b.bin", os.urandom(70_000))
    client.log_artifacts(run.info.run_id, str(folder), "outputs")
    client.log_text(run.info.run_id, "plain text", "readme.txt")
    destination = S3Destination(run.info.artifact_uri)

    for path in (None, "outputs", "outputs/deep"):
        assert destination.list(path) == _entries(client.list_artifacts(run.info.run_id, path))
    assert destination.list("outputs") == [ArtifactEntry("outputs/a.csv", False, 8),
                                           ArtifactEntry("outputs/deep", True, None)]
    assert destination.list("readme.txt") == []  # a file is not a folder, as for MLflow
    assert destination.list("nothing/here") == []
    destination.download("outputs/deep/b.bin", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == (folder / "deep" / "b.bin").read_bytes()
    # MLflow's objects carry no checksum: autolog cannot tell they hold the same bytes
    data = (folder / "a.csv").read_bytes()
    assert not destination.stored("outputs/a.csv", hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(ArtifactNotFoundError, match="nothing.bin"):
        destination.download("nothing.bin", tmp_path / "nothing.bin")
    assert not (tmp_path / "nothing.bin").exists()


def test_stored_means_same_size_and_same_checksum(s3_env, tmp_path):
    destination = S3Destination(f"s3://{BUCKET}/stored-test")
    source, sha256, size = _write(tmp_path / "f.bin", b"0123456789")
    assert not destination.stored("f.bin", sha256, size)
    destination.upload(source, "f.bin", sha256, size)
    assert destination.stored("f.bin", sha256, size)
    assert not destination.stored("f.bin", hashlib.sha256(b"9876543210").hexdigest(), size)
    assert not destination.stored("f.bin", sha256, size + 1)
    head = s3_env.client().head_object(Bucket=BUCKET, Key="stored-test/f.bin")
    assert head["Metadata"] == {"sha256": sha256}


def test_a_large_file_goes_up_in_parts(s3_env, tmp_path):
    source, sha256, size = _generate(tmp_path / "big.bin", MULTIPART_THRESHOLD // BLOCK + 6)
    destination = S3Destination(f"s3://{BUCKET}/multipart")
    moved = []
    destination.upload(source, "big.bin", sha256, size, moved.append)
    assert sum(moved) == size
    head = s3_env.client().head_object(Bucket=BUCKET, Key="multipart/big.bin")
    parts = -(-size // PART_SIZE)
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's ETag of a multipart upload
    assert destination.stored("big.bin", sha256, size)


def test_a_size_that_does_not_match_fails_verification(s3_env, tmp_path):
    destination = S3Destination(f"s3://{BUCKET}/verify")
    source, sha256, size = _write(tmp_path / "f.bin", b"abc")
    with pytest.raises(VerificationError, match="holds 3 bytes"):
        destination.upload(source, "f.bin", sha256, size + 1)


def test_a_bucket_that_does_not_exist_is_refused(s3_env, tmp_path):
    destination = S3Destination("s3://no-such-bucket-here/prefix")
    source, sha256, size = _write(tmp_path / "f.bin", b"abc")
    with pytest.raises(ArtifactRefusedError, match="NoSuchBucket.*does not exist"):
        destination.upload(source, "f.bin", sha256, size)
    with pytest.raises(ArtifactRefusedError, match="NoSuchBucket"):
        destination.list()
    assert not destination.stored("f.bin", sha256, size)  # a HEAD says no more than 404


def test_an_endpoint_that_is_down_is_unavailable_within_seconds(monkeypatch, tmp_path):
    use_s3_endpoint(monkeypatch, f"http://127.0.0.1:{free_port()}")
    destination = S3Destination(f"s3://{BUCKET}/down")
    source, sha256, size = _write(tmp_path / "f.bin", b"abc")
    for attempt in (lambda: destination.upload(source, "f.bin", sha256, size),
                    lambda: destination.stored("f.bin", sha256, size),
                    destination.list,
                    lambda: destination.download("f.bin", tmp_path / "back.bin")):
        started = time.monotonic()
        with pytest.raises(DestinationUnavailableError, match="did not answer"):
            attempt()
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(("status", "code", "error", "words"), [
    (503, "SlowDown", DestinationUnavailableError, "could not take"),
    (500, "InternalError", DestinationUnavailableError, "could not take"),
    (400, "RequestTimeout", DestinationUnavailableError, "could not take"),
    (403, "AccessDenied", ArtifactRefusedError, "may not use this bucket"),
    (403, "InvalidAccessKeyId", ArtifactRefusedError, "check AWS_ACCESS_KEY_ID"),
    (403, "SignatureDoesNotMatch", ArtifactRefusedError, "check AWS_SECRET_ACCESS_KEY"),
])
def test_s3_errors_are_retried_later_or_refused_for_good(scripted_s3, tmp_path, status, code,
                                                         error, words):
    scripted_s3.answer = (status, code)
    destination = S3Destination(f"s3://{BUCKET}/scripted")
    source, sha256, size = _write(tmp_path / "f.bin", b"abc")
    with pytest.raises(error, match=f"{code}.*{words}|{words}.*{code}") as raised:
        destination.upload(source, "f.bin", sha256, size)
    assert type(raised.value) is error
    assert scripted_s3.requests <= 3 * 2  # botocore's own retries stay few (HEAD, then PUT)
    with pytest.raises(error):
        destination.list()


def test_without_boto3_the_error_says_what_to_install(monkeypatch):
    for name in ["boto3", *(name for name in sys.modules if name.startswith("boto3."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ArtifactRefusedError, match=r'pip install "autolog-ml\[s3\]"'):
        S3Destination(f"s3://{BUCKET}/prefix")


def test_an_endpoint_killed_mid_upload_fails_the_attempt_and_the_next_one_succeeds(
        monkeypatch, tmp_path):
    server = start_moto(tmp_path / "moto")
    try:
        use_s3_endpoint(monkeypatch, server.uri)
        source, sha256, size = _generate(tmp_path / "f.bin", 100)
        destination = S3Destination(f"s3://{BUCKET}/killed")
        moved = []
        killed = threading.Event()

        def kill_after_some_parts(count: int) -> None:
            moved.append(count)
            if sum(moved) > 2 * PART_SIZE and not killed.is_set():
                killed.set()
                server.kill()

        started = time.monotonic()
        with pytest.raises(DestinationUnavailableError):
            destination.upload(source, "f.bin", sha256, size, kill_after_some_parts)
        assert killed.is_set() and time.monotonic() - started < 30

        server.start()  # moto keeps its state in memory: the bucket is made again
        server.create_bucket()
        assert not destination.stored("f.bin", sha256, size)
        destination.upload(source, "f.bin", sha256, size)
        assert destination.stored("f.bin", sha256, size)
    finally:
        server.stop()


# The peak is VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (Linux
# keeps it across exec), and the parent here is pytest with MLflow loaded (~190 MiB).
UPLOAD_AND_MEASURE = """
import json, sys, time
import autolog
tracking_uri, run_id, source = sys.argv[1:]
autolog.set_tracking_uri(tracking_uri)
started = time.monotonic()
with autolog.start_run(run_id=run_id):
    autolog.log_artifact(source)  # staged (copied), then uploaded to S3 in the background
flushed = autolog.flush(timeout=420)
seconds = time.monotonic() - started
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "flushed": flushed, "peak_rss": peak_kib * 1024}))
"""


def test_a_2gb_file_uploads_with_flat_memory_and_arrives_whole(s3_env, s3_mlflow_server, mlflow_run,
                                                              tmp_path):
    client, run = mlflow_run
    source, sha256, size = _generate(tmp_path / "big.bin", LARGE_FILE_BYTES // BLOCK)
    finished = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_MEASURE, s3_mlflow_server.uri, run.info.run_id, str(source)],
        capture_output=True, text=True, timeout=480)
    assert finished.returncode == 0, finished.stderr[-3000:]
    measured = json.loads(finished.stdout.strip().splitlines()[-1])
    seconds, peak_mib = measured["seconds"], measured["peak_rss"] / 2**20
    print(f"\n2 GiB to moto's S3 through log_artifact and flush: {seconds:.1f} s, "
          f"{size / seconds / 2**20:.0f} MiB/s, the logging process's peak RSS {peak_mib:.0f} MiB")
    assert measured["flushed"]
    assert measured["peak_rss"] < PEAK_RSS_LIMIT

    assert _entries(client.list_artifacts(run.info.run_id)) == [ArtifactEntry("big.bin", False, size)]
    s3 = s3_env.client()
    key = f"{run.info.artifact_uri.removeprefix(f's3://{BUCKET}/')}/big.bin"
    try:
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
        digest = hashlib.sha256()
        for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(BLOCK):
            digest.update(chunk)
        assert digest.hexdigest() == sha256
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)  # moto holds objects in memory


# -- through autolog's API: a tracking server whose artifact root is in S3 --------------------


def _sha256_in_s3(s3, key: str) -> str:
    """The sha256 of an object, read in one streamed GET (moto reads a ranged GET of a large
    object whole each time, so MLflow's parallel download would be slow here)."""
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(BLOCK):
        digest.update(chunk)
    return digest.hexdigest()


def _key_of(client, run_id: str, artifact_path: str) -> str:
    return f"{client.get_run(run_id).info.artifact_uri.removeprefix(f's3://{BUCKET}/')}/{artifact_path}"


def _puts(server, key: str) -> int:
    """How many PUT requests moto's access log shows for ``key`` (parts included)."""
    return sum(1 for line in server.log_path.read_text(errors="replace").splitlines()
               if f'"PUT /{BUCKET}/{key}' in line)


def test_log_artifact_to_a_server_with_an_s3_root_reaches_s3_and_mlflow_reads_it(
        s3_env, s3_mlflow_server, spool_dir, tmp_path):
    source, sha256, size = _write(tmp_path / "model.bin", os.urandom(1_500_000))
    _write(tmp_path / "report" / "plots" / "a.csv", b"x,y\n1,2\n")
    autolog.set_tracking_uri(s3_mlflow_server.uri)
    with autolog.start_run() as run:
        autolog.log_artifact(source, "checkpoints")
        autolog.log_artifacts(tmp_path / "report", "report")
        autolog.log_text("hello", "notes.txt")
        autolog.log_dict({"lr": 0.1}, "config.json")
    assert autolog.flush()

    client = s3_mlflow_server.client()
    assert client.get_run(run.id).info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    assert [(entry.path, entry.is_dir) for entry in client.list_artifacts(run.id)] == [
        ("checkpoints", True), ("config.json", False), ("notes.txt", False), ("report", True)]
    for path, data in {"checkpoints/model.bin": source.read_bytes(), "notes.txt": b"hello",
                       "report/plots/a.csv": b"x,y\n1,2\n"}.items():
        downloaded = client.download_artifacts(run.id, path, str(tmp_path / "mlflow"))
        assert Path(downloaded).read_bytes() == data
    config = client.download_artifacts(run.id, "config.json", str(tmp_path / "mlflow"))
    assert json.loads(Path(config).read_text()) == {"lr": 0.1}
    for path in (None, "report", "report/plots"):
        assert autolog.list_artifacts(run.id, path) == _entries(client.list_artifacts(run.id, path))
    local = autolog.download_artifacts(run.id, "checkpoints/model.bin", tmp_path / "ours")
    assert Path(local).read_bytes() == source.read_bytes()
    head = s3_env.client().head_object(Bucket=BUCKET, Key=_key_of(client, run.id, "checkpoints/model.bin"))
    assert head["Metadata"]["sha256"] == sha256 and head["ContentLength"] == size


def test_the_same_bytes_logged_again_to_the_same_path_are_not_sent_again(
        s3_env, s3_mlflow_server, spool_dir, tmp_path):
    source, _, _ = _write(tmp_path / "weights.bin", os.urandom(200_000))
    autolog.set_tracking_uri(s3_mlflow_server.uri)
    with autolog.start_run() as run:
        autolog.log_artifact(source)
        assert autolog.flush()
        key = _key_of(s3_mlflow_server.client(), run.id, "weights.bin")
        assert _puts(s3_env, key) == 1
        autolog.log_artifact(source)  # the same bytes: a HEAD finds them there
        assert autolog.flush()
        assert _puts(s3_env, key) == 1
        source.write_bytes(os.urandom(200_000))  # other bytes under the same name go up
        autolog.log_artifact(source)
        assert autolog.flush()
        assert _puts(s3_env, key) == 2
    downloaded = s3_mlflow_server.client().download_artifacts(run.id, "weights.bin", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == source.read_bytes()


def test_a_script_that_logs_then_exits_at_once_has_its_file_uploaded_at_exit(
        s3_env, s3_mlflow_server, spool_dir, tmp_path):
    """The upload runs during the exit wait, in an atexit handler, after threading's shutdown:
    s3transfer cannot start its thread pool then, so the parts go up on the uploader's thread."""
    source, sha256, size = _generate(tmp_path / "model.bin", MULTIPART_THRESHOLD // BLOCK + 6)
    script = f"""
import autolog
with autolog.start_run() as run:
    print(run.id, flush=True)
    autolog.log_artifact({str(source)!r})
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "AUTOLOG_TRACKING_URI": s3_mlflow_server.uri})
    assert child.returncode == 0, child.stderr
    assert "autolog:" not in child.stderr  # nothing left to say at exit
    run_id = child.stdout.split()[0]
    client = s3_mlflow_server.client()
    assert _entries(client.list_artifacts(run_id)) == [ArtifactEntry("model.bin", False, size)]
    assert _sha256_in_s3(s3_env.client(), _key_of(client, run_id, "model.bin")) == sha256


@pytest.fixture
def own_s3_and_server(tmp_path, monkeypatch):
    """A moto server and a mlflow server with its artifact root there, both the test's own
    (it kills the S3 endpoint); this process and autolog use them."""
    moto_server = start_moto(tmp_path / "moto")
    mlflow_server = MlflowServer(
        f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow",
        artifact_args=["--default-artifact-root", f"s3://{BUCKET}/mlflow", "--no-serve-artifacts"],
        env=moto_server.env())
    try:
        mlflow_server.start()
        use_s3_endpoint(monkeypatch, moto_server.uri)
        autolog.set_tracking_uri(mlflow_server.uri)
        yield moto_server, mlflow_server
    finally:
        mlflow_server.stop()
        moto_server.stop()


def test_uploads_wait_while_the_s3_endpoint_is_down_and_arrive_when_it_is_back(
        own_s3_and_server, spool_dir, tmp_path):
    moto_server, mlflow_server = own_s3_and_server
    source, sha256, size = _write(tmp_path / "data.bin", os.urandom(2_000_000))
    moto_server.kill()
    with autolog.start_run() as run:
        started = time.monotonic()
        autolog.log_artifact(source)
        assert time.monotonic() - started < 1  # the caller never waits for S3
        autolog.log_metric("loss", 0.5)
    with pytest.warns(autolog.AutologWarning) as seen:  # the uploader's and flush's
        assert not autolog.flush(timeout=5)
    said = [str(warning.message) for warning in seen]
    assert any("artifact uploads wait" in line and moto_server.uri in line for line in said), said
    assert any(re.search("1 artifact upload.*not sent yet.*autolog sync", line) for line in said), said

    moto_server.start()  # moto starts empty: the bucket is made again
    moto_server.create_bucket()
    assert autolog.flush(timeout=120)
    client = mlflow_server.client()
    assert _entries(client.list_artifacts(run.id)) == [ArtifactEntry("data.bin", False, size)]
    assert _sha256_in_s3(moto_server.client(), _key_of(client, run.id, "data.bin")) == sha256


def test_a_process_whose_s3_upload_was_cut_leaves_it_to_autolog_sync(own_s3_and_server, spool_dir,
                                                                     tmp_path):
    """The endpoint is killed once the first parts of a 300 MiB file are in; the process
    exits after its bounded wait, naming ``autolog sync``; with S3 back, sync sends it
    whole."""
    moto_server, mlflow_server = own_s3_and_server
    source, sha256, size = _generate(tmp_path / "big.bin", 300)
    script = f"""
import autolog
with autolog.start_run() as run:
    print(run.id, flush=True)
    autolog.log_artifact({str(source)!r})
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AUTOLOG_STRICT": "0", "AUTOLOG_TRACKING_URI": mlflow_server.uri,
             "AUTOLOG_EXIT_TIMEOUT": "3"})
    deadline = time.monotonic() + 120
    while "partNumber=" not in moto_server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline and child.poll() is None, (
            f"no part was uploaded: {child.communicate()}\n{moto_server.log_path.read_text()[-3000:]}")
        time.sleep(0.02)
    moto_server.kill()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "not sent yet" in err and "autolog sync" in err
    run_id = out.split()[0]

    moto_server.start()
    moto_server.create_bucket()
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 0, result.output
    assert "uploaded 1 artifact(s)" in result.output
    client = mlflow_server.client()
    assert _entries(client.list_artifacts(run_id)) == [ArtifactEntry("big.bin", False, size)]
    assert _sha256_in_s3(moto_server.client(), _key_of(client, run_id, "big.bin")) == sha256
