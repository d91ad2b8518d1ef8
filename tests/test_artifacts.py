"""Artifacts on the embedded store: logged through autolog, read back through MLflow's own
client; bad input; bytes secured when the call returns; content stored once; sync."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner

import autolog
from autolog.artifacts.uploader import existing_uploader
from autolog.cli import main


def client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri)


def mlflow_bytes(uri: str, run_id: str, path: str, tmp_path: Path) -> bytes:
    target = tmp_path / "mlflow-download"
    target.mkdir(exist_ok=True)
    return Path(client(uri).download_artifacts(run_id, path, str(target))).read_bytes()


def test_every_kind_of_artifact_reads_back_through_mlflows_client(store_uri, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = os.urandom(300_000)
    (tmp_path / "model.bin").write_bytes(data)
    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "summary.txt").write_text("fine")
    (folder / "plots" / "a.csv").write_text("x,y\n1,2\n")
    figure, axes = plt.subplots()
    axes.plot([1, 2, 3])
    with autolog.start_run() as run:
        autolog.log_artifact(tmp_path / "model.bin")
        autolog.log_artifact(str(tmp_path / "model.bin"), "checkpoints/best")
        autolog.log_artifacts(folder, "report")
        autolog.log_text("héllo", "notes/readme.txt")
        autolog.log_dict({"lr": 0.1, "layers": [1, 2]}, "config.json")
        autolog.log_dict({"lr": 0.1, "layers": [1, 2]}, "config.yaml")
        autolog.log_figure(figure, "plots/loss.png")
    plt.close(figure)
    assert autolog.flush()
    root = {(f.path, f.is_dir, f.file_size) for f in client(store_uri).list_artifacts(run.id)}
    assert root == {("model.bin", False, len(data)), ("checkpoints", True, None), ("report", True, None),
                    ("notes", True, None), ("config.json", False, len(json.dumps(
                        {"lr": 0.1, "layers": [1, 2]}, indent=2))), ("config.yaml", False, len(yaml.safe_dump(
                        {"lr": 0.1, "layers": [1, 2]}, sort_keys=False))),
                    ("plots", True, None)}
    assert mlflow_bytes(store_uri, run.id, "model.bin", tmp_path) == data
    assert mlflow_bytes(store_uri, run.id, "checkpoints/best/model.bin", tmp_path) == data
    assert mlflow_bytes(store_uri, run.id, "report/plots/a.csv", tmp_path) == b"x,y\n1,2\n"
    assert mlflow_bytes(store_uri, run.id, "report/summary.txt", tmp_path) == b"fine"
    assert mlflow_bytes(store_uri, run.id, "notes/readme.txt", tmp_path) == "héllo".encode()
    config = {"lr": 0.1, "layers": [1, 2]}
    assert json.loads(mlflow_bytes(store_uri, run.id, "config.json", tmp_path)) == config
    assert yaml.safe_load(mlflow_bytes(store_uri, run.id, "config.yaml", tmp_path)) == config
    assert mlflow_bytes(store_uri, run.id, "plots/loss.png", tmp_path).startswith(b"\x89PNG")
    # MLflow's own log_dict writes the same JSON
    assert mlflow.artifacts.load_dict(f"{client(store_uri).get_run(run.id).info.artifact_uri}/config.json") \
        == {"lr": 0.1, "layers": [1, 2]}
    # and autolog reads back what it wrote, as MLflow lists it
    assert [(e.path, e.is_dir) for e in autolog.list_artifacts(run.id, "report")] == [
        ("report/plots", True), ("report/summary.txt", False)]
    local = autolog.download_artifacts(run.id, "report", tmp_path / "mine")
    assert (Path(local) / "plots" / "a.csv").read_text() == "x,y\n1,2\n"


def test_the_bytes_are_secured_when_the_call_returns(store_uri, tmp_path):
    source = tmp_path / "loss.png"
    source.write_bytes(b"epoch 1")
    with autolog.start_run() as run:
        autolog.log_artifact(source, "epoch1")
        source.write_bytes(b"epoch 2, rewritten in place")  # same inode, as savefig does
        autolog.log_artifact(source, "epoch2")
        source.unlink()
    assert autolog.flush()
    assert mlflow_bytes(store_uri, run.id, "epoch1/loss.png", tmp_path) == b"epoch 1"
    assert mlflow_bytes(store_uri, run.id, "epoch2/loss.png", tmp_path) == b"epoch 2, rewritten in place"


def test_new_bytes_of_the_same_size_replace_the_old_at_the_same_path(store_uri, tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    with autolog.start_run() as run:
        for epoch in range(3):  # the same name and size every epoch, new bytes each time
            checkpoint.write_bytes(f"epoch {epoch} weights".encode())
            autolog.log_artifact(checkpoint)
            autolog.log_dict({"epoch": epoch}, "state.json")
            assert autolog.flush()
            assert mlflow_bytes(store_uri, run.id, "last.ckpt", tmp_path) == f"epoch {epoch} weights".encode()
            assert json.loads(mlflow_bytes(store_uri, run.id, "state.json", tmp_path)) == {"epoch": epoch}


def test_a_reference_is_recorded_with_its_checksum(store_uri, tmp_path):
    digest = hashlib.sha256(b"weights").hexdigest()
    with autolog.start_run() as run:
        autolog.log_artifact_reference("s3://models/llm/v3.safetensors", "llm", sha256=digest,
                                       size=7_000_000_000)
    assert autolog.flush()
    record = json.loads(mlflow_bytes(store_uri, run.id, "references/llm.json", tmp_path))
    assert record == {"uri": "s3://models/llm/v3.safetensors", "name": "llm", "sha256": digest,
                      "size": 7_000_000_000}
    assert client(store_uri).get_run(run.id).data.tags["autolog.reference.llm"] == \
        "s3://models/llm/v3.safetensors"


@pytest.mark.parametrize("call, error, words", [
    (lambda d: autolog.log_artifact(d / "missing.bin"), FileNotFoundError, "no such file"),
    (lambda d: autolog.log_artifact(d), IsADirectoryError, "log_artifacts"),
    (lambda d: autolog.log_artifacts(d / "kept.txt"), NotADirectoryError, "log_artifact()"),
    (lambda d: autolog.log_artifact(d / "kept.txt", "../outside"), ValueError, "'..'"),
    (lambda d: autolog.log_artifact(d / "kept.txt", "/etc"), ValueError, "relative"),
    (lambda d: autolog.log_text("x", "a/../../b.txt"), ValueError, "'..'"),
    (lambda d: autolog.log_text(b"bytes", "b.txt"), TypeError, "str"),
    (lambda d: autolog.log_dict({"when": object()}, "d.json"), TypeError, "JSON"),
    (lambda d: autolog.log_dict({"when": object()}, "d.yaml"), TypeError, "YAML"),
    (lambda d: autolog.log_dict({}, ""), ValueError, "name a file"),
    (lambda d: autolog.log_figure("not a figure", "f.png"), TypeError, "matplotlib"),
    (lambda d: autolog.log_artifact_reference("not a uri", "x"), ValueError, "URI"),
    (lambda d: autolog.log_artifact_reference("s3://b/k", "x", sha256="abc"), ValueError, "64"),
    (lambda d: autolog.log_artifact_reference("s3://b/k", "x", size=-1), ValueError, "size"),
])
def test_bad_input_is_an_error_at_the_call_and_loses_nothing(store_uri, tmp_path, call, error, words):
    (tmp_path / "kept.txt").write_text("kept")
    with autolog.start_run() as run:
        autolog.log_artifact(tmp_path / "kept.txt")
        autolog.log_metric("loss", 0.5)
        with pytest.raises(error, match=words) as caught:
            call(tmp_path)
        assert "autolog" in str(caught.traceback[-1].path)  # raised by autolog's own check
        autolog.log_metric("loss", 0.25, step=1)
    assert autolog.flush()
    assert [f.path for f in client(store_uri).list_artifacts(run.id)] == ["kept.txt"]
    assert [m.value for m in client(store_uri).get_metric_history(run.id, "loss")] == [0.5, 0.25]


def test_the_same_content_logged_to_ten_runs_takes_its_space_once(store_uri, tmp_path):
    block = os.urandom(1 << 20)
    source = tmp_path / "model.bin"
    with open(source, "wb") as out:
        for index in range(100):  # 100 MiB of varied bytes
            out.write(index.to_bytes(4, "little") + block[4:])
    runs = []
    for _ in range(10):
        with autolog.start_run() as run:
            autolog.log_artifact(source)
        runs.append(run.id)
    assert autolog.flush()
    copies = [Path(client(store_uri).get_run(run_id).info.artifact_uri) / "model.bin" for run_id in runs]
    staging = Path(os.environ["AUTOLOG_SPOOL_DIR"]) / "artifacts"
    inodes = {path.stat().st_ino for path in copies}
    inodes |= {path.stat().st_ino for path in staging.rglob("*") if path.is_file()
               and path.stat().st_size == source.stat().st_size}
    assert len(inodes) == 1  # ten runs' files and the staged object are one file on disk
    used = sum(os.stat(path).st_blocks * 512 for path in {p.stat().st_ino: p for p in copies}.values())
    assert used < 1.05 * source.stat().st_size
    assert mlflow_bytes(store_uri, runs[-1], "model.bin", tmp_path) == source.read_bytes()


def test_autolog_sync_sends_uploads_a_killed_process_left(store_uri, tmp_path):
    """A process killed before its uploads were done: ``autolog sync`` sends them from
    the staging area. (The upload here waits for a run whose artifact root cannot be
    made yet: a file stands where its folder must be.)"""
    (tmp_path / "data.bin").write_bytes(b"precious")
    script = textwrap.dedent(f"""
        import os, signal, autolog
        from pathlib import Path
        with autolog.start_run() as run:
            pass
        root = Path(autolog.get_run(run.id).info.artifact_uri)
        root.parent.mkdir(parents=True, exist_ok=True)
        root.write_text("in the way")  # the upload cannot create the folder
        autolog.start_run(run_id=run.id)
        autolog.log_artifact({str(tmp_path / 'data.bin')!r})
        print(run.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "AUTOLOG_STRICT": "0"})
    assert child.returncode == -9, child.stderr
    run_id = child.stdout.split()[0]
    artifact_root = Path(client(store_uri).get_run(run_id).info.artifact_uri)
    artifact_root.unlink()  # the way is clear now
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 0, result.output
    assert "uploaded 1 artifact(s)" in result.output
    assert mlflow_bytes(store_uri, run_id, "data.bin", tmp_path) == b"precious"
    staging = Path(os.environ["AUTOLOG_SPOOL_DIR"]) / "artifacts"
    assert not list((staging / "journals").glob("*.db"))  # nothing is owed any more
    again = CliRunner().invoke(main, ["sync"])
    assert again.exit_code == 0 and "nothing to send" in again.output


