"""Artifacts: how long ``log_artifact`` blocks the caller, how fast the upload goes, and
how much disk the same bytes take, autolog beside MLflow, in one run.

    python benchmarks/bench_artifacts.py            # 100 MB file, rewrites its RESULTS.md section
    python benchmarks/bench_artifacts.py --quick    # 20 MB file, fewer rounds, prints only

The script generates one file of random bytes and, in each round, rewrites its first 32
bytes: every round logs content nobody logged before, so neither autolog's staging area
(one object per sha256) nor a destination's "already stored" check can skip the work.
Each round logs to a new run. It measures, median of the rounds:

* the embedded store (``sqlite:///…``, artifacts in ``./mlruns``): how long
  ``autolog.log_artifact`` blocks (copy into the staging area, hashing as it copies),
  and the time until ``autolog.flush()`` returns True (the upload is a hard link),
  beside ``mlflow.log_artifact`` (a copy into ``mlruns``);
* one local ``mlflow server --artifacts-destination`` started by the script (the
  ``mlflow-artifacts:`` proxy): the same two figures for autolog, beside
  ``mlflow.log_artifact`` (MLflow uploads on the caller's thread, so its blocking time
  is its upload) and beside a plain streamed ``requests.put`` of the file to the same
  proxy, the baseline of the throughput target;
* S3, where moto and boto3 are installed: moto's server and a second ``mlflow server
  --default-artifact-root s3://bench/artifacts --no-serve-artifacts``; the same figures,
  the baseline being boto3's ``upload_file`` (multipart, 10 threads, its defaults);
* stored once: the same file logged to 10 runs on the embedded store, by autolog and by
  MLflow, each in a fresh process and folder; the disk used is the sum of ``st_blocks``
  of the distinct inodes under ``mlruns`` and autolog's staging area.

A warm-up round per destination is not counted. The order of the uploads in a round
rotates from round to round, so that none always runs first. Before each upload
(untimed), the files the previous ones stored are deleted (local roots, the proxy's
folder, the bucket) and ``os.sync()`` runs, so that none pays for writing back the
previous one's 100 MB, and the page cache does not grow over the run: on this VM, once
a process had written about 1 GB of files it kept, placing 100 MB more in the page cache
took ten times the kernel time (MLflow's local copy went from 35 to 290 ms, autolog's
staging copy from 95 to 350 ms), which measured the VM's memory, not the code.
Throughput ratios are the median of the per-round ratios: the two uploads compared ran
seconds apart, which keeps the ratio steady while other work comes and goes on the
machine. What autolog logged is checked with MLflow's client: every run lists the file
at its size, and the last round's file is downloaded and its sha256 compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

THROUGHPUT_RATIO_TARGET = 0.8
DEDUP_RUNS = 10
STORED_ONCE_TARGET = 1.1  # disk used for 10 runs, in copies of the file
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "bench"
MB = 1e6


# -- services ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow's and autolog's settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AUTOLOG_"))}
    env.update(extra)
    return env


@contextmanager
def service(argv: list[str], health_url: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """A server process (its own process group) that answers ``health_url``; killed after."""
    import requests

    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=log.parent, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(health_url, timeout=1).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} did not start; see {log}")
            time.sleep(0.2)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def mlflow_server(workdir: Path, name: str, artifact_args: list[str],
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """A local MLflow server with a SQLite backend store; yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
            f"sqlite:///{workdir / f'{name}.db'}", *artifact_args, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    environment = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    with service(argv, f"{uri}/health", workdir / f"{name}.log", environment):
        yield uri


@contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """moto's S3 in server mode, with the bucket ``bench``; yields its endpoint URL."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with service(argv, f"{endpoint}/moto-api/", workdir / "moto.log", clean_env(**S3_ENV)):
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint


# -- the file ---------------------------------------------------------------------------------


class RandomFile:
    """A file of random bytes, written once; :meth:`fresh` makes its content new."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        block = 1 << 20
        with open(path, "wb") as writer:
            for start in range(0, size, block):
                writer.write(os.urandom(min(block, size - start)))

    def fresh(self) -> None:
        with open(self.path, "r+b") as writer:
            writer.write(os.urandom(32))


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# -- what is measured -------------------------------------------------------------------------


