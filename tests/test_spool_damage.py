"""``autolog sync`` on damaged and foreign spools. The damage is real: bytes flipped inside
the pages that hold batch bodies, a file of random bytes, a truncated file, a body with a
lone surrogate, a full tmpfs under the spool folder, a spool owned by another user. What
reached a server is read back with MLflow's client, or seen by a header-capturing one."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import autolog
from autolog.cli import main
from autolog.stores import close_all
from autolog.stores.mlflow_rest import MlflowRestClient
from autolog.stores.spool.rows import pack_rows
from autolog.stores.spool.spool_file import SpoolFile

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")


def sync(*args: str):
    return CliRunner().invoke(main, ["sync", *args])


def value(step: int) -> float:
    return step / 7


def server_points(server, run_id: str, key: str = "m") -> dict[int, float]:
    history = server.client().get_metric_history(run_id, key)
    points = {m.step: m.value for m in history}
    assert len(points) == len(history), "a point arrived twice"
    return points


def planted_spool(directory: Path, uri: str, run_id: str, steps: range, name: str | None = None,
                  params: dict | None = None) -> Path:
    """A spool file as a process that logged ``steps`` of metric ``m`` (and ``params``)
    into ``run_id`` on ``uri`` leaves it, renamed to ``name`` so it sorts where wanted."""
    spool = SpoolFile.create(directory, uri)
    entries = []
    if params:
        entries.append(("params", len(params), _json(params)))
    for start in range(steps.start, steps.stop, 1000):
        rows = [("m", value(s), 1_000 + s, s) for s in range(start, min(start + 1000, steps.stop))]
        entries.append(("metrics", len(rows), pack_rows(rows)))
    spool.append(run_id, entries, run_id)
    path = spool.path
    spool.close(remove=False)
    assert not Path(f"{path}-wal").exists()  # all in the main file, where the damage goes
    if name is None:
        return path
    target = directory / f"{name}.spool"
    path.rename(target)
    path.with_suffix(".lock").rename(target.with_suffix(".lock"))
    return target


def _json(params: dict) -> bytes:
    import json

    return json.dumps(params).encode()  # as SpoolStore.log_batch stores params


def server_run(server) -> str:
    client = MlflowRestClient(server.uri)
    experiment = client.get_or_create_experiment(f"damage-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment.experiment_id, "r", 1, {}).run_id
    client.close()
    return run_id


def overflow_pages(path: Path) -> tuple[int, list[int]]:
    """The page size and the numbers (0-based) of the pages that hold only body bytes:
    SQLite overflow pages, whose first four bytes are the next page's number (its first
    byte 0 in a small file), where b-tree pages start with their type (2, 5, 10 or 13)."""
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    pages = [n for n in range(1, len(data) // page_size) if data[n * page_size] == 0
             and any(data[n * page_size + 4:(n + 1) * page_size])]
    return page_size, pages


def test_flipped_bytes_in_the_middle_reach_no_server(sqlite_server, spool_dir, unused_uri, capsys):
    refused_before = len(sqlite_server.refused_log_batches())
    logged = 100_000
    autolog.set_tracking_uri(unused_uri)  # the server is down the whole run
    with pytest.warns(autolog.AutologWarning, match="started offline"):
        with autolog.start_run(run_name="damaged", experiment="damage/flip"):
            for step in range(logged):
                autolog.log_metric("m", value(step), step=step)
        close_all()
    assert f"{logged:,} metric points" in capsys.readouterr().err
    (path,) = spool_dir.glob("*.spool")
    assert not Path(f"{path}-wal").exists()

    page_size, pages = overflow_pages(path)
    middle = next(n for n in pages[len(pages) // 2:] if n + 1 in pages)  # two body pages
    start = middle * page_size + 8
    with open(path, "r+b") as spool:  # flip 4 KiB of body bytes in the middle of the file
        spool.seek(start)
        flipped = bytes(b ^ 0xFF for b in spool.read(4096))
        spool.seek(start)
        spool.write(flipped)
    assert start > path.stat().st_size // 4 and start + 4096 < path.stat().st_size

    result = sync("--to", sqlite_server.uri)  # a spool recorded for the wrong URI: --to
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    found = re.search(r"(\d+) damaged batch\(es\) of ([\d,]+) metric points", result.output)
    assert found, result.output
    damaged_points = int(found[2].replace(",", ""))
    sent = re.search(r"sent ([\d,]+) metric points", result.output)
    assert int(sent[1].replace(",", "")) == logged - damaged_points
    assert 0 < damaged_points <= 2_000 and damaged_points % 1000 == 0  # one or two bodies

    remote = sqlite_server.client().search_runs(
        [sqlite_server.client().get_experiment_by_name("damage/flip").experiment_id])
    assert len(remote) == 1
    points = server_points(sqlite_server, remote[0].info.run_id)
    assert len(points) == logged - damaged_points  # every intact point, once
    assert all(points[step] == value(step) for step in points)  # none corrupt
    missing = sorted(set(range(logged)) - set(points))
    assert len(missing) == damaged_points and missing[-1] - missing[0] == damaged_points - 1
    assert remote[0].info.status == "FINISHED"  # the status batch came after the damage
    assert path.exists()  # the damaged rows are kept aside in the file

    again = sync("--to", sqlite_server.uri)  # reported again, nothing sent twice
    assert again.exit_code == 1 and f"of {damaged_points:,} metric points" in again.output
    assert "sent 0 metric points" in again.output
    assert len(server_points(sqlite_server, remote[0].info.run_id)) == logged - damaged_points
    assert sqlite_server.refused_log_batches()[refused_before:] == []


@pytest.fixture
def good_spools(sqlite_server, spool_dir, monkeypatch):
    """Two intact spools for a run on the server (sorted after any name starting with 0),
    and the server as the configured tracking URI."""
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", sqlite_server.uri)
    spool_dir.mkdir(parents=True, exist_ok=True)
    run_id = server_run(sqlite_server)
    planted_spool(spool_dir, sqlite_server.uri, run_id, range(0, 1500), name="a-good")
    planted_spool(spool_dir, sqlite_server.uri, run_id, range(1500, 4000), name="b-good")
    return run_id


def assert_good_ones_sent(result, sqlite_server, run_id: str, spool_dir: Path) -> None:
    assert "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    assert "a-good.spool: sent 1,500 metric points" in result.output
    assert "b-good.spool: sent 2,500 metric points" in result.output
    points = server_points(sqlite_server, run_id)
    assert sorted(points) == list(range(4000)) and all(points[s] == value(s) for s in points)
    assert not (spool_dir / "a-good.spool").exists() and not (spool_dir / "b-good.spool").exists()


def test_a_file_of_random_bytes_blocks_no_other(good_spools, sqlite_server, spool_dir):
    garbage = spool_dir / "0-garbage.spool"
    garbage.write_bytes(os.urandom(20_000))
    result = sync()
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{garbage}: unreadable") and len(lines) == 3
    assert_good_ones_sent(result, sqlite_server, good_spools, spool_dir)
    assert garbage.exists()


def test_a_lone_surrogate_is_set_aside_and_the_rest_sent(good_spools, sqlite_server, spool_dir):
    refused_before = len(sqlite_server.refused_log_batches())
    run_id = server_run(sqlite_server)
    bad = planted_spool(spool_dir, sqlite_server.uri, run_id, range(0, 2000), name="0-surrogate",
                        params={"data": "/data/\udcff.csv", "lr": "0.1"})
    result = sync()
    assert result.exit_code == 1, result.output
    assert (f"0-surrogate.spool: sent 2,000 metric points (2 batches) to {sqlite_server.uri}; "
            f"left in {bad}: 1 batch(es) that cannot be sent") in result.output
    assert "UnicodeEncodeError" in result.stderr
    assert sorted(server_points(sqlite_server, run_id)) == list(range(2000))
    assert sqlite_server.client().get_run(run_id).data.params == {}  # nothing half-sent
    assert_good_ones_sent(result, sqlite_server, good_spools, spool_dir)
    assert sqlite_server.refused_log_batches()[refused_before:] == []
    again = sync()  # tried again, set aside again, never a traceback
    assert again.exit_code == 1 and "1 batch(es) that cannot be sent" in again.output


def test_a_truncated_spool_is_reported_not_skipped(good_spools, sqlite_server, spool_dir):
    run_id = server_run(sqlite_server)
    bad = planted_spool(spool_dir, sqlite_server.uri, run_id, range(0, 20_000), name="0-truncated")
    size = bad.stat().st_size
    os.truncate(bad, size // 2)
    result = sync()
    assert result.exit_code == 1, result.output
    line = result.output.splitlines()[0]
    assert line.startswith("0-truncated.spool") or line.startswith(str(bad))
    assert "damaged" in line or "unreadable" in line
    sent = re.search(r"sent ([\d,]+) metric points", line)
    arrived = server_points(sqlite_server, run_id)
    assert (int(sent[1].replace(",", "")) if sent else 0) == len(arrived)
    assert all(arrived[s] == value(s) for s in arrived)
    assert_good_ones_sent(result, sqlite_server, good_spools, spool_dir)
    assert bad.exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, room: int) -> Path:
    """Fill the file system of ``directory`` but ``room`` bytes (SQLite's shared-memory
    file and a few pages of its log: the deletes of the first batches sent)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\1" * 4096)
        except OSError:  # ENOSPC: the disk is full
            pass
    os.truncate(filler, filler.stat().st_size - room)
    return filler


