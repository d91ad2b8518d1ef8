"""The MLflow REST client, against a real ``mlflow server`` (SQLite and PostgreSQL
backends) and, for transport details, a scripted local HTTP server. What reached the
server is checked with MLflow's own client."""

from __future__ import annotations

import json
import math
import time

import pytest

import autolog
from autolog.stores import mlflow_rest
from autolog.stores.base import ParamRefusedError, RunNotFoundError, StoreError
from autolog.stores.mlflow_rest import (
    MlflowRestClient,
    MlflowRestError,
    ServerUnreachableError,
    metric_bodies,
    tag_bodies,
)
from autolog.validation import MAX_BATCH_REQUEST_BYTES

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")


def _history(client, run_id: str, key: str) -> list[tuple]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_a_run_logged_through_autolog_is_on_the_server_exactly(mlflow_server):
    refused_before = len(mlflow_server.refused_log_batches())
    autolog.set_tracking_uri(mlflow_server.uri)
    logged: dict[str, list[tuple[int, float]]] = {"loss": [], "acc": []}
    with autolog.start_run(run_name="round-trip", experiment="team/rest/round-trip",
                           tags={"purpose": "test"}) as run:
        autolog.log_params({"lr": 0.01, "layers": 3, "optimizer": "adam"})
        autolog.set_tag("team", "vision")
        for step in range(2500):  # more than one log-batch of 1000
            autolog.log_metric("loss", 1.0 / (step + 1), step=step)
            logged["loss"].append((step, 1.0 / (step + 1)))
            if step % 10 == 0:
                autolog.log_metric("acc", step / 2500, step=step)
                logged["acc"].append((step, step / 2500))
    assert not run.id.startswith("offline-")
    assert run.store.wait_until_sent(60)

    client = mlflow_server.client()
    remote = client.get_run(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.info.run_name == "round-trip"
    assert remote.data.params == {"lr": "0.01", "layers": "3", "optimizer": "adam"}
    assert remote.data.tags["team"] == "vision"
    assert remote.data.tags["purpose"] == "test"
    assert remote.data.tags["mlflow.runName"] == "round-trip"
    for key, points in logged.items():
        history = _history(client, run.id, key)
        assert [(step, value) for step, _, value in history] == points
    assert client.get_experiment(remote.info.experiment_id).name == "team/rest/round-trip"
    assert len(mlflow_server.refused_log_batches()) == refused_before


def test_nan_and_infinity_are_stored_as_mlflow_stores_them(sqlite_server):
    autolog.set_tracking_uri(sqlite_server.uri)
    values = [math.nan, math.inf, -math.inf, 0.0, -1.5]
    with autolog.start_run() as run:
        for step, value in enumerate(values):
            autolog.log_metric("odd", value, step=step)
    assert run.store.wait_until_sent(30)

    client = sqlite_server.client()
    reference = client.create_run(client.get_run(run.id).info.experiment_id).info.run_id
    for step, value in enumerate(values):
        client.log_metric(reference, "odd", value, step=step, timestamp=0)
    ours = [value for _, _, value in _history(client, run.id, "odd")]
    theirs = [value for _, _, value in _history(client, reference, "odd")]
    assert len(ours) == len(values)
    assert all(_same(a, b) for a, b in zip(ours, theirs, strict=True))
    assert math.isnan(ours[0]) and ours[1] > 1e308 and ours[2] < -1e308
    # and autolog reads them back the same way
    read = [m.value for m in autolog.get_metric_history(run.id, "odd")]
    assert all(_same(a, b) for a, b in zip(read, ours, strict=True))


def test_log_batch_is_split_to_the_server_limits(sqlite_server):
    refused_before = len(sqlite_server.refused_log_batches())
    client = MlflowRestClient(sqlite_server.uri)
    experiment = client.get_or_create_experiment("rest/limits")
    run_id = client.create_run(experiment.experiment_id, "limits", int(time.time() * 1000), {}).run_id
    wide = "𝒜" * 240  # 4 bytes in UTF-8: 1000 such keys pass 1 MB
    metrics = [(f"{wide}{i % 7}", float(i), 1000 + i, i) for i in range(2100)]
    params = {f"p{i}": "v" * 5000 for i in range(250)}  # 250 x 5 kB: over 1 MB in all
    tags = {f"t{i}": str(i) for i in range(230)}
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    mlflow = sqlite_server.client()
    remote = mlflow.get_run(run_id)
    assert remote.data.params == params
    assert {k: v for k, v in remote.data.tags.items() if k.startswith("t")} == tags
    for j in range(7):
        assert len(mlflow.get_metric_history(run_id, f"{wide}{j}")) == len(range(j, 2100, 7))
    assert len(sqlite_server.refused_log_batches()) == refused_before
    client.close()


def test_bodies_respect_count_and_size_limits():
    rows = [("k" * 250, float(i), i, i) for i in range(2500)]
    bodies = list(metric_bodies(rows))
    assert [count for count, _ in bodies] == [1000, 1000, 500]
    unicode_rows = [("𝒜" * 249 + str(i % 3), math.nan if i % 2 else math.inf, i, i)
                    for i in range(1000)]
    split = list(metric_bodies(unicode_rows))
    assert len(split) > 1 and sum(count for count, _ in split) == 1000
    for _, body in split:
        assert len(body) < MAX_BATCH_REQUEST_BYTES
        values = {m["value"] for m in json.loads(body)["metrics"]}
        assert values == {"NaN", "Infinity"}  # as protobuf's JSON mapping writes them
    assert [count for count, _ in tag_bodies({str(i): "x" for i in range(250)})] == [100, 100, 50]


def test_metric_history_and_search_are_paged(sqlite_server, monkeypatch):
    monkeypatch.setattr(mlflow_rest, "HISTORY_PAGE_SIZE", 700)
    monkeypatch.setattr(mlflow_rest, "PAGE_SIZE", 2)
    client = MlflowRestClient(sqlite_server.uri)
    experiment = client.get_or_create_experiment("rest/paging")
    run_ids = [client.create_run(experiment.experiment_id, f"r{i}", 1000 * (i + 1), {}).run_id
               for i in range(5)]
    client.log_batch(run_ids[0], metrics=[("m", float(i), 5, i) for i in range(2000)])
    history = client.get_metric_history(run_ids[0], "m")
    assert [m.step for m in history] == list(range(2000))
    found = client.search_runs([experiment.experiment_id], max_results=100)
    assert [r.info.run_id for r in found] == run_ids[::-1]  # newest first
    assert len(client.search_runs([experiment.experiment_id], max_results=3)) == 3
    assert client.get_or_create_experiment("rest/paging") == experiment
    assert experiment in client.list_experiments()
    client.close()


def test_server_errors_carry_mlflow_error_code(sqlite_server):
    client = MlflowRestClient(sqlite_server.uri)
    with pytest.raises(RunNotFoundError) as missing:
        client.get_run("0" * 32)
    assert isinstance(missing.value, MlflowRestError)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert missing.value.status == 404
    assert client.get_experiment_by_name("rest/no-such-experiment") is None

    experiment = client.get_or_create_experiment("rest/errors")
    run_id = client.create_run(experiment.experiment_id, "errors", 1, {}).run_id
    client.log_batch(run_id, params={"lr": "0.1"})
    with pytest.raises(ParamRefusedError) as refused:  # the server's own refusal, mapped
        client.call("POST", "runs/log-batch",
                    body={"run_id": run_id, "params": [{"key": "lr", "value": "0.2"}]})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Changing param values is not allowed" in str(refused.value)
    client.close()


def test_a_conflicting_param_is_never_sent(sqlite_server):
    refused_before = len(sqlite_server.refused_log_batches())
    client = MlflowRestClient(sqlite_server.uri)
    experiment = client.get_or_create_experiment("rest/conflict")
    run_id = client.create_run(experiment.experiment_id, "conflict", 1, {}).run_id
    sqlite_server.client().log_param(run_id, "lr", "0.1")  # another process
    client.log_params(run_id, {"lr": "0.1", "epochs": "3"})  # identical again: accepted
    with pytest.raises(ParamRefusedError, match="'lr' is '0.1' on the server, refused '0.2'"):
        client.log_params(run_id, {"lr": "0.2", "batch": "32"})
    assert sqlite_server.client().get_run(run_id).data.params == {
        "lr": "0.1", "epochs": "3", "batch": "32"}
    assert len(sqlite_server.refused_log_batches()) == refused_before
    client.close()


# -- transport: a scripted server --------------------------------------------------------


def test_transient_statuses_are_retried_with_backoff(scripted_server, monkeypatch):
    monkeypatch.setattr(mlflow_rest, "BACKOFF_FACTOR_S", 0.1)
    scripted_server.script = [(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
                       (429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}),
                       (200, {})]
    client = MlflowRestClient(scripted_server.uri)
    started = time.monotonic()
    client.update_run("abc", "FINISHED", 5)
    assert len(scripted_server.seen) == 3
    assert time.monotonic() - started >= 0.2  # urllib3 slept before the third attempt
    assert json.loads(scripted_server.seen[-1]["body"]) == {"run_id": "abc", "status": "FINISHED",
                                                     "end_time": 5}

    scripted_server.seen.clear()
    scripted_server.script = [(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "no"})]
    with pytest.raises(MlflowRestError) as refused:
        client.update_run("abc", "FINISHED", 5)
    assert len(scripted_server.seen) == 1 and not refused.value.retry_later

    scripted_server.script = [(503, {"error_code": "X", "message": "down"})] * 4
    with pytest.raises(MlflowRestError) as unavailable:
        client.update_run("abc", "FINISHED", 5)
    assert unavailable.value.status == 503 and unavailable.value.retry_later
    client.close()


