"""The ``s3://`` destination against moto's S3 server, checked with MLflow's own client on a
``mlflow server --default-artifact-root s3://… --no-serve-artifacts``: what autolog puts in
the bucket MLflow lists and downloads, and what MLflow put there autolog reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow_server import free_port
from s3_server import BUCKET, start_moto, use_s3_endpoint

from autolog.artifacts.destinations import destination_for
from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    VerificationError,
)
from autolog.artifacts.destinations.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Destination

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
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if it were not installed
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
from pathlib import Path
from autolog.artifacts.destinations.s3 import S3Destination
uri, source, sha256, size = sys.argv[1:]
started = time.monotonic()
S3Destination(uri).upload(Path(source), "big.bin", sha256, int(size))
seconds = time.monotonic() - started
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss": peak_kib * 1024}))
"""


def test_a_2gb_file_uploads_with_flat_memory_and_arrives_whole(s3_env, mlflow_run, tmp_path):
    client, run = mlflow_run
    source, sha256, size = _generate(tmp_path / "big.bin", LARGE_FILE_BYTES // BLOCK)
    finished = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_MEASURE, run.info.artifact_uri, str(source), sha256, str(size)],
        capture_output=True, text=True, timeout=480)
    assert finished.returncode == 0, finished.stderr[-3000:]
    measured = json.loads(finished.stdout.strip().splitlines()[-1])
    seconds, peak_mib = measured["seconds"], measured["peak_rss"] / 2**20
    print(f"\n2 GiB to moto's S3: {seconds:.1f} s, {size / seconds / 2**20:.0f} MiB/s, "
          f"uploading process's peak RSS {peak_mib:.0f} MiB")
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