def test_a_full_disk_while_sending_stops_nothing_and_loses_nothing(
        sqlite_server, small_tmpfs, monkeypatch):
    refused_before = len(sqlite_server.refused_log_batches())
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", sqlite_server.uri)
    spool_dir = small_tmpfs / "spool"
    run_id = server_run(sqlite_server)
    logged = 0
    for name, steps in (("0-first", range(0, 6000)), ("a-second", range(6000, 9000)),
                        ("b-third", range(9000, 10_000))):
        planted_spool(spool_dir, sqlite_server.uri, run_id, steps, name=name)
        logged += len(steps)
    filler = fill(small_tmpfs, room=48 * 1024)

    full = sync("--spool-dir", str(spool_dir))
    assert full.exit_code == 1, full.output
    assert "Traceback" not in full.output
    lines = full.output.splitlines()
    assert len(lines) == 3 and [line.split(".spool")[0].rsplit("/", 1)[-1] for line in lines] == [
        "0-first", "a-second", "b-third"]
    assert all("disk is full" in line or "disk I/O error" in line for line in lines), full.output
    sent_first = sum(int(n.replace(",", "")) for n in re.findall(r"sent ([\d,]+) metric", full.output))
    assert len(server_points(sqlite_server, run_id)) >= sent_first

    filler.unlink()
    freed = sync("--spool-dir", str(spool_dir))
    assert freed.exit_code == 0, freed.output
    points = server_points(sqlite_server, run_id)
    assert len(points) == logged and all(points[s] == value(s) for s in points)
    assert list(spool_dir.glob("*.spool")) == []
    assert sqlite_server.refused_log_batches()[refused_before:] == []