class Rounds:
    """Per-round samples, by name, in seconds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def autolog_round(data: RandomFile, tracking_uri: str, experiment: str, rounds: Rounds,
                  verify: bool) -> str:
    """One autolog run logging the file: blocking time, then time until flush() is True."""
    import autolog

    autolog.set_tracking_uri(tracking_uri)
    with autolog.start_run(run_name="artifact", experiment=experiment) as run:
        started, cpu = time.perf_counter(), time.thread_time()
        autolog.log_artifact(data.path)
        returned, cpu = time.perf_counter(), time.thread_time() - cpu
        assert autolog.flush(timeout=600), "autolog.flush() did not see the upload through"
        done = time.perf_counter()
    # The run's end reaches the server before the next round (and before the server goes).
    assert autolog.flush(timeout=60), "the server did not acknowledge the run's end"
    rounds.add("autolog blocks", returned - started)
    rounds.add("autolog blocks, CPU", cpu)
    rounds.add("autolog to flush", done - started)
    rounds.add("autolog upload phase", done - returned)
    if verify:
        check_with_mlflow(tracking_uri, run.id, data)
    return run.id


def mlflow_round(data: RandomFile, tracking_uri: str, experiment: str, rounds: Rounds) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        rounds.add("mlflow blocks", timed(lambda: mlflow.log_artifact(str(data.path))))
    return run.info.run_id


def check_with_mlflow(tracking_uri: str, run_id: str, data: RandomFile) -> None:
    """MLflow's client lists the file at its size, and downloads the same sha256."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    sizes = {entry.path: entry.file_size for entry in client.list_artifacts(run_id)}
    assert sizes == {data.path.name: data.size}, f"MLflow lists {sizes} for run {run_id}"
    with tempfile.TemporaryDirectory(dir=data.path.parent) as folder:
        local = Path(client.download_artifacts(run_id, data.path.name, folder))
        assert file_sha256(local) == file_sha256(data.path), f"run {run_id}: the downloaded file differs"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while block := reader.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def remove_files(*folders: Path) -> None:
    for folder in folders:
        for path in list(folder.rglob("*")):
            if path.is_file():
                path.unlink()


def measure(data: RandomFile, count: int, tracking_uri: str, label: str,
            plain: Callable[[int], None] | None, clean: Callable[[], None]) -> Rounds:
    """A warm-up round (server start, connections, first experiment: not counted), then
    ``count`` rounds of autolog, MLflow and (where given) the plain upload, in an order
    that rotates; the last round's autolog file is checked through MLflow's client.
    ``clean`` deletes what the steps stored, between steps."""
    rounds = Rounds()
    steps: list[Callable[[int], object]] = [
        lambda i: autolog_round(data, tracking_uri, f"bench/autolog-{label}", rounds, i == count),
        lambda i: mlflow_round(data, tracking_uri, f"bench/mlflow-{label}", rounds),
    ]
    if plain is not None:
        steps.append(lambda i: rounds.add("plain", timed(lambda: plain(i))))
    for i in range(count + 1):
        for step in steps[i % len(steps):] + steps[:i % len(steps)]:
            data.fresh()
            clean()
            os.sync()
            step(i)
        if i == 0:
            rounds.samples.clear()
    for name, samples in rounds.samples.items():  # on stdout only: to see the spread
        print(f"{label}, {name}:", " ".join(f"{value * 1000:.0f}" for value in samples), "ms")
    return rounds


def empty_bucket(endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])


def plain_put(server: str, data: RandomFile) -> Callable[[int], None]:
    """A streamed ``requests.put`` of the file to the server's artifact proxy."""
    import requests

    def put(i: int) -> None:
        url = f"{server}/api/2.0/mlflow-artifacts/artifacts/bench/plain/round{i}/{data.path.name}"
        with open(data.path, "rb") as body:
            requests.put(url, data=body, timeout=600).raise_for_status()

    return put


def plain_upload_file(endpoint: str, data: RandomFile) -> Callable[[int], None]:
    """boto3's ``upload_file`` of the file to the bucket, with its default transfer settings."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)

    def upload(i: int) -> None:
        client.upload_file(str(data.path), BUCKET, f"plain/round{i}/{data.path.name}")

    return upload


# -- stored once ------------------------------------------------------------------------------

DEDUP_CHILD = """
import json, sys, time
library, uri, path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ids, blocks = [], []
if library == "autolog":
    import autolog
    autolog.set_tracking_uri(uri)
    for i in range(runs):
        with autolog.start_run(run_name=f"copy{i}", experiment="bench/dedup") as run:
            started = time.perf_counter()
            autolog.log_artifact(path)
            blocks.append(time.perf_counter() - started)
            ids.append(run.id)
    assert autolog.flush(timeout=600)
else:
    import mlflow
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench/dedup")
    for i in range(runs):
        with mlflow.start_run() as run:
            started = time.perf_counter()
            mlflow.log_artifact(path)
            blocks.append(time.perf_counter() - started)
            ids.append(run.info.run_id)
