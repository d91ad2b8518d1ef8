"""`autolog runs list --filter/--order-by/--columns`, `runs compare`, `runs history` and
`autolog ui`, on runs that MLflow's own client made on a real `mlflow server`."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner
from mlflow.entities import Metric, Param, RunTag
from mlflow_server import free_port

import autolog
from autolog.cli import main

pytest_plugins = ("mlflow_server",)


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class Runs(dict):
    """Run name -> run id, with the server's ``uri``, the ``experiment`` and MLflow's ``client``."""


@pytest.fixture
def runs(sqlite_server, spool_dir):
    """Three runs in an experiment of their own, made by MLflow's client on the server."""
    made = Runs()
    made.uri, made.client = sqlite_server.uri, sqlite_server.client()
    made.experiment = f"cli/{secrets.token_hex(4)}"
    experiment_id = made.client.create_experiment(made.experiment)
    for i, (name, model, lr, acc) in enumerate([("slow", "cnn", "0.1", 0.71),
                                                ("best", "cnn", "0.05", 0.93),
                                                ("odd", "rnn", "0.01", math.nan)]):
        run_id = made.client.create_run(experiment_id, run_name=name,
                                        start_time=1_000 * (i + 1)).info.run_id
        made.client.log_batch(
            run_id, params=[Param("model", model), Param("lr", lr), Param("seed", "7")],
            metrics=[Metric("acc", acc, 5_000, 3), Metric("loss", 1.0 - i / 10, 5_000, 3)],
            tags=[RunTag("team", "vision")])
        made.client.set_terminated(run_id, "FINISHED")
        made[name] = run_id
    return made


def test_list_filters_orders_and_shows_columns(runs):
    out = invoke("runs", "list", "--tracking-uri", runs.uri, "-e", runs.experiment,
                 "--filter", "params.model = 'cnn'", "--order-by", "metrics.acc DESC",
                 "--columns", "metrics.acc,params.lr,tags.team,metrics.absent")
    assert out.exit_code == 0, out.output
    header, *rows = out.output.splitlines()
    assert header.split()[-4:] == ["metrics.acc", "params.lr", "tags.team", "metrics.absent"]
    assert [row.split()[0] for row in rows] == [runs["best"], runs["slow"]]
    assert rows[0].split()[-4:] == ["0.93", "0.05", "vision", "-"]

    listed = json.loads(invoke("runs", "list", "--tracking-uri", runs.uri, "-e", runs.experiment,
                               "--order-by", "params.model DESC", "--order-by", "metrics.loss ASC",
                               "--max-results", "2", "--json").output)
    assert [r["run_id"] for r in listed] == [runs["odd"], runs["best"]]
    assert listed[0]["metrics"]["acc"] == "nan"


def test_list_order_is_mlflows(runs):
    client = runs.client
    experiment_id = client.get_experiment_by_name(runs.experiment).experiment_id
    for order in (["metrics.acc ASC"], ["params.lr ASC"], ["attributes.start_time ASC"], []):
        listed = json.loads(invoke("runs", "list", "--tracking-uri", runs.uri, "-e", runs.experiment,
                                   *[f"--order-by={o}" for o in order], "--json").output)
        expected = client.search_runs([experiment_id], order_by=order)
        assert [r["run_id"] for r in listed] == [r.info.run_id for r in expected], order


def test_list_refused_filter_and_bad_columns(runs):
    out = invoke("runs", "list", "--tracking-uri", runs.uri, "--filter", "metrics.acc >> 1")
    assert out.exit_code == 1 and out.output.count("\n") == 1, out.output
    assert out.output.startswith("Error: Invalid comparator '>>'")
    bad = CliRunner().invoke(main, ["runs", "list", "--tracking-uri", runs.uri, "--columns", "acc"])
    assert bad.exit_code == 2 and "'acc' is not metrics.KEY, params.KEY or tags.KEY" in bad.output