# -- credentials --------------------------------------------------------------------------


def test_credentials_go_only_to_the_configured_server_or_the_one_named(
        scripted_server, spool_dir, monkeypatch, store_uri):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token-789")
    spool_dir.mkdir(parents=True)
    planted = planted_spool(spool_dir, scripted_server.uri, "r1", range(0, 300))

    refused = sync()  # configured: the embedded store (the fixture's AUTOLOG_TRACKING_URI)
    assert refused.exit_code == 1, refused.output
    command = f"autolog sync --to {scripted_server.uri} {planted}"
    assert refused.output.strip() == (
        f"{planted}: not sent: it names {scripted_server.uri}, not the configured tracking "
        f"server ({store_uri}), and credentials go only there; if you trust "
        f"{scripted_server.uri}, send it with: {command}")
    assert scripted_server.seen == []  # not one request, so no token
    assert planted.exists()

    other_port = scripted_server.uri.rsplit(":", 1)[0] + ":1"
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", other_port)  # same host, another port
    assert sync().exit_code == 1 and scripted_server.seen == []

    named = sync(*command.split()[2:])  # the exact command it printed
    assert named.exit_code == 0, named.output
    assert f"sent 300 metric points (1 batches) to {scripted_server.uri}" in named.output
    assert [r["headers"].get("Authorization") for r in scripted_server.seen] == [
        "Bearer secret-token-789"]
    assert not planted.exists()

    planted = planted_spool(spool_dir, scripted_server.uri, "r1", range(300, 400))
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", scripted_server.uri + "/")  # the configured one
    assert sync().exit_code == 0 and len(scripted_server.seen) == 2