print(json.dumps({"run_ids": ids, "blocks": blocks}))
"""


def disk_used(*folders: Path) -> int:
    """Bytes allocated to the distinct inodes under ``folders`` (a hard-linked file once)."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for folder in folders:
        for parent, _, names in os.walk(folder):
            for name in names:
                info = os.lstat(Path(parent) / name)
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    used += info.st_blocks * 512
    return used


def stored_once(workdir: Path, data: RandomFile, library: str) -> tuple[int, float]:
    """The file logged to DEDUP_RUNS runs of a fresh embedded store by ``library`` in a
    process of its own: bytes on disk (mlruns and staging) and median blocking seconds."""
    import mlflow

    folder = workdir / f"dedup-{library}"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.sync()
    env = dict(os.environ, AUTOLOG_STAGING_DIR=str(folder / "staging"),
               AUTOLOG_SPOOL_DIR=str(folder / "spool"))
    answer = subprocess.run([sys.executable, "-c", DEDUP_CHILD, library, uri, str(data.path),
                             str(DEDUP_RUNS)], cwd=folder, env=env, check=True,
                            capture_output=True, text=True)
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    client = mlflow.MlflowClient(uri)
    for run_id in result["run_ids"]:
        sizes = {entry.path: entry.file_size for entry in client.list_artifacts(run_id)}
        assert sizes == {data.path.name: data.size}, f"MLflow lists {sizes} for run {run_id}"
    return disk_used(folder / "mlruns", folder / "staging"), statistics.median(result["blocks"])


# -- the report -------------------------------------------------------------------------------


def seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


def rate(size: int, value: float) -> str:
    return f"{size / MB / value:,.0f} MB/s"


def throughput_ratio(rounds: Rounds, autolog_time: str) -> float:
    """autolog's throughput as a fraction of the plain upload's. Per round, the two ran
    seconds apart: the median of their ratios is steadier than a ratio of medians while
    other work comes and goes on the machine."""
    return statistics.median(plain / ours for plain, ours in zip(rounds.samples["plain"],
                                                                 rounds.samples[autolog_time]))