def test_compare_shows_the_params_that_differ_and_the_metrics(runs):
    out = invoke("runs", "compare", runs["slow"], runs["best"], runs["odd"], "--tracking-uri", runs.uri)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "params that differ: 2 (1 equal in all 3 runs)"
    assert lines[1].split() == ["slow", f"({runs['slow'][:8]})", "best", f"({runs['best'][:8]})",
                                "odd", f"({runs['odd'][:8]})"]
    assert lines[2].split() == ["lr", "0.1", "0.05", "0.01"]
    assert lines[3].split() == ["model", "cnn", "cnn", "rnn"]
    assert lines[5] == "latest metrics: 2"
    assert lines[7].split() == ["acc", "0.71", "0.93", "nan"]
    assert lines[8].split() == ["loss", "1", "0.9", "0.8"]

    data = json.loads(invoke("runs", "compare", runs["slow"], runs["odd"], "--tracking-uri",
                             runs.uri, "--json").output)
    assert data["params_differ"] == {"lr": ["0.1", "0.01"], "model": ["cnn", "rnn"]}
    assert data["params_equal"] == {"seed": "7"}
    assert data["metrics"] == {"acc": [0.71, "nan"], "loss": [1.0, 0.8]}


def test_compare_needs_two_runs_and_existing_ones(runs):
    one = CliRunner().invoke(main, ["runs", "compare", runs["slow"], "--tracking-uri", runs.uri])
    assert one.exit_code == 2 and "compare takes two runs or more" in one.output
    missing = invoke("runs", "compare", runs["slow"], "0" * 32, "--tracking-uri", runs.uri)
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert "RESOURCE_DOES_NOT_EXIST" in missing.output


@pytest.fixture
def curve(sqlite_server, spool_dir):
    """A run with a 300-point loss curve (one NaN in it), made by MLflow's client."""
    client = sqlite_server.client()
    experiment_id = client.create_experiment(f"history/{secrets.token_hex(4)}")
    run_id = client.create_run(experiment_id, run_name="curve").info.run_id
    points = [Metric("loss", 2.0 * math.exp(-step / 60) + 0.1, 1_000 + step, step * 10)
              for step in range(300)]
    points[100] = Metric("loss", math.nan, 1_100, 1000)
    client.log_batch(run_id, metrics=points)
    return sqlite_server.uri, run_id


def test_history_draws_the_curve_in_the_terminal(curve):
    uri, run_id = curve
    out = invoke("runs", "history", run_id, "loss", "--tracking-uri", uri, "--height", "8")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"loss of run {run_id}: 300 points, steps 0..2990"
    chart = lines[1:-3]
    assert len(chart) >= 8 and all("┤" in line or "┼" in line for line in chart)
    # the labels span the columns' means: the first column's to the last one's
    assert 1.9 < float(chart[0].split()[0]) <= 2.1 and 0.11 < float(chart[-1].split()[0]) < 0.12
    assert lines[-3].split() == ["step", "0", "step", "2990"]
    assert lines[-2].strip().startswith("(each column: the mean of about")
    assert lines[-1].startswith("min 0.113") and "max 2.1 (step 0)" in lines[-1]
    assert "last 0.113" in lines[-1] and "(step 2990)" in lines[-1]
    assert lines[-1].endswith("1 not finite (NaN or inf), not drawn")
    assert max(len(line) for line in lines[1:-1]) <= 80  # CliRunner's terminal: 80 columns


