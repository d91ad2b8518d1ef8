"""``autolog sync`` from the stores autolog no longer writes: a file in autolog v0.1's own
format, and MLflow's ``file:`` stores. What arrived is read back with MLflow's own
client, never with autolog's reading code; what was expected is read from the source
independently (the v0.1 file with plain SQL, the file store with MLflow's client).

Each copy runs against every destination: a real ``mlflow server``, and an MLflow
database ``sqlite:///mlflow.db``, which is skipped until ``open_store`` gives such a file
MLflow's schema.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sqlite3
import struct
import sys
import tracemalloc
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from autolog import sync as sync_module
from autolog.cli import main
from autolog.stores import close_all, open_store
from autolog.stores.v01 import SCHEMA, V01Store, is_v01_file
from autolog.sync import SOURCE_RUN_TAG, copy_between

pytest_plugins = ("mlflow_server",)

FIXTURE = Path(__file__).parent / "data" / "autolog-v0.1.db"
PARENT = "mlflow.parentRunId"


def sync(*args: str):
    return CliRunner().invoke(main, ["sync", *args])


def unique(name: str) -> str:
    return f"migrate/{name}-{uuid.uuid4().hex[:8]}"


# -- destinations -------------------------------------------------------------------------


@dataclass
class Destination:
    kind: str
    uri: str

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="session")
def sql_store_is_mlflows(tmp_path_factory) -> bool:
    """Whether ``open_store`` gives a new ``sqlite:///`` file MLflow's schema yet."""
    probe = tmp_path_factory.mktemp("probe") / "mlflow.db"
    open_store(f"sqlite:///{probe}")
    close_all()
    with sqlite3.connect(probe) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    return "alembic_version" in tables


@pytest.fixture(params=["server", "sqlite"])
def destination(request, tmp_path) -> Destination:
    if request.param == "server":
        return Destination("server", request.getfixturevalue("sqlite_server").uri)
    if not request.getfixturevalue("sql_store_is_mlflows"):
        pytest.skip("open_store('sqlite:///…') does not create MLflow's schema yet: the "
                    "MLflow-schema SQL store has not landed")
    return Destination("sqlite", f"sqlite:///{tmp_path / 'mlflow.db'}")


# -- what MLflow holds, compared as it keeps it -------------------------------------------


def as_mlflow_keeps(value: float) -> float | str:
    """MLflow stores ±inf as ±max float; NaN made sortable and comparable."""
    if math.isnan(value):
        return "nan"
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else value


def points(triples) -> list[tuple]:
    """(step, timestamp, value) triples as a sorted multiset, values as MLflow keeps them."""
    return sorted(((step, timestamp, as_mlflow_keeps(value)) for step, timestamp, value in triples),
                  key=repr)


