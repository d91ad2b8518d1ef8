"""The uploader: one background thread per process that sends the journal's uploads.

For each upload, oldest first: find the run's artifact URI (known when the run was
created, except for a run started while its server was down: then once the server has
the run), ask the destination whether it already holds these bytes (then nothing is
sent), else stream the staged file up and verify it; then the journal row goes, and the
staged ref with it.

- A destination that is down (:class:`DestinationUnavailableError`, a failed
  verification too) is tried again after 1 s, 2 s, 4 s … up to 30 s; ``flush()`` and the
  exit wait kick it at once.
- A destination that refuses for good (:class:`ArtifactRefusedError`: no permission, no
  bucket) gets one warning; the upload stays in the journal for ``autolog sync`` once the
  cause is fixed, and ``flush()`` returns False.
- At exit (:meth:`Uploader.close`) the process waits as long as uploads make progress,
  at most ``AUTOLOG_ARTIFACT_EXIT_TIMEOUT`` seconds in all (default 600) and
  ``AUTOLOG_EXIT_TIMEOUT`` (default 10) without progress; then one line says what is
  left and the ``autolog sync`` command that sends it. A tqdm bar shows the bytes on a
  terminal while it waits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autolog.artifacts.destinations import destination_for
from autolog.artifacts.destinations.base import (
    ArtifactRefusedError,
    Destination,
)
from autolog.artifacts.journal import Journal, Upload
from autolog.artifacts.staging import Staged, Staging, file_sha256
from autolog.config import env_float, settings, warn_from_thread
from autolog.stores.base import StoreError
from autolog.uris import redact_uri, with_configured_credentials

BACKOFF_MAX_S = 30.0
RESOLVE_PAUSE_S = 1.0  # how often to ask again for the artifact URI of a run still offline
KEPT_DESTINATIONS = 8  # destinations (and their connection pools) a runner keeps open
KICK_INTERVAL_S = 1.0  # while someone waits for the uploads, they are tried this often

# The artifact URI of an upload's run, or None while the run has none yet (offline).
Resolver = Callable[[Upload], "str | None"]


def with_credentials(uri: str) -> str:
    """``uri`` (as a journal records it) with the configured tracking URI's credentials."""
    return with_configured_credentials(uri, settings.resolved_tracking_uri())


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RunTarget:
    """A run as the uploader needs it: its store's URI, its id, its artifact URI ("" while
    the run is offline), and how the uploader thread finds that URI once the run's server
    has created it (None until then; it may ask the server, so never on this thread)."""

    tracking_uri: str
    run_id: str
    artifact_uri: str
    resolve: Callable[[], str | None]


@dataclass
class Outcome:
    """What one pass over uploads left: counts and bytes still owed, and why."""

    sent: int = 0
    left: int = 0
    left_bytes: int = 0
    refused: int = 0
    reason: str | None = None
    waiting_for_run: bool = False  # stopped at a run its server has not created yet


@contextlib.contextmanager
def _hashing_beside(path: Path) -> Iterator[Callable[[], str]]:
    """Hash ``path`` on a thread of its own while the block runs (hashlib and the socket
    both let other threads run); yields a function that gives the sha256 once the block is
    done. Where no thread can start (an interpreter that is exiting), it hashes after."""
    found: list[str] = []
    hasher = threading.Thread(target=lambda: found.append(file_sha256(path)),
                              name="autolog-hash", daemon=True)
    try:
        hasher.start()
    except RuntimeError:
        hasher = None
    try:
        yield lambda: found[0]
    finally:
        if hasher is not None:
            hasher.join()
    if not found:
        found.append(file_sha256(path))


def already_there(destination: Destination, artifact_path: str, sha256: str, size: int,
                  sent_before: tuple[str, int] | None) -> bool:
    """Whether ``destination`` holds these bytes at ``artifact_path``, so that they need not
    be sent. A destination that keeps a checksum (S3's metadata, a local file it can hash)
    says so itself; one that keeps only sizes (the proxy) is trusted only for what this
    machine sent there (``sent_before``): a file of the same size is not the same file."""
    if not destination.checksum_first and sent_before != (sha256, size):
        return False
    return destination.stored(artifact_path, sha256, size)


def _close(destination: Destination) -> None:
    close = getattr(destination, "close", None)
    if close is not None:
        close()