def destination_rows(rounds: Rounds, size: int, where: str,
                     plain_name: str | None) -> list[tuple[str, str, str]]:
    """Table rows for one destination (``plain_name``: the plain upload's, if any)."""
    ours_block, ours_total = rounds.median("autolog blocks"), rounds.median("autolog to flush")
    theirs = rounds.median("mlflow blocks")
    rows = [
        (f"{where}: `autolog.log_artifact` blocks the caller", seconds(ours_block),
         f"{ours_block / theirs:.2f}× MLflow's; the caller's thread used "
         f"{seconds(rounds.median('autolog blocks, CPU'))} of CPU"),
        (f"{where}: `mlflow.log_artifact` blocks the caller", seconds(theirs),
         f"{rate(size, theirs)} (MLflow uploads while it blocks)"),
        (f"{where}: autolog, `log_artifact` → `flush()` True", seconds(ours_total), rate(size, ours_total)),
        (f"{where}: autolog, its upload phase alone (return → `flush()`)",
         seconds(rounds.median("autolog upload phase")),
         "a hard link of the staged copy" if plain_name is None
         else rate(size, rounds.median("autolog upload phase"))),
    ]
    if plain_name is not None:
        plain = rounds.median("plain")
        rows.append((f"{where}: {plain_name}", seconds(plain),
                     f"{rate(size, plain)}; autolog's throughput: "
                     f"{throughput_ratio(rounds, 'autolog to flush'):.2f}× end to end, "
                     f"{throughput_ratio(rounds, 'autolog upload phase'):.2f}× its upload phase alone"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB, 2 rounds; print only")
    args = parser.parse_args()
    size = 20_000_000 if args.quick else 100_000_000
    count = 2 if args.quick else 9

    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # the embedded store's artifacts go to ./mlruns, here
        os.environ["AUTOLOG_SPOOL_DIR"] = str(workdir / "spool")
        os.environ["AUTOLOG_STAGING_DIR"] = str(workdir / "staging")
        os.environ["AUTOLOG_EXIT_TIMEOUT"] = "1"
        (workdir / "data").mkdir()
        started, load_before = time.perf_counter(), os.getloadavg()[0]
        data = RandomFile(workdir / "data" / "model.bin", size)
        rows: list[tuple[str, str, str]] = []
        verdicts: list[str] = []
        skipped: list[str] = []

        staged = workdir / "staging" / "objects"  # uploads done: only local roots still link here
        embedded = measure(data, count, f"sqlite:///{workdir / 'embedded.db'}", "embedded", None,
                           lambda: remove_files(workdir / "mlruns", staged))
        rows += destination_rows(embedded, size, "embedded store", None)

        with mlflow_server(workdir, "proxy", ["--artifacts-destination",
                                              str(workdir / "proxy-artifacts")]) as server:
            proxy = measure(data, count, server, "proxy", plain_put(server, data),
                            lambda: remove_files(workdir / "proxy-artifacts", staged))
        rows += destination_rows(proxy, size, "proxy", "plain streamed `requests.put`")
        verdicts.append(verdict(throughput_ratio(proxy, "autolog to flush"),
                                "proxy: autolog's throughput (log_artifact → flush)",
                                "a plain streamed requests.put"))

        if find_spec("moto") is None or find_spec("boto3") is None:
            skipped.append("S3: skipped: moto[server] or boto3 is not installed")
        else:
            os.environ.update(S3_ENV)  # for boto3 here: the bucket, the baseline, MLflow, autolog
            with moto_server(workdir) as endpoint:
                os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint
                with mlflow_server(workdir, "s3", ["--default-artifact-root", f"s3://{BUCKET}/artifacts",
                                                   "--no-serve-artifacts"],
                                   dict(S3_ENV, MLFLOW_S3_ENDPOINT_URL=endpoint)) as server:
                    s3 = measure(data, count, server, "s3", plain_upload_file(endpoint, data),
                                 lambda: empty_bucket(endpoint))
            rows += destination_rows(s3, size, "S3 (moto)", "boto3 `upload_file`")
            verdicts.append(verdict(throughput_ratio(s3, "autolog to flush"),
                                    "S3: autolog's throughput (log_artifact → flush)",
                                    "boto3's upload_file"))

        ours_disk, ours_block = stored_once(workdir, data, "autolog")
        theirs_disk, theirs_block = stored_once(workdir, data, "mlflow")
        copies = ours_disk / size
        rows += [
            (f"stored once: autolog, the same file to {DEDUP_RUNS} runs (mlruns + staging)",
             f"{ours_disk / MB:,.0f} MB", f"{copies:.2f} copies; blocks {seconds(ours_block)} a call"),
            (f"stored once: MLflow, the same file to {DEDUP_RUNS} runs (mlruns)",
             f"{theirs_disk / MB:,.0f} MB",
             f"{theirs_disk / size:.2f} copies; blocks {seconds(theirs_block)} a call"),
        ]
        verdicts.append(f"- {'PASS' if copies <= STORED_ONCE_TARGET else 'MISSED'}: the same "
                        f"{size / MB:.0f} MB logged to {DEDUP_RUNS} runs takes {copies:.2f} copies "
                        f"of disk (≤ {STORED_ONCE_TARGET}), MLflow {theirs_disk / size:.2f}")
        elapsed = time.perf_counter() - started
        load = os.getloadavg()[0]
        os.chdir("/")

    table = "\n".join(["| measurement | figure | ratio / rate |", "|---|---|---|"]
                      + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    markdown = "\n".join([
        "## Artifacts: blocking time, upload throughput, stored once (`bench_artifacts.py`)", "",
        f"Machine: {machine()}; load average {load_before:.1f} at the start, {load:.1f} at the "
        f"end (other work shares the CPUs). autolog at {autolog_commit()}. A {size / MB:.0f} MB "
        "file of random bytes, new content every "
        f"round (no dedup applies); median of {count} rounds after a warm-up round, each on a new run; "
        "the order of the uploads in a round rotates, each starts after the files stored before "
        "it are deleted and `os.sync()`. Ratios of "
        "throughput are medians of the per-round ratios. One local "
        "`mlflow server --artifacts-destination` (SQLite, one worker) and, for S3, moto's server "
        "with a second `mlflow server --default-artifact-root s3://… --no-serve-artifacts`, "
        f"all started by the script; the run took {elapsed:.0f} s. MB = 10⁶ bytes.", "",
        table, "", "Targets:", *verdicts, *[f"- {line}" for line in skipped],
    ])
    publish("bench_artifacts", markdown, args.quick)


def autolog_commit() -> str:
    """The last commit that changed the autolog package being measured (a commit of this
    benchmark alone changes nothing that is measured)."""
    import autolog

    folder = Path(autolog.__file__).parent
    found = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%h", "--", "."],
                           capture_output=True, text=True)
    return f"commit {found.stdout.strip()}" if found.returncode == 0 else "an installed copy"


def verdict(ratio: float, what: str, baseline: str) -> str:
    return (f"- {'PASS' if ratio >= THROUGHPUT_RATIO_TARGET else 'MISSED'}: {what} "
            f"{ratio:.3f}× ≥ {THROUGHPUT_RATIO_TARGET}× {baseline}")


if __name__ == "__main__":
    main()
