"""``autolog sync`` for artifacts: the uploads that processes left in their journals (a
process killed by SIGKILL, one that exited while a server was down) are sent from the
staged objects, and the staging area is swept.

A journal is taken only when no live process holds its lock. A run that was started
offline is found on its server by the tag its spool created it with
(``autolog.local_run_id``); ``autolog sync`` sends spools first, so it exists by then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autolog.artifacts.journal import Journal, Upload, journal_files
from autolog.artifacts.staging import Staging
from autolog.artifacts.uploader import Outcome, UploadRunner, human_size, with_credentials
from autolog.stores.base import StoreError
from autolog.stores.local_files import lock_file
from autolog.stores.spool.sender import LOCAL_RUN_ID_TAG
from autolog.stores.spool.spool_file import OFFLINE_RUN_PREFIX

ProgressFactory = Callable[[int, str], "Callable[[int], None] | None"]  # (bytes, name)


@dataclass
class JournalOutcome:
    path: Path
    held: bool = False  # a live process holds it: not touched
    outcome: Outcome = field(default_factory=Outcome)

    @property
    def complete(self) -> bool:
        return self.held or (self.outcome.left == 0 and self.outcome.refused == 0)

    def line(self) -> str:
        if self.held:
            return f"{self.path.name}: skipped, a running process owns these uploads"
        done = self.outcome
        text = f"{self.path.name}: uploaded {done.sent} artifact(s)"
        if not self.complete:
            text += (f"; {done.left + done.refused} left ({human_size(done.left_bytes)}), kept for the "
                     f"next autolog sync ({done.reason or 'refused by the destination'})")
        return text


def _offline_resolver() -> Callable[[Upload], str | None]:
    """Finds the artifact URI of a run started offline, on its server."""
    clients: dict[str, object] = {}

    def resolve(upload: Upload) -> str | None:
        if not upload.run_id.startswith(OFFLINE_RUN_PREFIX):
            return None
        from autolog.stores.mlflow_rest import MlflowRestClient

        client = clients.get(upload.tracking_uri)
        if client is None:
            client = clients[upload.tracking_uri] = MlflowRestClient(with_credentials(upload.tracking_uri))
        try:
            ids = [experiment.experiment_id for experiment in client.list_experiments()]
            found = client.find_run_by_tag(ids, LOCAL_RUN_ID_TAG, upload.run_id) if ids else None
        except StoreError:
            return None
        return found.artifact_uri if found is not None else None

    return resolve


def send_journals(staging: Staging, progress: ProgressFactory | None = None) -> list[JournalOutcome]:
    """Send the uploads of every journal no live process holds; sweep the staging area."""
    outcomes = []
    resolver = _offline_resolver()
    for path in journal_files(staging.root / "journals"):
        journal = Journal.claim(path)
        if journal is None:
            outcomes.append(JournalOutcome(path, held=True))
            continue
        runner = UploadRunner(journal, staging, resolver)
        uploads = journal.pending()
        if progress is not None and uploads:
            runner.progress = progress(sum(upload.size for upload in uploads), path.name)
        try:
            result = JournalOutcome(path, outcome=runner.run_pass())
        finally:
            runner.close()
        journal.close(remove=result.complete)
        if result.complete:
            staging.drop_owner(journal.name)
        if uploads:
            outcomes.append(result)
    sweep(staging)
    return outcomes


def sweep(staging: Staging) -> None:
    """Delete what no one needs: objects nothing links to any more (their uploads are done
    and no local artifact root holds them), refs of journals that are gone, and partial
    copies of processes that died while copying."""
    folder = staging.root / "journals"
    journals = {path.stem for path in journal_files(folder)}
    if staging.refs.is_dir():
        for owner in staging.refs.iterdir():
            if owner.name in journals:
                continue
            lock = folder / f"{owner.name}.lock"
            fd = lock_file(lock) if folder.is_dir() else None
            if fd is None:  # a live process (a journal being made, a copy) holds its refs
                continue
            try:
                if not (folder / f"{owner.name}.db").exists():
                    staging.drop_owner(owner.name)
            finally:
                os.close(fd)
                lock.unlink(missing_ok=True)
    if staging.tmp.is_dir():
        for partial in staging.tmp.iterdir():
            pid = partial.name.partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                partial.unlink(missing_ok=True)
    if staging.objects.is_dir():
        for folder in staging.objects.iterdir():
            for item in folder.iterdir():
                staging.collect(item.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