class UploadRunner:
    """Sends the uploads of one journal; used by the thread and by ``autolog sync``."""

    def __init__(self, journal: Journal, staging: Staging, resolver: Resolver):
        self.journal = journal
        self.staging = staging
        self.resolver = resolver
        self._destinations: dict[str, Destination] = {}
        self.refused: dict[int, str] = {}  # upload id -> why (not tried again by this process)
        self.progress: Callable[[int], None] | None = None

    def destination(self, upload: Upload, artifact_uri: str) -> Destination:
        """The destination of ``artifact_uri``, kept for the uploads that follow (a few of
        them: each may hold a connection pool)."""
        destination = self._destinations.pop(artifact_uri, None)
        if destination is None:
            destination = destination_for(artifact_uri, with_credentials(upload.tracking_uri))
        self._destinations[artifact_uri] = destination  # the most recent last
        while len(self._destinations) > KEPT_DESTINATIONS:
            _close(self._destinations.pop(next(iter(self._destinations))))
        return destination

    def close(self) -> None:
        for destination in self._destinations.values():
            _close(destination)
        self._destinations.clear()

    def send(self, upload: Upload) -> bool:
        """Try one upload. True when it is done (sent and verified, or already there);
        False while its run has no artifact URI yet. Raises what the destination raised."""
        artifact_uri = upload.artifact_uri or self.resolver(upload)
        if not artifact_uri:
            return False
        if not upload.artifact_uri:
            self.journal.set_artifact_uri(upload.id, artifact_uri)
        destination = self.destination(upload, artifact_uri)
        location = f"{artifact_uri}/{upload.artifact_path}"
        sha256 = upload.sha256
        # What this machine sent there, for a destination that keeps no checksum of its own
        previous = None if destination.checksum_first else self.staging.sent_before(location)
        if not sha256 and (destination.checksum_first or (previous and previous[1] == upload.size)):
            # hashed here, off the caller's thread: the destination needs it first, or it
            # decides whether the bytes this machine sent there before are these
            staged = Staged(self._staged_copy(upload), "", upload.size)
            sha256 = self.staging.hashed(staged, progress=self.progress).sha256
            self.journal.set_sha256(upload.id, sha256)
        if sha256:
            if not already_there(destination, upload.artifact_path, sha256, upload.size, previous):
                destination.upload(self._staged_copy(upload), upload.artifact_path, sha256,
                                   upload.size, self.progress)
        else:  # hashed while it is sent: the upload does not wait for the hash
            with _hashing_beside(self._staged_copy(upload)) as digest:
                destination.upload(upload.ref, upload.artifact_path, "", upload.size, self.progress)
            sha256 = self.staging.hashed(Staged(upload.ref, "", upload.size), digest()).sha256
        if not destination.checksum_first:
            self.staging.record_sent(location, sha256, upload.size)
        if self.journal.done(upload.id):  # else the journal closed meanwhile: sync finishes it
            self.staging.release(upload.ref, sha256)
        return True

    @staticmethod
    def _staged_copy(upload: Upload) -> Path:
        if not upload.ref.exists():
            raise ArtifactRefusedError(f"the staged copy of {upload.artifact_path!r} ({upload.ref}) "
                                       "is gone; it cannot be uploaded")
        return upload.ref

    def run_pass(self, stop: Callable[[], bool] = lambda: False) -> Outcome:
        """Try every upload not refused yet, in order. After a destination that is down,
        the rest wait for the next pass (they most likely go there too); uploads of a run
        its server has not created yet wait, and the others go on."""
        outcome = Outcome()
        waiting_runs: set[str] = set()
        for upload in self.journal.pending():
            if upload.id in self.refused:
                outcome.refused += 1
                outcome.left_bytes += upload.size
                continue
            if stop() or (outcome.reason is not None and not outcome.waiting_for_run) \
                    or upload.run_id in waiting_runs:
                outcome.left += 1
                outcome.left_bytes += upload.size
                continue
            try:
                if self.send(upload):
                    outcome.sent += 1
                    continue
                waiting_runs.add(upload.run_id)
                outcome.reason = outcome.reason or f"run {upload.run_id} is not on its server yet"
                outcome.waiting_for_run = True
            except ArtifactRefusedError as exc:
                self.refused[upload.id] = str(exc)
                self.journal.note_failure(upload.id, str(exc))
                outcome.refused += 1
                outcome.left_bytes += upload.size
                continue
            except Exception as exc:  # down, full, or a defect: tried again on a later pass
                why = str(exc) if isinstance(exc, (StoreError, OSError)) else f"{type(exc).__name__}: {exc}"
                self.journal.note_failure(upload.id, why)
                outcome.reason = redact_uri(why)
                outcome.waiting_for_run = False
            outcome.left += 1
            outcome.left_bytes += upload.size
        return outcome


