"""``autolog sync``: send what spools hold, and copy runs between any two stores.

Copying is idempotent and incremental. A copied run carries the tag
``autolog.source_run_id``; a later copy finds it by that tag and sends only what the
destination lacks: params it does not have, tags that differ, metric points it does not
hold (compared as MLflow stores them: a server keeps ±inf as ±max float and an identical
point once), and the status. A run that is itself a copy of a destination run is synced
back into that run instead of being copied again. Params never overwrite: a key the
destination holds with another value is reported, not sent.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from autolog.stores import open_store
from autolog.stores.base import Experiment, MetricRow, RunRecord, Store, StoreError
from autolog.stores.mlflow_rest import MlflowRestClient
from autolog.stores.spool import SpoolOutcome, default_spool_dir, send_spool_file, spool_files
from autolog.uris import redact_uri

SOURCE_RUN_TAG = "autolog.source_run_id"
PARENT_RUN_TAG = "mlflow.parentRunId"
ALL_RUNS = 2**31 - 1
POINTS_PER_CALL = 50_000
_FLOAT_MAX = sys.float_info.max


# -- spools -------------------------------------------------------------------------------


def send_spools(directory: Path | None = None, progress: bool | None = None) -> list[SpoolOutcome]:
    """Send every spool file in ``directory`` (default ``$AUTOLOG_SPOOL_DIR`` or
    ``~/.autolog/spool``) that no running process holds. ``progress=None`` shows bars
    only on a terminal."""
    directory = directory or default_spool_dir()
    outcomes = []
    for path in spool_files(directory):
        def bar(total: int, name: str = path.name) -> tqdm:
            return tqdm(total=total, unit="batch", desc=f"sending {name}", leave=False,
                        disable=None if progress is None else not progress)

        outcomes.append(send_spool_file(path, bar))
    return outcomes


# -- copying ------------------------------------------------------------------------------


@dataclass
class CopyReport:
    runs_created: int = 0
    runs_updated: int = 0
    runs_unchanged: int = 0
    points: int = 0
    params: int = 0
    tags: int = 0
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"runs: {self.runs_created} created, {self.runs_updated} updated, "
                 f"{self.runs_unchanged} already up to date; copied {self.points:,} metric "
                 f"points, {self.params} params, {self.tags} tags"]
        lines.extend(f"not copied: {conflict}" for conflict in self.conflicts)
        return "\n".join(lines)


def open_for_copy(uri: str, create: bool) -> Store:
    """A store that reads and writes synchronously: an MLflow server without the spool
    (so errors surface here), the embedded store as usual."""
    if uri.startswith(("http://", "https://")):
        return MlflowRestClient(uri)
    return open_store(uri, create=create)


def copy_between(source_uri: str, dest_uri: str, experiments: Sequence[str] = (),
                 progress: bool | None = None) -> CopyReport:
    if source_uri == dest_uri:
        raise ValueError(f"--from and --to are the same store: {redact_uri(source_uri)}")
    source = open_for_copy(source_uri, create=False)
    dest = open_for_copy(dest_uri, create=True)
    try:
        return copy_runs(source, dest, experiments, progress)
    finally:
        for store in (source, dest):
            if isinstance(store, MlflowRestClient):
                store.close()


def copy_runs(source: Store, dest: Store, experiments: Sequence[str] = (),
              progress: bool | None = None) -> CopyReport:
    """Copy the runs of ``experiments`` (default: all) from ``source`` into ``dest``,
    experiments matched by name. ``progress=None`` shows a bar only on a terminal."""
    chosen = source.list_experiments()
    if experiments:
        missing = sorted(set(experiments) - {e.name for e in chosen})
        if missing:
            raise StoreError(f"no experiment named {', '.join(map(repr, missing))} in {source.uri}")
        chosen = [e for e in chosen if e.name in experiments]
    work = [(experiment, parents_first(source.search_runs([experiment.experiment_id], ALL_RUNS)))
            for experiment in chosen]
    report = CopyReport()
    id_map: dict[str, str] = {}  # source run id -> destination run id, for parent links
    with tqdm(total=sum(len(runs) for _, runs in work), unit="run", desc="copying runs",
              disable=None if progress is None else not progress) as bar:
        for experiment, runs in work:
            target = dest.get_or_create_experiment(experiment.name)
            existing = dest.search_runs([target.experiment_id], ALL_RUNS)
            by_id = {record.info.run_id: record for record in existing}
            by_source = {record.tags[SOURCE_RUN_TAG]: record for record in existing
                         if SOURCE_RUN_TAG in record.tags}
            id_map.update({source_id: record.info.run_id for source_id, record in by_source.items()})
            for record in runs:
                copy = by_source.get(record.info.run_id) or by_id.get(
                    record.tags.get(SOURCE_RUN_TAG, ""))
                _copy_run(source, dest, target, record, copy, id_map, report)
                bar.update(1)
                bar.set_postfix(points=report.points, refresh=False)
    return report


def parents_first(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """``runs`` in start order, except that a parent always comes before its nested runs,
    so a copy's ``mlflow.parentRunId`` can name the parent's copy. Start order alone does
    not ensure it: a parent and its child often start in the same millisecond, and a
    clock may step back. Each run is placed once, so a cycle of parent tags (a corrupt
    store) cannot loop."""
    by_id = {record.info.run_id: record for record in runs}
    ordered: list[RunRecord] = []
    placed: set[str] = set()
    for record in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id)):
        chain = []  # the record and its ancestors not yet placed, innermost first
        while record is not None and record.info.run_id not in placed:
            placed.add(record.info.run_id)
            chain.append(record)
            record = by_id.get(record.tags.get(PARENT_RUN_TAG, ""))
        ordered.extend(reversed(chain))
    return ordered


def _copy_run(source: Store, dest: Store, experiment: Experiment, record: RunRecord,
              copy: RunRecord | None, id_map: dict[str, str], report: CopyReport) -> None:
    info = record.info
    tags = dict(record.tags)
    if tags.get(PARENT_RUN_TAG) in id_map:
        tags[PARENT_RUN_TAG] = id_map[tags[PARENT_RUN_TAG]]
    created = copy is None
    if copy is None:
        copy = RunRecord(dest.create_run(experiment.experiment_id, info.run_name,
                                         info.start_time, {**tags, SOURCE_RUN_TAG: info.run_id}))
        report.tags += len(tags)
        new_tags: dict[str, str] = {}
    else:
        new_tags = {key: value for key, value in tags.items()
                    if key != SOURCE_RUN_TAG and copy.tags.get(key) != value}
    run_id = copy.info.run_id
    id_map[info.run_id] = run_id

    new_params = {key: value for key, value in record.params.items() if key not in copy.params}
    report.conflicts.extend(
        f"param {key!r} of run {info.run_id}: {value!r} in {source.uri}, "
        f"{copy.params[key]!r} in {dest.uri} (run {run_id})"
        for key, value in record.params.items()
        if key in copy.params and copy.params[key] != value)
    if new_params:
        dest.log_batch(run_id, params=new_params)
    if new_tags:
        dest.log_batch(run_id, tags=new_tags)
    points = 0
    batch: list[MetricRow] = []
    for point in _missing_points(source, dest, info.run_id, copy, sorted(record.metrics)):
        batch.append(point)
        if len(batch) == POINTS_PER_CALL:
            dest.log_batch(run_id, metrics=batch)
            points += len(batch)
            batch = []
    if batch:
        dest.log_batch(run_id, metrics=batch)
        points += len(batch)
    status_changed = (copy.info.status, copy.info.end_time) != (info.status, info.end_time)
    if status_changed:
        dest.update_run(run_id, info.status, info.end_time)

    report.params += len(new_params)
    report.tags += len(new_tags)
    report.points += points
    if created:
        report.runs_created += 1
    elif new_params or new_tags or points or status_changed:
        report.runs_updated += 1
    else:
        report.runs_unchanged += 1


def _identity(key: str, value: float, timestamp: int, step: int) -> tuple:
    """A point as an MLflow server stores it: NaN is NaN, ±inf is ±max float."""
    if math.isnan(value):
        stored: object = "nan"
    elif value >= _FLOAT_MAX:
        stored = math.inf
    elif value <= -_FLOAT_MAX:
        stored = -math.inf
    else:
        stored = value
    return key, timestamp, step, stored


def _missing_points(source: Store, dest: Store, source_id: str, copy: RunRecord,
                    keys: Sequence[str]) -> Iterator[MetricRow]:
    for key in keys:
        held = set()
        if key in copy.metrics:
            held = {_identity(m.key, m.value, m.timestamp, m.step)
                    for m in dest.get_metric_history(copy.info.run_id, key)}
        for m in source.get_metric_history(source_id, key):
            identity = _identity(m.key, m.value, m.timestamp, m.step)
            if identity not in held:
                held.add(identity)
                yield m.key, m.value, m.timestamp, m.step