def copies_in(client, experiment: str) -> dict[str, object]:
    """source run id -> MLflow's view of its copy."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return {run.data.tags[SOURCE_RUN_TAG]: run
            for run in client.search_runs([found.experiment_id], max_results=50_000)
            if SOURCE_RUN_TAG in run.data.tags}


def assert_copy(client, copy, expected: dict, copy_ids: dict[str, str]) -> None:
    """``copy`` (MLflow's ``Run``) holds everything ``expected`` says of its source run;
    its parent link names the parent's copy (``copy_ids``: source id -> copy id)."""
    info = copy.info
    assert (info.run_name, info.status, info.start_time, info.end_time) == (
        expected["name"], expected["status"], expected["start"], expected["end"])
    assert copy.data.params == expected["params"]
    for key, value in expected["tags"].items():
        assert copy.data.tags[key] == (copy_ids[value] if key == PARENT else value), key
    assert set(copy.data.metrics) == set(expected["metrics"])
    for key, triples in expected["metrics"].items():
        history = client.get_metric_history(info.run_id, key)
        assert points((m.step, m.timestamp, m.value) for m in history) == points(triples), key


# -- v0.1 files, read and written without autolog ------------------------------------------


def read_v01(path: Path) -> dict[str, dict]:
    """Every run of a v0.1 file, by plain SQL: run id -> experiment, name, status, times,
    params, tags, and each key's (step, timestamp, value) points."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    runs = {}
    for pk, run_id, experiment, name, status, start, end in conn.execute(
            "SELECT run_pk, run_uuid, e.name, r.name, status, start_time, end_time "
            "FROM runs r JOIN experiments e USING (experiment_id)"):
        metrics: dict[str, list] = {}
        for key, count, vals, stamps, steps in conn.execute(
                "SELECT key, points, vals, timestamps, steps FROM metric_chunks WHERE run_pk = ? "
                "ORDER BY chunk_id", (pk,)):
            metrics.setdefault(key, []).extend(zip(struct.unpack(f"<{count}q", steps),
                                                   struct.unpack(f"<{count}q", stamps),
                                                   struct.unpack(f"<{count}d", vals)))
        runs[run_id] = {
            "experiment": experiment, "name": name, "status": status, "start": start, "end": end,
            "params": dict(conn.execute("SELECT key, value FROM params WHERE run_pk = ?", (pk,))),
            "tags": dict(conn.execute("SELECT key, value FROM tags WHERE run_pk = ?", (pk,))),
            "metrics": metrics,
        }
    conn.close()
    return runs


def write_v01(conn: sqlite3.Connection, experiment: str, run_id: str,
              keys: dict[str, list[tuple[int, int, float]]], chunk: int) -> None:
    """One run with ``keys``' (step, timestamp, value) points, ``chunk`` to a chunk row, in
    v0.1's format, into a new file open on ``conn`` (a transaction of its own)."""
    conn.execute("BEGIN")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO experiments VALUES (1, ?, 0)", (experiment,))
    conn.execute("INSERT INTO runs VALUES (1, ?, 1, 'large', 'FINISHED', 1000, 2000)", (run_id,))
    for key, triples in keys.items():
        append_chunks(conn, key, triples, chunk)
    conn.execute("COMMIT")


def append_chunks(conn: sqlite3.Connection, key: str, triples: list[tuple[int, int, float]],
                  chunk: int) -> None:
    for start in range(0, len(triples), chunk):
        part = triples[start:start + chunk]
        steps, stamps, values = zip(*part)
        conn.execute(
            "INSERT INTO metric_chunks (run_pk, key, points, min_step, max_step, vals, "
            "timestamps, steps) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (key, len(part), min(steps), max(steps), struct.pack(f"<{len(part)}d", *values),
             struct.pack(f"<{len(part)}q", *stamps), struct.pack(f"<{len(part)}q", *steps)))
    step, stamp, value = max(triples)
    conn.execute("INSERT OR REPLACE INTO latest_metrics VALUES (1, ?, ?, ?, ?)",
                 (key, value, stamp, step))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def v01_file(tmp_path) -> Path:
    """The committed v0.1 file, copied: its runs' ids are the same in every test."""
    path = tmp_path / "autolog.db"
    shutil.copyfile(FIXTURE, path)
    return path


# -- v0.1 ---------------------------------------------------------------------------------


def test_the_committed_file_is_v01_with_every_case(v01_file):
    runs = read_v01(v01_file)
    by_name = {run["name"]: run for run in runs.values()}
    assert sorted(by_name) == ["baseline", "crashed", "fold-1", "sweep"]
    assert {run["experiment"] for run in runs.values()} == {"Default", "vision/resnet"}
    assert by_name["crashed"]["status"] == "FAILED"
    assert runs[by_name["fold-1"]["tags"][PARENT]] is by_name["sweep"]
    odd = sorted(by_name["sweep"]["metrics"]["odd"])
    assert math.isnan(odd[0][2]) and odd[1][2] == math.inf and odd[2][2] == -math.inf
    assert len(by_name["sweep"]["metrics"]["loss"]) == 50
    assert by_name["sweep"]["tags"]["mlflow.user"] and by_name["sweep"]["params"]["depth"] == "18"


