"""``autolog sync``: copying runs between stores (embedded ⇄ server, server → server),
idempotently, and sending spools. What reached a server is checked with MLflow's client."""

from __future__ import annotations

import math
import uuid

import pytest
from click.testing import CliRunner

import autolog
from autolog.cli import main
from autolog.stores import close_all, open_store
from autolog.sync import SOURCE_RUN_TAG, copy_between

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")


def sync(*args: str):
    return CliRunner().invoke(main, ["sync", *args])


def unique(name: str) -> str:
    return f"sync/{name}-{uuid.uuid4().hex[:8]}"


def _server_value(value: float) -> float:
    """How an MLflow server gives a value back: ±inf as ±max float."""
    return math.copysign(1.7976931348623157e308, value) if math.isinf(value) else value


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def log_example_runs(experiment: str) -> dict[str, autolog.Run]:
    """A parent with a nested child, and a failed run, in the current tracking store."""
    with autolog.start_run(run_name="parent", experiment=experiment, tags={"team": "a"}) as parent:
        autolog.log_params({"lr": 0.1, "depth": 4})
        for step in range(1200):
            autolog.log_metric("loss", 1 / (step + 1), step=step)
        autolog.log_metrics({"odd": math.nan}, step=0)
        autolog.log_metrics({"odd": math.inf}, step=1)
        autolog.log_metrics({"odd": -math.inf}, step=2)
        with autolog.start_run(run_name="child", experiment=experiment, nested=True) as child:
            autolog.log_param("fold", 1)
            autolog.log_metric("fold_acc", 0.8)
    failed = autolog.start_run(run_name="failed", experiment=experiment)
    autolog.log_metric("loss", 9.0)
    failed.end("FAILED")
    return {"parent": parent, "child": child, "failed": failed}


def copies_on(server, experiment: str) -> dict[str, object]:
    client = server.client()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return {run.data.tags[SOURCE_RUN_TAG]: run for run in client.search_runs([exp.experiment_id])}


def assert_copied(server, source_store, source_id: str, copy) -> None:
    record = source_store.get_run(source_id)
    assert copy.data.params == record.params
    for key, value in record.tags.items():
        if key != "mlflow.parentRunId":
            assert copy.data.tags[key] == value
    assert copy.info.status == record.info.status
    assert copy.info.end_time == record.info.end_time
    assert copy.info.start_time == record.info.start_time
    client = server.client()
    for key in record.metrics:
        ours = sorted((m.step, m.timestamp, _server_value(m.value))
                      for m in source_store.get_metric_history(source_id, key))
        theirs = sorted((m.step, m.timestamp, m.value)
                        for m in client.get_metric_history(copy.info.run_id, key))
        assert len(ours) == len(theirs), key
        assert all(a[:2] == b[:2] and _same(a[2], b[2]) for a, b in zip(ours, theirs, strict=True))


def test_copy_from_the_embedded_store_to_a_server_is_idempotent(sqlite_server, store_uri):
    refused_before = len(sqlite_server.refused_log_batches())
    experiment = unique("embedded-to-server")
    runs = log_example_runs(experiment)
    source = open_store(store_uri)

    first = sync("--from", store_uri, "--to", sqlite_server.uri, "-e", experiment)
    assert first.exit_code == 0, first.output
    assert "3 created, 0 updated" in first.output
    copies = copies_on(sqlite_server, experiment)
    assert set(copies) == {run.id for run in runs.values()}
    for run in runs.values():
        assert_copied(sqlite_server, source, run.id, copies[run.id])
    parent_copy = copies[runs["parent"].id].info.run_id
    assert copies[runs["child"].id].data.tags["mlflow.parentRunId"] == parent_copy
    assert len(sqlite_server.refused_log_batches()) == refused_before

    again = sync("--from", store_uri, "--to", sqlite_server.uri, "-e", experiment)
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 3 already up to date; copied 0 metric points" in again.output
    assert copies_on(sqlite_server, experiment).keys() == copies.keys()

    # more data in the source: only that is copied
    with autolog.start_run(run_id=runs["parent"].id):
        autolog.log_param("late", "yes")
        for step in range(1200, 1210):
            autolog.log_metric("loss", 1 / (step + 1), step=step)
    more = sync("--from", store_uri, "--to", sqlite_server.uri, "-e", experiment)
    assert more.exit_code == 0, more.output
    assert "0 created, 1 updated, 2 already up to date; copied 10 metric points, 1 params" in more.output
    assert_copied(sqlite_server, source, runs["parent"].id,
                  sqlite_server.client().get_run(parent_copy))