def test_the_cli_lists_and_downloads_artifacts(store_uri, tmp_path):
    with autolog.start_run() as run:
        autolog.log_text("a" * 1234, "logs/train.log")
        autolog.log_text("b", "top.txt")
    assert autolog.flush()
    listed = CliRunner().invoke(main, ["artifacts", "list", run.id])
    assert listed.exit_code == 0, listed.output
    assert listed.output.split() == ["path", "size", "logs/", "top.txt", "1"]
    nested = CliRunner().invoke(main, ["artifacts", "list", run.id, "logs", "--json"])
    assert json.loads(nested.output) == [{"path": "logs/train.log", "is_dir": False, "file_size": 1234}]
    fetched = CliRunner().invoke(main, ["artifacts", "download", run.id, "logs", "-o", str(tmp_path / "out")])
    assert fetched.exit_code == 0, fetched.output
    assert (tmp_path / "out" / "logs" / "train.log").read_text() == "a" * 1234
    missing = CliRunner().invoke(main, ["artifacts", "download", run.id, "nope.txt", "-o", str(tmp_path)])
    assert missing.exit_code == 1 and "no artifact 'nope.txt'" in missing.output
    assert "Traceback" not in missing.output


def test_flush_waits_for_uploads_and_exit_leaves_nothing_behind(store_uri, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    script = textwrap.dedent(f"""
        import autolog
        with autolog.start_run() as run:
            autolog.log_artifact({str(tmp_path / 'a.bin')!r})
        print(run.id)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert "autolog:" not in child.stderr  # nothing left to say at exit
    run_id = child.stdout.split()[0]
    assert mlflow_bytes(store_uri, run_id, "a.bin", tmp_path) == b"a" * 10
    staging = Path(os.environ["AUTOLOG_SPOOL_DIR"]) / "artifacts"
    assert not list((staging / "journals").iterdir())
    assert existing_uploader() is None  # this process logged nothing
