"""``autolog sync``: send what spools hold, and copy runs between any two stores.

Copies read from any store autolog writes to, and from the two it no longer writes: a
file in autolog v0.1's own format (:mod:`autolog.stores.v01`) and MLflow's ``file:``
stores (:mod:`autolog.stores.mlflow_file`). Every experiment (by name) and run is copied:
name, status, start and end time, params, tags (MLflow's system tags too), every metric
point, the parent link, pointed at the parent's copy, and the artifacts, through the
staging area (:mod:`autolog.artifacts.copying`): a file the copy already holds (same size,
and same checksum where the destination keeps one) is not sent again.

Copying is idempotent and incremental. A copied run carries the tag
``autolog.source_run_id``; a later copy finds it by that tag and sends only what the
destination lacks: params it does not have, tags that differ, metric points it does not
hold (compared as MLflow stores them: a server keeps ±inf as ±max float and an identical
point once), and the status. A run that is itself a copy of a destination run is synced
back into that run instead of being copied again. Params never overwrite: a key the
destination holds with another value is reported, not sent.

Histories stream in pages (:data:`PAGE_POINTS`), so memory does not grow with a run.
Per key, the points each side holds are counted first (without reading a point where
the store can count them, as a v0.1 file's chunk rows do; else by paging through the
history): a key the copy holds as many points of as the source is taken as copied and
not read again, which makes a re-sync with nothing new cheap. Only a key whose counts
differ is compared point by point, holding at most :data:`HELD_POINTS` of the copy's
points at once (a larger key is compared in several passes, each over the points whose
identity hashes to it). (A copy only ``autolog sync`` writes to stays exact this way;
points logged into a copy by hand could mask as many missing ones.)
"""

from __future__ import annotations

import math
import os
import shlex
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from autolog.artifacts.copying import copy_artifacts
from autolog.artifacts.resume import JournalOutcome, send_journals
from autolog.artifacts.staging import Staging, default_staging_dir
from autolog.artifacts.uploader import human_size
from autolog.stores import open_store
from autolog.stores.base import RUNNING, Experiment, MetricRow, RunRecord, Store, StoreError
from autolog.stores.local_files import default_spool_dir
from autolog.stores.mlflow_file import MlflowFileStore, is_file_store_uri
from autolog.stores.mlflow_rest import MlflowRestClient
from autolog.stores.spool.spool_file import spool_files
from autolog.stores.spool.sync_support import (
    SpoolOutcome,
    SpoolPlan,
    plan_spool_file,
    send_spool_file,
)
from autolog.stores.v01 import V01Store, is_v01_file
from autolog.uris import redact_uri

SOURCE_RUN_TAG = "autolog.source_run_id"
PARENT_RUN_TAG = "mlflow.parentRunId"
ALL_RUNS = 2**31 - 1
POINTS_PER_CALL = 50_000
PAGE_POINTS = 50_000  # points read from a history at a time
HELD_POINTS = 500_000  # at most this many of a copy's points are held to compare a key
_FLOAT_MAX = sys.float_info.max


# -- spools -------------------------------------------------------------------------------


def send_spools(directory: Path | None = None, progress: bool | None = None, *,
                files: Sequence[Path] = (), to: str | None = None,
                configured: str | None = None) -> list[SpoolOutcome]:
    """Send every spool file in ``directory`` (default ``$AUTOLOG_SPOOL_DIR`` or
    ``~/.autolog/spool``), or only ``files``, that no running process holds, each to
    ``to`` if given, else to the server it names when that is ``configured`` (see
    :func:`~autolog.stores.spool.sync_support.send_spool_file`). One damaged file never stops the
    others. ``progress=None`` shows a bar, counted in metric points, only on a terminal."""
    directory = directory or default_spool_dir()
    outcomes = []
    for path in files or spool_files(directory):
        def bar(total: int, name: str = path.name) -> tqdm:
            return tqdm(total=total, unit="point", desc=f"sending {name}",
                        leave=False, disable=None if progress is None else not progress)

        outcomes.append(send_spool_file(path, bar, to=to, configured=configured,
                                        command=_command_for(path)))
    return outcomes


def send_uploads(spool_dir: Path | None = None, progress: bool | None = None) -> list[JournalOutcome]:
    """Send the artifact uploads that processes left (see :mod:`autolog.artifacts.resume`),
    from ``$AUTOLOG_STAGING_DIR``, else the ``artifacts`` folder of ``spool_dir``.
    ``progress=None`` shows a bar, counted in bytes, only on a terminal."""
    staging = Staging(default_staging_dir() if spool_dir is None or "AUTOLOG_STAGING_DIR" in os.environ
                      else spool_dir / "artifacts")

    def bar(total: int, name: str) -> Callable[[int], object]:
        return tqdm(total=total, unit="B", unit_scale=True, desc=f"uploading {name}", leave=False,
                    disable=None if progress is None else not progress).update

    return send_journals(staging, bar)