def test_copy_from_server_to_server(sqlite_server, fault_server):
    experiment = unique("server-to-server")
    autolog.set_tracking_uri(sqlite_server.uri)
    runs = log_example_runs(experiment)
    source = open_store(sqlite_server.uri)
    assert source.wait_until_sent(30)

    result = sync("--from", sqlite_server.uri, "--to", fault_server.uri, "-e", experiment)
    assert result.exit_code == 0, result.output
    copies = copies_on(fault_server, experiment)
    assert set(copies) == {run.id for run in runs.values()}
    for run in runs.values():
        assert_copied(fault_server, source, run.id, copies[run.id])
    again = sync("--from", sqlite_server.uri, "--to", fault_server.uri, "-e", experiment)
    assert "0 created, 0 updated, 3 already up to date" in again.output
    assert fault_server.refused_log_batches() == []


def test_copy_from_a_server_into_an_embedded_store_and_back(sqlite_server, tmp_path):
    experiment = unique("round-trip")
    autolog.set_tracking_uri(sqlite_server.uri)
    runs = log_example_runs(experiment)
    assert open_store(sqlite_server.uri).wait_until_sent(30)
    local = f"sqlite:///{tmp_path / 'copy.db'}"

    report = copy_between(sqlite_server.uri, local, [experiment])
    assert report.runs_created == 3 and not report.conflicts
    copied = open_store(local)
    exp = copied.get_experiment_by_name(experiment)
    records = {r.tags[SOURCE_RUN_TAG]: r for r in copied.search_runs([exp.experiment_id])}
    parent = records[runs["parent"].id]
    assert parent.params == {"lr": "0.1", "depth": "4"}
    history = copied.get_metric_history(parent.run_id, "odd")
    assert math.isnan(history[0].value) and history[1].value == 1.7976931348623157e308
    assert len(copied.get_metric_history(parent.run_id, "loss")) == 1200

    back = copy_between(local, sqlite_server.uri, [experiment])  # copies of server runs
    assert (back.runs_created, back.runs_updated, back.points) == (0, 0, 0)
    assert len(sqlite_server.client().search_runs(
        [sqlite_server.client().get_experiment_by_name(experiment).experiment_id])) == 3


def test_a_param_that_differs_is_reported_not_sent(sqlite_server, store_uri):
    refused_before = len(sqlite_server.refused_log_batches())
    experiment = unique("conflict")
    with autolog.start_run(experiment=experiment) as run:
        autolog.log_param("lr", 0.1)
    assert sync("--from", store_uri, "--to", sqlite_server.uri).exit_code == 0
    copy = copies_on(sqlite_server, experiment)[run.id]
    sqlite_server.client().log_param(copy.info.run_id, "extra", "1")
    open_store(store_uri).log_batch(run.id, params={"extra": "2"})  # a diverged source
    result = sync("--from", store_uri, "--to", sqlite_server.uri, "-e", experiment)
    assert result.exit_code == 0
    assert "not copied: param 'extra'" in result.output
    assert sqlite_server.client().get_run(copy.info.run_id).data.params["extra"] == "1"
    assert len(sqlite_server.refused_log_batches()) == refused_before


def test_copy_shows_progress_and_embedded_to_embedded_works(store_uri, tmp_path, capsys):
    experiment = unique("progress")
    runs = log_example_runs(experiment)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    report = copy_between(store_uri, other, progress=True)
    assert report.runs_created == 3
    assert "copying: 100%" in capsys.readouterr().err
    copied = open_store(other)
    exp = copied.get_experiment_by_name(experiment)
    parent = next(r for r in copied.search_runs([exp.experiment_id])
                  if r.tags[SOURCE_RUN_TAG] == runs["parent"].id)
    assert len(copied.get_metric_history(parent.run_id, "loss")) == 1200
    assert copy_between(store_uri, other).runs_unchanged == 3


def test_a_large_copy_streams_and_a_second_sends_nothing(store_uri, tmp_path):
    logged = 200_000
    experiment = unique("large")
    with autolog.start_run(experiment=experiment) as run:
        for step in range(logged):
            autolog.log_metric("loss", step / 3, step=step)
        for step in range(1000):
            autolog.log_metric("acc", step / 1000, step=step)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = sync("--from", store_uri, "--to", other)
    assert first.exit_code == 0, first.output
    assert f"1 created, 0 updated, 0 already up to date; copied {logged + 1000:,} metric points" \
        in first.output
    assert first.output.count("\n") == 1  # off a terminal: one summary line, no bar
    copied = open_store(other)
    (copy,) = copied.search_runs([copied.get_experiment_by_name(experiment).experiment_id])
    assert copied.metric_counts(copy.run_id) == {"loss": logged, "acc": 1000}
    history = copied.get_metric_history(copy.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(step, step / 3) for step in range(logged)]

    again = sync("--from", store_uri, "--to", other)
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 1 already up to date; copied 0 metric points" in again.output
    assert copied.metric_counts(copy.run_id) == {"loss": logged, "acc": 1000}

    # a key that gained points is compared point by point; the other is not re-sent
    with autolog.start_run(run_id=run.id):
        for step in range(logged, logged + 5):
            autolog.log_metric("loss", step / 3, step=step)
    more = sync("--from", store_uri, "--to", other)
    assert "1 updated" in more.output and "copied 5 metric points" in more.output
    assert copied.metric_counts(copy.run_id) == {"loss": logged + 5, "acc": 1000}