def test_history_json_and_png(curve, tmp_path):
    uri, run_id = curve
    points = json.loads(invoke("runs", "history", run_id, "loss", "--tracking-uri", uri, "--json").output)
    assert len(points) == 300 and points[0] == {"step": 0, "timestamp": 1_000, "value": 2.1}
    assert points[100] == {"step": 1000, "timestamp": 1_100, "value": "nan"}

    png = tmp_path / "loss.png"
    out = invoke("runs", "history", run_id, "loss", "--tracking-uri", uri, "--png", str(png))
    assert out.exit_code == 0 and out.output == f"wrote {png} (300 points)\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_history_errors_are_one_line(curve, tmp_path, monkeypatch):
    uri, run_id = curve
    unknown = invoke("runs", "history", run_id, "acc", "--tracking-uri", uri)
    assert unknown.exit_code == 1
    assert unknown.output == f"Error: run {run_id} has no metric 'acc'; its metrics: loss\n"
    for name in ("matplotlib", "matplotlib.figure"):  # as if matplotlib were not installed
        monkeypatch.setitem(sys.modules, name, None)
    out = invoke("runs", "history", run_id, "loss", "--tracking-uri", uri, "--png",
                 str(tmp_path / "x.png"))
    assert out.exit_code == 1
    assert out.output == 'Error: --png needs matplotlib: pip install "autolog-ml[plot]"\n'


def test_plain_list_does_not_import_mlflow(store_uri, tmp_path):
    """The cold-start path: ``autolog runs list`` on the default store."""
    with autolog.start_run(run_name="listed"):
        autolog.log_metric("acc", 0.5)
    code = ("import sys\nfrom autolog.cli import main\n"
            "try:\n    main(['runs', 'list'])\nexcept SystemExit as done:\n"
            "    assert done.code in (0, None), done.code\n"
            "print('mlflow imported:', 'mlflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={**os.environ, "AUTOLOG_TRACKING_URI": store_uri})
    assert out.returncode == 0, out.stderr
    assert "listed" in out.stdout and out.stdout.splitlines()[-1] == "mlflow imported: False"


# -- autolog ui ------------------------------------------------------------------------------


def test_ui_for_a_server_names_its_url():
    out = invoke("ui", "--tracking-uri", "http://user:secret@127.0.0.1:5999/")
    assert out.exit_code == 0
    assert out.output == "http://127.0.0.1:5999 is an MLflow tracking server: its own UI is there\n"


def test_ui_without_mlflow_says_what_to_install(monkeypatch, store_uri):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    out = CliRunner().invoke(main, ["ui"])
    assert out.exit_code == 1
    assert out.output == ("Error: autolog ui runs MLflow's UI, and mlflow is not installed: "
                          "pip install mlflow\n")


def test_ui_with_mlflow_skinny_says_what_to_install(tmp_path, store_uri):
    """A package ``mlflow`` with server code and no UI assets, as mlflow-skinny installs it,
    first on the path of a fresh interpreter."""
    (tmp_path / "skinny" / "mlflow" / "server").mkdir(parents=True)
    (tmp_path / "skinny" / "mlflow" / "__init__.py").write_text("")
    (tmp_path / "skinny" / "mlflow" / "server" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "skinny"), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "autolog.cli", "ui"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("Error: autolog ui runs MLflow's UI, and the mlflow installed has no UI "
                          "(mlflow-skinny ships none): pip install mlflow\n")


def test_ui_serves_mlflows_ui_on_the_store(tmp_path):
    """On a database MLflow made: MLflow's UI answers, on that database (not on MLflow's
    default ./mlflow.db), then stops with the process group."""
    from mlflow import MlflowClient

    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'runs.db'}"
    MlflowClient(uri).create_experiment("shown in the ui")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "autolog.cli", "ui", "--port", str(port),
                                "--tracking-uri", uri], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None and status != 200:
            try:
                status = requests.get(f"{base}/", timeout=2).status_code
            except requests.RequestException:
                time.sleep(0.3)
        assert status == 200, f"no answer from MLflow's UI; exit {process.poll()}"
        assert "<title>MLflow</title>" in requests.get(f"{base}/", timeout=5).text
        found = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name",
                             params={"experiment_name": "shown in the ui"}, timeout=5)
        assert found.status_code == 200, found.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
    assert output.startswith(f"MLflow's UI on {uri}: {base} (Ctrl-C stops it)")
    assert not (tmp_path / "mlflow.db").exists()