def plan_spools(directory: Path | None = None, *, files: Sequence[Path] = (),
                to: str | None = None, configured: str | None = None) -> list[SpoolPlan]:
    """What :func:`send_spools` would do with the same arguments, doing none of it."""
    return [plan_spool_file(path, to=to, configured=configured, command=_command_for(path))
            for path in files or spool_files(directory or default_spool_dir())]


def _command_for(path: Path) -> Callable[[str], str]:
    """The command that sends the spool at ``path`` to a given server."""
    return lambda uri: f"autolog sync --to {shlex.quote(uri)} {shlex.quote(str(path))}"


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
    artifacts: int = 0  # files uploaded
    artifacts_present: int = 0  # files the copy already held
    artifact_bytes: int = 0
    notes: list[str] = field(default_factory=list)  # what a copy leaves out, and why
    dry_run: bool = False
    plans: list[str] = field(default_factory=list)  # per experiment, in a dry run
    seconds: float = 0.0

    def summary(self) -> str:
        """What was copied (or, in a dry run, would be): the lines a copy prints, on a
        terminal or not."""
        if self.dry_run:
            lines = [*self.plans,
                     f"dry run, nothing written: would create {self.runs_created} runs, update "
                     f"{self.runs_updated}, leave {self.runs_unchanged} as they are; would copy "
                     f"{self.points:,} metric points, {self.params} params, {self.tags} tags"]
        else:
            lines = [f"runs: {self.runs_created} created, {self.runs_updated} updated, "
                     f"{self.runs_unchanged} already up to date; copied {self.points:,} metric "
                     f"points, {self.params} params, {self.tags} tags in {self.seconds:.1f} s"]
            if self.artifacts or self.artifacts_present:
                lines.append(f"artifacts: {self.artifacts} files copied ({human_size(self.artifact_bytes)}), "
                             f"{self.artifacts_present} already there")
        lines.extend(f"not copied: {conflict}" for conflict in self.conflicts)
        lines.extend(self.notes)
        return "\n".join(lines)


def open_for_copy(uri: str, create: bool) -> Store:
    """A store that reads and writes synchronously: an MLflow server without the spool
    (so errors surface here), the embedded store as usual."""
    if uri.startswith(("http://", "https://")):
        return MlflowRestClient(uri)
    return open_store(uri, create=create)


def open_source(uri: str) -> Store:
    """The store to copy from: besides every store :func:`open_for_copy` opens, a file in
    autolog v0.1's format (``sqlite:///autolog.db``, told apart by its content) and an
    MLflow file store (``./mlruns``, ``file:///abs/mlruns``)."""
    if uri.startswith("sqlite:///") and is_v01_file(uri.removeprefix("sqlite:///")):
        return V01Store(uri.removeprefix("sqlite:///"))
    if is_file_store_uri(uri):
        return MlflowFileStore(uri)
    return open_for_copy(uri, create=False)


def _open_destination(uri: str, dry_run: bool) -> Store | None:
    """The store to copy into; in a dry run, None for a SQLite file that does not exist
    yet (a copy would create it empty), and nothing is created."""
    if dry_run and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return open_for_copy(uri, create=not dry_run)


def copy_between(source_uri: str, dest_uri: str, experiments: Sequence[str] = (),
                 progress: bool | None = None, dry_run: bool = False) -> CopyReport:
    """Copy runs from ``source_uri`` (see :func:`open_source`) into ``dest_uri``, or with
    ``dry_run`` only say what would be copied, writing nothing."""
    source = open_source(source_uri)
    dest = None
    started = time.monotonic()
    try:
        dest = _open_destination(dest_uri, dry_run)
        if dest is not None and source.uri == dest.uri:  # as the stores resolve them
            raise ValueError(f"--from and --to are the same store: {redact_uri(source_uri)}")
        report = copy_runs(source, dest, experiments, progress, dry_run=dry_run)
        report.seconds = time.monotonic() - started
        return report
    finally:
        for store in (source, dest):  # those opened here; open_store's are shared
            if isinstance(store, (MlflowRestClient, V01Store, MlflowFileStore)):
                store.close()