def test_credentials_are_sent_but_never_shown(scripted_server, monkeypatch, unused_uri):
    secret = "s3cr3t-pw"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    echo = (400, lambda request: {"error_code": "BAD", "message": f"got {request['headers']}"})
    scripted_server.script = [echo]
    client = MlflowRestClient(scripted_server.uri)
    with pytest.raises(MlflowRestError) as echoed:
        client.get_run("x")
    assert scripted_server.seen[0]["headers"]["Authorization"].startswith("Basic ")
    assert secret not in str(echoed.value) and secret not in repr(client)

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    token = "tok-123456789"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    scripted_server.script = [echo]
    with pytest.raises(MlflowRestError) as echoed:
        MlflowRestClient(scripted_server.uri).get_run("x")
    assert scripted_server.seen[-1]["headers"]["Authorization"] == f"Bearer {token}"
    assert token not in str(echoed.value) and "***" in str(echoed.value)

    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    in_uri = unused_uri.replace("//", f"//bob:{secret}@")
    client = MlflowRestClient(in_uri)
    assert secret not in client.uri and secret not in repr(client)
    with pytest.raises(ServerUnreachableError) as unreachable:
        MlflowRestClient(in_uri, retries=0).get_run("x")
    assert secret not in str(unreachable.value)


def test_tls_settings_come_from_mlflow_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert MlflowRestClient("https://127.0.0.1:1")._session.verify is False
    cert = tmp_path / "ca.pem"
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    with pytest.raises(StoreError, match="both set"):
        MlflowRestClient("https://127.0.0.1:1")
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS")
    assert MlflowRestClient("https://127.0.0.1:1")._session.verify == str(cert)
