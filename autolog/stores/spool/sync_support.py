"""What ``autolog sync`` does with spool files no live process holds: plan, or send.

Credentials are never written to a spool: ``autolog sync`` takes them from the
environment, as the run did, and so sends a spool only to the configured tracking server
or the one named with ``--to`` (a spool is data anyone who can write the folder may have
planted). A spool kept for the embedded store goes to that store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from autolog.stores.base import ParamRefusedError, RunNotFoundError, StoreError
from autolog.stores.mlflow_rest import MlflowRestClient, ServerUnreachableError, inputs_from_body
from autolog.stores.spool.rows import UNSENDABLE
from autolog.stores.spool.sender import Sender, retry_later
from autolog.stores.spool.spool_file import Backlog, Batch, RunPlan, SpoolFile
from autolog.stores.sql.store import SqlStore
from autolog.uris import is_sql_uri, redact_uri, with_configured_credentials

HELD = "in use by a running process, whose own sender is sending it"


@dataclass
class _Report:
    """What a plan and an outcome both say about one spool file."""

    path: Path
    uri: str | None  # the server it names (None when it could not be read)
    sent_to: str | None = None  # where it goes (``--to``, else ``uri``); None: not sent
    problem: str | None = None  # why it is not sent, or why sending stopped early
    held: bool = False  # a live process holds it and sends it itself


@dataclass
class SpoolPlan(_Report):
    """What ``autolog sync --dry-run`` found in one spool file: where it would go, per
    run what, and what is damaged."""

    runs: list[RunPlan] = field(default_factory=list)
    backlog: Backlog = Backlog()


@dataclass
class SpoolOutcome(_Report):
    """What ``autolog sync`` did with one spool file."""

    sent_batches: int = 0
    sent_points: int = 0
    left: Backlog = Backlog()
    notes: list[str] = field(default_factory=list)  # what the sender reported on the way

    @property
    def complete(self) -> bool:
        """Nothing is left in it for anyone to send (a held file is its owner's)."""
        return self.held or (self.problem is None and self.left.empty)


def origin(uri: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of an http(s) URI: where credentials may go."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a port: matches nothing
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _takes_credentials(uri: str) -> bool:
    """A spool for the embedded store sends nothing over the network: no check needed."""
    return not uri.startswith("sqlite:///")


def _not_yours(path: Path) -> str | None:
    """Why ``path`` must not be opened: another user's file (planted in a shared folder,
    its URI would get this user's credentials) or not a regular file."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a link, say); not opened"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by you (uid {os.getuid()}); not opened"
    return None


def _not_for(uri: str, to: str | None, configured: str | None,
             command: Callable[[str], str] | None) -> str | None:
    """Why a spool naming ``uri`` is not sent (see :func:`send_spool_file`), or None."""
    if to is None and _takes_credentials(uri) and (
            configured is None or origin(uri) != origin(configured)):
        return (f"not sent: it names {uri}, not the configured tracking server "
                f"({redact_uri(configured) if configured else 'none set'}), and credentials go "
                f"only there; if you trust "
                f"{uri}, send it with: "
                f"{command(uri) if command else f'autolog sync --to {uri}'}")
    return None


Report = TypeVar("Report", SpoolPlan, SpoolOutcome)


def _claim(path: Path, report: type[Report], to: str | None, configured: str | None,
           command: Callable[[str], str] | None) -> tuple[SpoolFile | None, Report]:
    """What planning and sending ``path`` begin with: the spool claimed (None when it is
    held, not the user's, or unreadable: the report says which), and the report, which
    says where it goes or why it goes nowhere (see :func:`send_spool_file`)."""
    spool, problem = _open_for_sync(path)
    if spool is None:
        return None, report(path, None, held=problem is None, problem=problem or HELD)
    begun = report(path, spool.uri, problem=_not_for(spool.uri, to, configured, command))
    if begun.problem is None:
        begun.sent_to = redact_uri(to) if to else spool.uri  # what messages name
    return spool, begun


def _open_for_sync(path: Path) -> tuple[SpoolFile | None, str | None]:
    """The spool file at ``path`` claimed, or None and why not (held: None, None)."""
    try:
        refusal = _not_yours(path)
        if refusal is not None:
            return None, refusal
        return SpoolFile.claim(path), None
    except FileNotFoundError:  # its owner removed it a moment ago, as claim() allows for
        return None, None
    except (sqlite3.OperationalError, OSError) as exc:  # a full disk, a read-only folder
        return None, f"could not open ({type(exc).__name__}: {exc})"
    except (StoreError, sqlite3.Error) as exc:  # not a database, not a spool
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def plan_spool_file(path: Path, *, to: str | None = None, configured: str | None = None,
                    command: Callable[[str], str] | None = None) -> SpoolPlan:
    """What :func:`send_spool_file` would do with ``path``, doing none of it: no request
    is made and the file is left as it is."""
    spool, plan = _claim(path, SpoolPlan, to, configured, command)
    if spool is None:
        return plan
    try:
        plan.runs = spool.audit()
        plan.backlog = spool.backlog()
    except sqlite3.Error as exc:
        plan.problem = f"damaged ({type(exc).__name__}: {exc})"
    finally:
        spool.close(remove=False)
    return plan


def send_spool_file(path: Path, progress_factory=None, *, to: str | None = None,
                    configured: str | None = None,
                    command: Callable[[str], str] | None = None) -> SpoolOutcome:
    """Send one spool file no live process holds; remove it once empty. Never raises for
    a damaged or foreign file: the outcome says what happened.

    The spool goes to ``to`` if given, else to the server it names, but only when that
    server has the origin (scheme, host, port) of ``configured``, the tracking URI the
    user set: the environment's credentials go nowhere else (a spool for an embedded
    store, which takes no credentials, goes to its store). ``command(uri)`` is the
    command that sends it to ``uri`` (for the message when it is not sent). Batches
    refused earlier are retried. ``progress_factory(total)`` may return an object with
    ``update(n)`` and ``close()`` (a tqdm bar) that counts metric points.
    """
    spool, outcome = _claim(path, SpoolOutcome, to, configured, command)
    if spool is None:
        return outcome
    client = bar = None
    try:
        if outcome.problem is not None:
            return outcome
        client = destination(to or with_configured_credentials(spool.uri, configured))
        spool.retry_failed()
        if progress_factory is not None:
            bar = progress_factory(spool.backlog().points)

        def sent(batch: Batch) -> None:
            outcome.sent_batches += 1
            if batch.kind == "metrics":
                outcome.sent_points += batch.points
                if bar is not None:
                    bar.update(batch.points)

        elsewhere = to is not None and origin(to) != origin(spool.uri)
        Sender(spool, client, outcome.notes.append,
               drop_missing_runs=not elsewhere).send_available(progress=sent)
    except StoreError as exc:
        outcome.problem = (f"{outcome.sent_to} does not take data now: {exc}" if retry_later(exc)
                           else f"stopped: {exc}")
    except sqlite3.OperationalError as exc:  # a full disk: the deletes cannot be written
        outcome.problem = (f"could not update the spool file ({exc}); what was sent since its "
                           "last update is sent again next time (the server keeps one copy)")
    except sqlite3.Error as exc:  # a truncated or corrupt file
        outcome.problem = f"damaged ({type(exc).__name__}: {exc})"
    except (OSError, *UNSENDABLE) as exc:
        outcome.problem = f"stopped ({type(exc).__name__}: {exc})"
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        _release(spool, outcome)
    return outcome


class EmbeddedDestination:
    """What :class:`Sender` sends to, for a spool kept for the embedded store: data the
    SQLite store could not take when it was logged (locked, or its disk full). It speaks
    the few calls of :class:`MlflowRestClient` the sender makes, through the store's own
    ``log_batch``, ``log_inputs`` and ``update_run``, so the spool is sent the same way to
    either."""

    def __init__(self, uri: str):
        self.uri = uri
        self._store = SqlStore(uri, create=False)

    def _call(self, write: Callable[[], None]) -> None:
        try:
            write()
        except (sqlite3.OperationalError, OSError) as exc:  # locked, full: try again later
            raise ServerUnreachableError(f"{self.uri} cannot take data now: {exc}") from exc
        except StoreError as exc:
            if isinstance(exc, (ParamRefusedError, RunNotFoundError)):
                raise
            raise ServerUnreachableError(f"{self.uri} cannot take data now: {exc}") from exc

    def post_batch(self, run_id: str, body: bytes) -> None:
        """A metrics or tags body of :func:`metric_bodies`/:func:`tag_bodies`, decoded."""
        decoded = json.loads(body)
        rows = [(m["key"], float(m["value"]), m["timestamp"], m["step"])
                for m in decoded.get("metrics", ())]  # float() reads "NaN", "Infinity"
        tags = {t["key"]: t["value"] for t in decoded.get("tags", ())}
        self._call(lambda: self._store.log_batch(run_id, metrics=rows, tags=tags or None))

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self._call(lambda: self._store.log_batch(run_id, params=params))

    def post_inputs(self, run_id: str, body: bytes) -> None:
        """A log-inputs body of :func:`~autolog.stores.mlflow_rest.input_body`, decoded."""
        inputs = inputs_from_body(body)
        self._call(lambda: self._store.log_inputs(run_id, inputs))

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        self._call(lambda: self._store.update_run(run_id, status, end_time))

    def close(self) -> None:
        self._store.close()


def destination(uri: str) -> MlflowRestClient | EmbeddedDestination:
    """Where a spool recorded for ``uri`` is sent."""
    return EmbeddedDestination(uri) if is_sql_uri(uri) else MlflowRestClient(uri)


def _release(spool: SpoolFile, outcome: SpoolOutcome) -> None:
    """Count what is left, close, and remove the file if nothing is."""
    try:
        outcome.left = spool.backlog()
    except sqlite3.Error as exc:
        outcome.problem = outcome.problem or f"damaged ({type(exc).__name__}: {exc})"
    try:
        spool.close(remove=outcome.problem is None and outcome.left.empty)
    except (sqlite3.Error, OSError) as exc:
        outcome.problem = outcome.problem or f"could not close ({type(exc).__name__}: {exc})"