def test_a_spool_owned_by_another_user_is_not_opened(scripted_server, spool_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token-789")
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", scripted_server.uri)
    spool_dir.mkdir(parents=True)
    planted = planted_spool(spool_dir, scripted_server.uri, "r1", range(0, 10))
    os.chown(planted, os.getuid() + 4242, os.getgid())
    result = sync()
    assert result.exit_code == 1
    assert result.output.strip() == (f"{planted}: owned by uid {os.getuid() + 4242}, not by you "
                                     f"(uid {os.getuid()}); not opened")
    assert scripted_server.seen == []
    link = spool_dir / "link.spool"
    os.chown(planted, os.getuid(), os.getgid())
    planted.rename(spool_dir / "elsewhere")
    link.symlink_to(spool_dir / "elsewhere")
    linked = sync()
    assert linked.exit_code == 1 and "not a regular file" in linked.output
    assert scripted_server.seen == []



V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (run_key TEXT PRIMARY KEY, server_id TEXT, experiment_id TEXT,
    experiment_name TEXT, run_name TEXT, start_time INTEGER, tags TEXT, error TEXT);
CREATE TABLE batches (seq INTEGER PRIMARY KEY, run_key TEXT NOT NULL REFERENCES runs(run_key),
    kind TEXT NOT NULL CHECK (kind IN ('params', 'tags', 'metrics', 'status')),
    points INTEGER NOT NULL, body BLOB NOT NULL, error TEXT);
CREATE INDEX batches_by_run ON batches(run_key);
"""


def test_a_format_1_spool_from_autolog_0_1_is_still_sent(sqlite_server, spool_dir, monkeypatch):
    """Format 1 (no checksums), laid out as autolog 0.1 wrote it."""
    import sqlite3

    monkeypatch.setenv("AUTOLOG_TRACKING_URI", sqlite_server.uri)
    spool_dir.mkdir(parents=True)
    run_id = server_run(sqlite_server)
    path = spool_dir / "1234-abcd.spool"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN; {V1_SCHEMA} COMMIT;")
    conn.execute("INSERT INTO meta VALUES ('uri', ?)", (sqlite_server.uri,))
    conn.execute("INSERT INTO runs (run_key, server_id) VALUES (?, ?)", (run_id, run_id))
    for start in range(0, 3000, 1000):
        rows = [("m", value(s), 1_000 + s, s) for s in range(start, start + 1000)]
        conn.execute("INSERT INTO batches (run_key, kind, points, body) VALUES (?, 'metrics', ?, ?)",
                     (run_id, len(rows), pack_rows(rows)))
    conn.execute("INSERT INTO batches (run_key, kind, points, body) VALUES (?, 'params', 1, ?)",
                 (run_id, b'{"lr": "0.1"}'))
    conn.execute("PRAGMA user_version = 1")
    conn.execute("PRAGMA application_id = 1634496359")  # "alog"
    conn.close()

    result = sync()
    assert result.exit_code == 0, result.output
    assert "1234-abcd.spool: sent 3,000 metric points (4 batches)" in result.output
    points = server_points(sqlite_server, run_id)
    assert sorted(points) == list(range(3000)) and all(points[s] == value(s) for s in points)
    assert sqlite_server.client().get_run(run_id).data.params == {"lr": "0.1"}
    assert not path.exists()


def test_a_spool_sent_elsewhere_keeps_the_runs_that_server_lacks(sqlite_server, scripted_server,
                                                                   spool_dir):
    """``--to`` a server that never had the spool's run (it answers as MLflow does for an
    unknown run): refused, kept, reported; then sent to the right one, every point arrives."""
    spool_dir.mkdir(parents=True)
    run_id = server_run(sqlite_server)
    planted = planted_spool(spool_dir, sqlite_server.uri, run_id, range(0, 2000))
    scripted_server.script = [(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                     "message": f"Run with id={run_id} not found"})] * 2
    wrong = sync("--to", scripted_server.uri)
    assert wrong.exit_code == 1, wrong.output
    assert len(scripted_server.seen) == 2  # both batches tried, neither dropped
    assert (f"sent 0 metric points (0 batches) to {scripted_server.uri}; left in {planted}: "
            "2 batch(es) the server refused") in wrong.output
    assert f"run {run_id} is not on {scripted_server.uri}" in wrong.output
    right = sync("--to", sqlite_server.uri)
    assert right.exit_code == 0, right.output
    points = server_points(sqlite_server, run_id)
    assert sorted(points) == list(range(2000)) and all(points[s] == value(s) for s in points)


def test_the_configured_uri_is_named_without_its_password():
    from autolog.stores.spool.sync_support import _not_for

    told = _not_for("http://planted:5000", None, "http://u:s3cret@other:5000", None)
    assert "s3cret" not in told and "u:***@other:5000" in told