def test_the_schema_the_reader_documents_is_the_one_v01_wrote(v01_file, tmp_path):
    def schema(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
        return {(kind, name, " ".join(sql.split())) for kind, name, sql in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")}

    made = sqlite3.connect(tmp_path / "made.db", isolation_level=None)
    write_v01(made, "e", "r", {}, 1)
    with sqlite3.connect(f"file:{v01_file}?mode=ro", uri=True) as real:
        assert schema(made) == schema(real)
        assert real.execute("PRAGMA user_version").fetchone() == (1,)


def test_a_v01_file_is_told_apart_and_never_written(v01_file, tmp_path):
    before = digest(v01_file)
    assert is_v01_file(v01_file)
    assert not is_v01_file(tmp_path / "missing.db")
    (tmp_path / "text.db").write_text("not a database")
    assert not is_v01_file(tmp_path / "text.db")
    (tmp_path / "empty.db").touch()
    assert not is_v01_file(tmp_path / "empty.db")
    mlflow_db = tmp_path / "mlflow.db"
    Destination("sqlite", f"sqlite:///{mlflow_db}").client().search_experiments()  # MLflow's schema
    assert mlflow_db.exists() and not is_v01_file(mlflow_db)

    store = V01Store(v01_file)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._conn.execute("DELETE FROM runs")
    store.close()
    assert digest(v01_file) == before
    assert sorted(p.name for p in tmp_path.glob("autolog.db*")) == ["autolog.db"]  # no -wal, -shm


def test_a_v01_file_is_copied_whole_and_again_copies_nothing(v01_file, destination):
    expected = read_v01(v01_file)
    before = digest(v01_file)
    source = f"sqlite:///{v01_file}"

    first = sync("--from", source, "--to", destination.uri)
    assert first.exit_code == 0, first.output
    assert "runs: 4 created, 0 updated, 0 already up to date; copied 58 metric points, 7 params" \
        in first.output
    assert "artifacts" not in first.output  # v0.1 had none to leave out
    client = destination.client()
    copies = {source_id: copy for name in ("Default", "vision/resnet")  # a server's Default
              for source_id, copy in copies_in(client, name).items() if source_id in expected}
    assert set(copies) == set(expected)
    copy_ids = {source_id: copy.info.run_id for source_id, copy in copies.items()}
    for run_id, run in expected.items():
        assert client.get_experiment(copies[run_id].info.experiment_id).name == run["experiment"]
        assert_copy(client, copies[run_id], run, copy_ids)

    again = sync("--from", source, "--to", destination.uri)
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 4 already up to date; copied 0 metric points" in again.output
    assert digest(v01_file) == before


LARGE = {"server": 50_000, "sqlite": 200_000}  # a server takes a few thousand points/s


def test_a_large_v01_file_streams_from_its_write_ahead_log(tmp_path, destination, monkeypatch):
    """The points live only in the ``-wal`` of a writer that still has the file open (a
    v0.1 job killed, or running): they are read, a page at a time."""
    count = LARGE[destination.kind]
    loss = [(step, 10_000 + step, step / 3) for step in range(count)]
    acc = [(step, 20_000 + step, step / 100) for step in range(100)]
    path = tmp_path / "large.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    experiment, run_id = unique("large"), uuid.uuid4().hex
    write_v01(writer, experiment, run_id, {"loss": loss, "acc": acc}, chunk=5_000)
    assert (tmp_path / "large.db-wal").stat().st_size > count * 24  # the points are there
    assert is_v01_file(path)
    opened = sync_module.open_source(f"sqlite:///{path}")
    assert isinstance(opened, V01Store)
    opened.close()

    # Streamed: the copy's peak memory is what a copy of 10,000 points takes (a chunk
    # read, a page, a batch sent), not more by any sizeable part of the key's points.
    small = tmp_path / "small.db"
    with sqlite3.connect(small, isolation_level=None) as conn:
        write_v01(conn, unique("small"), uuid.uuid4().hex, {"loss": loss[:10_000]}, chunk=5_000)
    monkeypatch.setattr(sync_module, "PAGE_POINTS", 2_000)
    monkeypatch.setattr(sync_module, "POINTS_PER_CALL", 2_000)
    if destination.kind == "sqlite":
        open_store(destination.uri)  # its modules imported before memory is traced
    tracemalloc.start()
    try:
        whole = [("loss", value, stamp, step) for step, stamp, value in loss]
        held_whole = tracemalloc.get_traced_memory()[0]
        del whole
        peaks = []
        for source in (small, path):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            report = copy_between(f"sqlite:///{source}", destination.uri)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    assert (report.runs_created, report.points) == (1, count + 100)
    assert peaks[1] < peaks[0] + held_whole / 4, (peaks, held_whole)

    client = destination.client()
    (copy,) = copies_in(client, experiment).values()
    assert points((m.step, m.timestamp, m.value)
                  for m in client.get_metric_history(copy.info.run_id, "loss")) == points(loss)
    assert len(client.get_metric_history(copy.info.run_id, "acc")) == 100

    # points added since: only they are sent
    writer.execute("BEGIN")
    append_chunks(writer, "acc", [(step, 30_000 + step, 1.0) for step in range(100, 105)], 5_000)
    writer.execute("COMMIT")
    more = sync("--from", f"sqlite:///{path}", "--to", destination.uri)
    assert "0 created, 1 updated, 0 already up to date; copied 5 metric points" in more.output
    assert len(client.get_metric_history(copy.info.run_id, "acc")) == 105
    writer.close()


# -- MLflow file stores -------------------------------------------------------------------


def write_file_store(root: Path, monkeypatch) -> dict[str, str]:
    """A file store written by MLflow itself (3.17 opens one only with
    ``MLFLOW_ALLOW_FILE_STORE=true``, unset again after): two experiments with a parent,
    its nested child, a FAILED run, NaN/±inf, an artifact, a deleted run and a deleted
    experiment. Returns the names: ``main``, ``other``."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=root.as_uri())
    names = {"main": unique("file-main"), "other": unique("file-other")}
    main_id = client.create_experiment(names["main"])
    other_id = client.create_experiment(names["other"])

    parent = client.create_run(main_id, run_name="parent", tags={"team": "a", "mlflow.user": "ann"},
                               start_time=1_000)
    client.log_batch(parent.info.run_id, params=[Param("lr", "0.1"), Param("depth", "4")],
                     tags=[RunTag("note", "x" * 300)],
                     metrics=[Metric("loss", 1 / (step + 1), 5_000 + step, step) for step in range(300)]
                     + [Metric("odd", math.nan, 1, 0), Metric("odd", math.inf, 2, 1),
                        Metric("odd", -math.inf, 3, 2), Metric("odd", 7.0, 4, 2)])
    (root.parent / "model.txt").write_text("weights")
    client.log_artifact(parent.info.run_id, str(root.parent / "model.txt"))
    child = client.create_run(main_id, run_name="child", start_time=1_000,
                              tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_metric(child.info.run_id, "fold_acc", 0.8, timestamp=6_000, step=1)
    client.set_terminated(child.info.run_id, "FINISHED", end_time=7_000)
    client.set_terminated(parent.info.run_id, "FINISHED", end_time=8_000)
    failed = client.create_run(other_id, run_name="failed", start_time=2_000)
    client.log_param(failed.info.run_id, "seed", "3")
    client.set_terminated(failed.info.run_id, "FAILED", end_time=2_500)
    client.delete_run(client.create_run(main_id, run_name="discarded").info.run_id)
    client.delete_experiment(client.create_experiment(unique("file-deleted")))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    return names


def mlflows_view(root: Path, experiment: str, monkeypatch) -> dict[str, dict]:
    """The active runs of a file store's experiment, as MLflow's client reads them."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=root.as_uri())
    runs = {}
    for run in client.search_runs([client.get_experiment_by_name(experiment).experiment_id]):
        info = run.info
        runs[info.run_id] = {
            "name": info.run_name, "status": info.status, "start": info.start_time,
            "end": info.end_time, "params": run.data.params, "tags": run.data.tags,
            "metrics": {key: [(m.step, m.timestamp, m.value)
                              for m in client.get_metric_history(info.run_id, key)]
                        for key in run.data.metrics}}
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    return runs


def test_an_mlflow_file_store_is_copied_whole(tmp_path, destination, monkeypatch):
    root = tmp_path / "mlruns"
    names = write_file_store(root, monkeypatch)
    expected = {name: mlflows_view(root, name, monkeypatch) for name in names.values()}
    assert [len(runs) for runs in expected.values()] == [2, 1]

    first = sync("--from", "mlruns", "--to", destination.uri, "-e", names["main"],
                 "-e", names["other"])  # a plain relative path: the tests run in tmp_path
    assert first.exit_code == 0, first.output
    assert "runs: 3 created, 0 updated, 0 already up to date; copied 305 metric points, 3 params" \
        in first.output
    assert "artifacts: 1 files copied (7 B), 0 already there" in first.output
    assert "0 deleted experiment(s), 1 deleted run(s)" in first.output  # -e: only their trash
    client = destination.client()
    copies = {name: copies_in(client, name) for name in names.values()}
    copy_ids = {source_id: copy.info.run_id for found in copies.values()
                for source_id, copy in found.items()}
    for name, runs in expected.items():
        assert set(copies[name]) == set(runs)
        for run_id, run in runs.items():
            assert_copy(client, copies[name][run_id], run, copy_ids)
    (parent_id,) = [run_id for run_id, run in expected[names["main"]].items() if run["name"] == "parent"]
    downloaded = client.download_artifacts(copy_ids[parent_id], "model.txt", str(tmp_path))
    assert Path(downloaded).read_text() == "weights"  # MLflow's client reads the copied file
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the reader set it only to open

    # by file: URI, with one point more: only that point is copied
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow
    mlflow.MlflowClient(tracking_uri=root.as_uri()).log_metric(parent_id, "loss", 0.001, 9_000, 300)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    again = sync("--from", root.as_uri(), "--to", destination.uri, "-e", names["main"])
    assert again.exit_code == 0, again.output
    assert "0 created, 1 updated, 1 already up to date; copied 1 metric points" in again.output
    assert "artifacts: 0 files copied (0 B), 1 already there" in again.output
    assert len(client.get_metric_history(copy_ids[parent_id], "loss")) == 301


def test_copying_the_whole_file_store_counts_its_deleted_experiments(tmp_path, monkeypatch):
    root = tmp_path / "mlruns"
    write_file_store(root, monkeypatch)
    result = sync("--from", str(root), "--to", f"sqlite:///{tmp_path / 'new.db'}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 deleted experiment(s), 1 deleted run(s)" in result.output


# -- dry runs and errors ------------------------------------------------------------------


def test_a_dry_run_says_what_would_be_copied_and_writes_nothing(v01_file, tmp_path):
    target = tmp_path / "mlflow.db"
    result = sync("--from", f"sqlite:///{v01_file}", "--to", f"sqlite:///{target}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("experiment 'vision/resnet' (new): 3 runs to create, 0 to update, 0 up to date; "
            "57 metric points to copy") in result.output
    assert ("dry run, nothing written: would create 4 runs, update 0, leave 0 as they are; "
            "would copy 58 metric points, 7 params") in result.output
    assert not target.exists()


def test_a_dry_run_after_a_copy_finds_it_done(tmp_path, destination, monkeypatch):
    root = tmp_path / "mlruns"
    names = write_file_store(root, monkeypatch)
    chosen = ("-e", names["main"])
    assert sync("--from", str(root), "--to", destination.uri, *chosen).exit_code == 0
    result = sync("--from", str(root), "--to", destination.uri, *chosen, "--dry-run")
    assert result.exit_code == 0, result.output
    assert (f"experiment {names['main']!r}: 0 runs to create, 0 to update, 2 up to date; "
            "0 metric points to copy") in result.output


def test_what_is_not_a_store_is_one_line(v01_file, tmp_path):
    missing = sync("--from", str(tmp_path / "nowhere"), "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert missing.exit_code == 1 and "no MLflow file store at" in missing.output
    artifacts_only = tmp_path / "artifacts-only"
    (artifacts_only / "0" / "abc" / "artifacts").mkdir(parents=True)
    result = sync("--from", str(artifacts_only), "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 1 and "is not an MLflow file store" in result.output
    a_file = sync("--from", "autolog.db", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert a_file.exit_code == 1 and "sqlite:///" in a_file.output
    assert "Traceback" not in missing.output + result.output + a_file.output
    assert not (tmp_path / "x.db").exists()