def copy_runs(source: Store, dest: Store | None, experiments: Sequence[str] = (),
              progress: bool | None = None, dry_run: bool = False) -> CopyReport:
    """Copy the runs of ``experiments`` (default: all) from ``source`` into ``dest``,
    experiments matched by name. ``progress=None`` shows a bar only on a terminal. With
    ``dry_run`` nothing is written, and ``dest`` may be None (a store not created yet)."""
    chosen = source.list_experiments()
    if experiments:
        missing = sorted(set(experiments) - {e.name for e in chosen})
        if missing:
            raise StoreError(f"no experiment named {', '.join(map(repr, missing))} in {source.uri}")
        chosen = [e for e in chosen if e.name in experiments]
    work = [(experiment, parents_first(source.search_runs([experiment.experiment_id], max_results=ALL_RUNS)))
            for experiment in chosen]
    report = CopyReport(dry_run=dry_run)
    report.notes.extend(_left_out(source, [record for _, runs in work for record in runs],
                                  whole=not experiments))
    id_map: dict[str, str] = {}  # source run id -> destination run id, for parent links
    total = None  # known up front only where counting costs no read of the points
    if hasattr(source, "metric_counts"):
        total = sum(sum(source.metric_counts(record.info.run_id).values())
                    for _, runs in work for record in runs)
    with tqdm(total=total, unit="point", desc="examining" if dry_run else "copying",
              disable=None if progress is None else not progress) as bar:
        for experiment, runs in work:
            if dry_run:
                target = dest.get_experiment_by_name(experiment.name) if dest is not None else None
            else:
                target = dest.get_or_create_experiment(experiment.name)
            existing = dest.search_runs([target.experiment_id], max_results=ALL_RUNS) if target else []
            by_id = {record.info.run_id: record for record in existing}
            by_source = {record.tags[SOURCE_RUN_TAG]: record for record in existing
                         if SOURCE_RUN_TAG in record.tags}
            id_map.update({source_id: record.info.run_id for source_id, record in by_source.items()})
            before = _tally(report)
            for record in runs:
                copy = by_source.get(record.info.run_id) or by_id.get(
                    record.tags.get(SOURCE_RUN_TAG, ""))
                _copy_run(source, dest, target, record, copy, id_map, report, bar.update, dry_run)
            if dry_run:
                created, updated, unchanged, points = (
                    now - then for now, then in zip(_tally(report), before))
                report.plans.append(
                    f"experiment {experiment.name!r}{'' if target else ' (new)'}: {created} runs "
                    f"to create, {updated} to update, {unchanged} up to date; {points:,} metric "
                    "points to copy")
    return report


def _tally(report: CopyReport) -> tuple[int, int, int, int]:
    return report.runs_created, report.runs_updated, report.runs_unchanged, report.points


def _left_out(source: Store, records: Sequence[RunRecord], whole: bool) -> list[str]:
    """Lines that say what of ``source`` a copy of ``records`` leaves out: the
    experiments and runs in its trash (its experiments there only when ``whole``, a copy of
    every experiment)."""
    notes = []
    if hasattr(source, "deleted_runs"):
        experiments = len(source.deleted_experiments()) if whole else 0
        runs = source.deleted_runs({record.info.experiment_id for record in records})
        if experiments or runs:
            notes.append(f"not copied, in the trash of {source.uri}: {experiments} deleted "
                         f"experiment(s), {runs} deleted run(s)")
    return notes


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


def _copy_run(source: Store, dest: Store | None, experiment: Experiment | None,
              record: RunRecord, copy: RunRecord | None, id_map: dict[str, str],
              report: CopyReport, examined: Callable[[int], object] = lambda points: None,
              dry_run: bool = False) -> None:
    info = record.info
    tags = dict(record.tags)
    if tags.get(PARENT_RUN_TAG) in id_map:
        tags[PARENT_RUN_TAG] = id_map[tags[PARENT_RUN_TAG]]
    created = copy is None
    keys = sorted(record.metrics)
    if copy is None:
        new_params, new_tags = dict(record.params), tags
        status_changed = (info.status, info.end_time) != (RUNNING, None)  # a new run's
    else:
        id_map[info.run_id] = copy.info.run_id
        new_params = {key: value for key, value in record.params.items() if key not in copy.params}
        new_tags = {key: value for key, value in tags.items()
                    if key != SOURCE_RUN_TAG and copy.tags.get(key) != value}
        status_changed = (copy.info.status, copy.info.end_time) != (info.status, info.end_time)
        report.conflicts.extend(
            f"param {key!r} of run {info.run_id}: {value!r} in {source.uri}, "
            f"{copy.params[key]!r} in {dest.uri} (run {copy.info.run_id})"
            for key, value in record.params.items()
            if key in copy.params and copy.params[key] != value)

    if dry_run and copy is None:
        points = sum(metric_counts(source, info.run_id, keys).values())
        examined(points)
    elif dry_run:
        points = sum(1 for _ in _missing_points(source, dest, info.run_id, copy, keys, examined))
    else:
        missing = _missing_points(source, dest, info.run_id, copy, keys, examined)
        if copy is None:
            copy = RunRecord(dest.create_run(experiment.experiment_id, info.run_name,
                                             info.start_time, {**tags, SOURCE_RUN_TAG: info.run_id}))
            id_map[info.run_id] = copy.info.run_id
            new_tags = {}  # created with the run
        run_id = copy.info.run_id
        if new_params:
            dest.log_batch(run_id, params=new_params)
        if new_tags:
            dest.log_batch(run_id, tags=new_tags)
        points = _send(dest, run_id, missing)
        if status_changed:
            dest.update_run(run_id, info.status, info.end_time)
        _copy_artifacts(source, dest, record, copy, report)

    report.params += len(new_params)
    report.tags += len(tags) if created else len(new_tags)
    report.points += points
    if created:
        report.runs_created += 1
    elif new_params or new_tags or points or status_changed:
        report.runs_updated += 1
    else:
        report.runs_unchanged += 1