class Uploader:
    """This process's uploads: the staging area, the journal (made on first use) and the
    thread."""

    def __init__(self, staging: Staging | None = None):
        self.staging = staging if staging is not None else Staging()
        self.exit_timeout = env_float("AUTOLOG_EXIT_TIMEOUT", 10.0)
        self.total_exit_timeout = env_float("AUTOLOG_ARTIFACT_EXIT_TIMEOUT", 600.0)
        self._inherited: Journal | None = None
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._journal: Journal | None = None
        self._runner: UploadRunner | None = None
        self._runs: dict[str, Callable[[], str | None]] = {}  # run id -> its artifact URI, when known
        self._thread: threading.Thread | None = None
        self._setup = threading.Lock()  # one journal and one thread, whichever thread logs first
        self._kick = threading.Event()
        self._stopping = False
        self._changed = threading.Condition()  # notified after every attempt and every byte batch
        self._last: Outcome = Outcome()
        self._moved = 0  # bytes moved so far
        self._ticks = 0  # progress reports so far (a byte moved or a block hashed): the exit wait
        self._warned: set[int] = set()
        self._outage_warned = False

    def after_fork_in_child(self) -> None:
        """A forked child starts with no journal and no thread: the parent's uploads stay
        the parent's (the child lets go of the inherited lock on the parent's journal, so
        that ``autolog sync`` can take it once the parent is gone)."""
        if self._pid != os.getpid():
            if self._journal is not None:
                self._journal.release_after_fork()
                self._inherited = self._journal  # kept: closing its connection is the parent's
            self._reset()

    # -- the caller's side ---------------------------------------------------------------

    def owner(self) -> str:
        """The name staged refs of this process are filed under (its journal's)."""
        return self._open().name

    def _open(self) -> Journal:
        with self._setup:
            if self._journal is None:
                journal = Journal.create(self.staging.root / "journals")
                self._runner = UploadRunner(journal, self.staging, self._resolve)
                self._runner.progress = self._moved_bytes
                self._journal = journal
            return self._journal

    def submit(self, target: RunTarget, files: list[tuple[str, Staged]]) -> None:
        """Record the uploads of ``files`` (artifact path, staged bytes) to one run,
        committed to the journal when this returns, and wake the thread."""
        self._runs[target.run_id] = target.resolve
        self._open().add(target.tracking_uri, target.run_id, target.artifact_uri,
                         [(path, staged.ref, staged.sha256, staged.size) for path, staged in files])
        self._start()

    def _resolve(self, upload: Upload) -> str | None:
        known = self._runs.get(upload.run_id)
        return known() if known is not None else None

    def _moved_bytes(self, count: int) -> None:
        """Progress: ``count`` bytes sent (0: a block hashed, which is progress too)."""
        self._moved += count
        self._ticks += 1
        with self._changed:
            self._changed.notify_all()

    # -- the thread ------------------------------------------------------------------------

    def _start(self) -> None:
        self._kick.set()
        with self._setup:
            if self._thread is not None and self._thread.is_alive():
                return
            # Loaded here, on the caller's thread: the exit wait runs in an atexit handler,
            # after threading's own shutdown, when this import raises "can't register atexit
            # after shutdown", and a destination's library (s3transfer) imports it.
            import concurrent.futures.thread  # noqa: F401
            self._thread = threading.Thread(target=self._loop, name="autolog-uploader", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        pause = 0.0
        while not self._stopping:
            self._kick.wait(pause if pause else None)
            self._kick.clear()
            if self._stopping:
                break
            runner = self._runner
            assert runner is not None
            try:
                outcome = runner.run_pass(lambda: self._stopping)
            except Exception as exc:  # a defect of autolog's own: said, and tried again later
                outcome = Outcome(left=1, reason=f"{type(exc).__name__}: {exc}")
                warn_from_thread(f"artifact upload failed: {outcome.reason}")
            self._report(runner, outcome)
            if outcome.left:
                pause = (RESOLVE_PAUSE_S if outcome.waiting_for_run
                         else min(max(pause * 2, 1.0), BACKOFF_MAX_S))
            else:
                pause = 0.0

    def _report(self, runner: UploadRunner, outcome: Outcome) -> None:
        for upload_id, why in runner.refused.items():
            if upload_id not in self._warned:
                self._warned.add(upload_id)
                warn_from_thread(f"an artifact upload was refused: {why}; it is kept for "
                                 f"`autolog sync` once that is fixed")
        if outcome.left and outcome.reason and not outcome.waiting_for_run:
            if not self._outage_warned:
                self._outage_warned = True
                warn_from_thread(f"artifact uploads wait: {outcome.reason}; they are retried "
                                 "in the background")
        elif not outcome.left:
            self._outage_warned = False
        with self._changed:
            self._last = outcome
            self._changed.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def pending(self) -> int:
        journal = self._journal
        if journal is None:
            return 0
        refused = self._runner.refused if self._runner is not None else {}
        return sum(1 for upload in journal.pending() if upload.id not in refused)

    def wait(self, timeout: float | None, idle_timeout: float | None = None,
             run_id: str | None = None) -> bool:
        """Wait until every upload (of ``run_id``, or all) is done: True; False at
        ``timeout`` seconds, after ``idle_timeout`` seconds without progress (no byte
        moved, no upload finished), or once all that is left was refused."""
        journal = self._journal
        if journal is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        last_progress, last_state = time.monotonic(), None
        last_kick = 0.0
        while True:
            if time.monotonic() - last_kick >= KICK_INTERVAL_S:  # a waiter does not wait out
                self._kick.set()  # the thread's backoff: a server back up is used at once
                last_kick = time.monotonic()
            uploads = [u for u in journal.pending() if run_id is None or u.run_id == run_id]
            refused = self._runner.refused if self._runner is not None else {}
            if not uploads:
                return True
            if all(upload.id in refused for upload in uploads):
                return False
            now = time.monotonic()
            state = (self._ticks, len(uploads))
            if state != last_state:
                last_progress, last_state = now, state
            if deadline is not None and now >= deadline:
                return False
            if idle_timeout is not None and now - last_progress >= idle_timeout:
                return False
            with self._changed:
                self._changed.wait(0.2)

    def describe_left(self) -> str | None:
        """One line on the uploads still owed, and how they are sent; None when none are."""
        journal = self._journal
        if journal is None:
            return None
        uploads = journal.pending()
        if not uploads:
            return None
        size = human_size(sum(upload.size for upload in uploads))
        last = uploads[-1].error or self._last.reason
        why = f" ({redact_uri(last)})" if last else ""
        return (f"{len(uploads)} artifact upload(s), {size}, not sent yet{why}; they are kept in "
                f"{self.staging.root} and sent by: autolog sync")

    def close(self) -> str | None:
        """Wait for the uploads (see the module doc), stop the thread, and return the line
        to print about what is left (None when all was sent)."""
        if self._journal is None or self._pid != os.getpid():
            return None
        if self.pending():
            with self._exit_bar():
                self.wait(self.total_exit_timeout, self.exit_timeout)
        self._stopping = True
        self._kick.set()
        line = self.describe_left()
        if self._runner is not None:
            self._runner.close()
        journal, self._journal = self._journal, None
        journal.close(remove=line is None)
        if line is None:
            self.staging.drop_owner(journal.name)
        return line

    @contextlib.contextmanager
    def _exit_bar(self) -> Iterator[None]:
        """A tqdm bar of the bytes left while the exit waits, on a terminal only."""
        runner = self._runner
        if runner is None or self._journal is None or not sys.stderr.isatty():
            yield
            return
        from tqdm import tqdm

        total = sum(upload.size for upload in self._journal.pending())
        with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False,
                  desc="autolog: uploading artifacts") as bar:
            def progress(count: int) -> None:
                self._moved_bytes(count)
                bar.update(min(count, bar.total - bar.n))

            runner.progress = progress
            try:
                yield
            finally:
                runner.progress = self._moved_bytes


_uploader: Uploader | None = None
_uploader_lock = threading.Lock()


def get_uploader() -> Uploader:
    global _uploader
    with _uploader_lock:
        if _uploader is None:
            _uploader = Uploader()
        return _uploader


def existing_uploader() -> Uploader | None:
    return _uploader


def reset_uploader() -> None:
    """Forget this process's uploader (tests: a new staging directory per test)."""
    global _uploader
    with _uploader_lock:
        _uploader = None