def test_a_nested_run_that_starts_before_its_parent_links_to_the_parents_copy(store_uri, tmp_path):
    source = open_store(store_uri)
    experiment = source.get_or_create_experiment(unique("clock-stepped-back"))
    parent = source.create_run(experiment.experiment_id, "parent", 2_000, {})
    child = source.create_run(experiment.experiment_id, "child", 1_000,
                              {"mlflow.parentRunId": parent.run_id})
    source.create_run(experiment.experiment_id, "grandchild", 1_000,  # the same millisecond
                      {"mlflow.parentRunId": child.run_id})
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert copy_between(store_uri, other).runs_created == 3
    copied = open_store(other)
    target = copied.get_experiment_by_name(experiment.name)
    copies = {record.tags[SOURCE_RUN_TAG]: record
              for record in copied.search_runs([target.experiment_id])}
    by_name = {record.info.run_name: record for record in copies.values()}
    assert by_name["child"].tags["mlflow.parentRunId"] == copies[parent.run_id].info.run_id
    assert (by_name["grandchild"].tags["mlflow.parentRunId"]
            == by_name["child"].info.run_id)


def test_spools_held_by_a_live_process_are_left_to_it(spool_dir, unused_uri):
    autolog.set_tracking_uri(unused_uri)
    with pytest.warns(autolog.AutologWarning, match="started offline"):
        with autolog.start_run() as run:
            autolog.log_metric("m", 1.0)
    busy = sync()
    assert busy.exit_code == 0 and "in use by a running process" in busy.output
    close_all()

    down = sync()
    assert down.exit_code == 1
    assert "does not take data now" in down.output and "1 metric points" in down.output
    assert list(spool_dir.glob("*.spool"))
    assert run.id.startswith("offline-")


def test_sync_usage_errors(store_uri):
    with autolog.start_run():
        autolog.log_metric("m", 1.0)
    assert sync("--from", store_uri).exit_code == 2
    assert sync("-e", "x").exit_code == 2
    same = sync("--from", store_uri, "--to", store_uri)
    assert same.exit_code == 1 and "the same store" in same.output
    missing = sync("--from", store_uri, "--to", "sqlite:///elsewhere.db", "-e", "no-such")
    assert missing.exit_code == 1 and "no experiment named 'no-such'" in missing.output
    assert "nothing to send" in sync().output


def test_a_key_larger_than_the_held_bound_is_compared_in_passes(store_uri, tmp_path, monkeypatch):
    from autolog import sync as sync_module

    monkeypatch.setattr(sync_module, "HELD_POINTS", 1000)  # 5 passes over 5,000 points
    source = open_store(store_uri)
    experiment = source.get_or_create_experiment(unique("passes"))
    run = source.create_run(experiment.experiment_id, "r", 1, {})
    source.log_batch(run.run_id, metrics=[("m", step / 3, 10 + step, step) for step in range(5000)]
                     + [("m", math.nan, 1, 0), ("m", math.inf, 2, 0)])
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert copy_between(store_uri, other).points == 5002
    # new points between the old ones (the same steps, later timestamps), and an old one again
    late = [("m", step / 5, 100_000 + step, step) for step in range(0, 5000, 500)]
    source.log_batch(run.run_id, metrics=[*late, ("m", 0.0, 10, 0)])
    report = copy_between(store_uri, other)
    assert (report.runs_updated, report.points) == (1, len(late))
    copied = open_store(other)
    (copy,) = copied.search_runs([copied.get_experiment_by_name(experiment.name).experiment_id])
    assert copied.metric_counts(copy.run_id) == {"m": 5002 + len(late)}
    assert copy_between(store_uri, other).points == 0  # counts differ (a duplicate): nothing sent


def test_one_store_named_two_ways_is_the_same_store(store_uri, tmp_path):
    """``sqlite:///./x.db`` and ``sqlite:////abs/x.db`` are one file: no copy into itself."""
    with autolog.start_run():
        autolog.log_metric("m", 1.0)
    relative = f"sqlite:///./{store_uri.rsplit('/', 1)[-1]}"  # the tests run in tmp_path
    same = sync("--from", relative, "--to", store_uri)
    assert same.exit_code == 1 and "the same store" in same.output
    assert len(autolog.search_runs()) == 1