def _copy_artifacts(source: Store, dest: Store, record: RunRecord, copy: RunRecord,
                    report: CopyReport) -> None:
    where = (source.artifact_location(record) if isinstance(source, MlflowFileStore)
             else record.info.artifact_uri)
    if not where or not copy.info.artifact_uri:
        return
    copied = copy_artifacts(where, source.uri, copy.info.artifact_uri, dest.uri, Staging())
    report.artifacts += copied.files
    report.artifacts_present += copied.present
    report.artifact_bytes += copied.size


def _send(dest: Store, run_id: str, points: Iterator[MetricRow]) -> int:
    """Write ``points`` into the run in batches of :data:`POINTS_PER_CALL`; how many."""
    sent = 0
    batch: list[MetricRow] = []
    for point in points:
        batch.append(point)
        if len(batch) == POINTS_PER_CALL:
            dest.log_batch(run_id, metrics=batch)
            sent += len(batch)
            batch = []
    if batch:
        dest.log_batch(run_id, metrics=batch)
        sent += len(batch)
    return sent


_PACK_IDENTITY = struct.Struct("<qqd").pack


def _identity_of(point: MetricRow) -> bytes:
    """A point of one key as an MLflow server stores it (NaN is NaN, ±inf is ±max
    float), packed in 24 bytes: a copy's points are held by the hundred thousand."""
    _, value, timestamp, step = point
    if math.isnan(value):
        value = math.nan  # one NaN, whatever its bits
    elif value >= _FLOAT_MAX:
        value = math.inf
    elif value <= -_FLOAT_MAX:
        value = -math.inf
    return _PACK_IDENTITY(timestamp, step, value)


def history_pages(store: Store, run_id: str, key: str) -> Iterator[list[MetricRow]]:
    """A key's points in pages: the embedded store's chunks, a server's history pages (a
    store that reads no pages gives all of them in one)."""
    if hasattr(store, "iter_metric_history"):
        yield from store.iter_metric_history(run_id, key, PAGE_POINTS)
    else:
        yield [(m.key, m.value, m.timestamp, m.step)
               for m in store.get_metric_history(run_id, key)]


def metric_counts(store: Store, run_id: str, keys: Sequence[str]) -> dict[str, int]:
    """key -> points ``store`` holds for the run: without reading them where it can."""
    if hasattr(store, "metric_counts"):
        counts = store.metric_counts(run_id)
        return {key: counts.get(key, 0) for key in keys}
    return {key: sum(map(len, history_pages(store, run_id, key))) for key in keys}


def _missing_points(source: Store, dest: Store, source_id: str, copy: RunRecord | None,
                    keys: Sequence[str], examined: Callable[[int], object]) -> Iterator[MetricRow]:
    """The source's points the copy lacks (all of them for a new copy, ``copy=None``)."""
    held_keys = [] if copy is None else [key for key in keys if key in copy.metrics]
    held_counts = metric_counts(dest, copy.info.run_id, held_keys) if held_keys else {}
    wanted = metric_counts(source, source_id, held_keys) if held_keys else {}
    for key in keys:
        if key in held_counts and held_counts[key] == wanted[key]:  # copied (module doc)
            examined(wanted[key])
            continue
        if not held_counts.get(key):
            for page in history_pages(source, source_id, key):
                examined(len(page))
                yield from page
            continue
        # Compared in as many passes as keep the copy's points held at once within
        # HELD_POINTS: pass i holds and sends only the points whose identity hashes to i.
        passes = -(-held_counts[key] // HELD_POINTS)
        for part in range(passes):
            held = {identity for page in history_pages(dest, copy.info.run_id, key)
                    for identity in map(_identity_of, page) if hash(identity) % passes == part}
            for page in history_pages(source, source_id, key):
                if part == passes - 1:
                    examined(len(page))
                for point in page:
                    identity = _identity_of(point)
                    if hash(identity) % passes == part and identity not in held:
                        yield point
