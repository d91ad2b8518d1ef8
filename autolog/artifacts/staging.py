"""The staging area: logged bytes, secured on local disk under their sha256 before the
logging call returns, and kept once per content.

Layout (``$AUTOLOG_STAGING_DIR``, default ``<spool dir>/artifacts``, so that
``AUTOLOG_SPOOL_DIR`` moves everything autolog keeps for later together)::

    objects/ab/ab12…   one read-only file per content (its name is its sha256)
    refs/<journal>/<id> a hard link to an object for each upload still to do
    tmp/                files being copied in

A file is *copied* in, never hard-linked from the user's path: a file the user rewrites
in place (``savefig("loss.png")`` every epoch, a checkpoint saved to the same name) keeps
its inode, so a link would change what was logged. The caller's thread only copies (in
the kernel); the uploader's thread hashes the copy, 1 MiB at a time, and merges it with
identical content already staged (:meth:`Staging.hashed`): memory stays flat whatever the
size, and the caller waits about as long as MLflow's own local copy takes.

Reference counting is the file system's own: an object's link count is the number of
names it has (its ``objects/`` name, one ref per pending upload, and one per copy in a
local artifact root, which are hard links too). :meth:`Staging.release` drops a ref and
deletes the object once nothing but its own name is left. Adding a ref and deleting an
object happen under one ``flock``, so a process never deletes an object another has just
found and is about to use. Refs of a process killed by SIGKILL stay, and keep their
objects, until ``autolog sync`` sends its uploads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autolog.stores.local_files import default_spool_dir

STAGING_DIR_ENV = "AUTOLOG_STAGING_DIR"
BLOCK = 1 << 20


def default_staging_dir() -> Path:
    configured = os.environ.get(STAGING_DIR_ENV)
    return Path(configured) if configured else default_spool_dir() / "artifacts"


def file_sha256(path: Path, progress: Callable[[int], object] | None = None) -> str:
    """The sha256 of a file, read 1 MiB at a time (hashlib lets other threads run);
    ``progress`` is told of each block (a long hash is progress, for an exit that waits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while block := reader.read(BLOCK):
            digest.update(block)
            if progress is not None:
                progress(0)
    return digest.hexdigest()


@dataclass(frozen=True)
class Staged:
    """Bytes secured in the staging area: the ref (a hard link to the object) that an
    upload reads from, their sha256 and their size."""

    ref: Path
    sha256: str  # "" for a file copied in and not hashed yet (see Staging.hashed)
    size: int


class Staging:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_staging_dir()
        self.objects = self.root / "objects"
        self.refs = self.root / "refs"
        self.tmp = self.root / "tmp"
        self._sent: sqlite3.Connection | None = None
        self._sent_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Staging({str(self.root)!r})"

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "objects.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # unlocked before the close: a child forked meanwhile shares the lock, which a
            # close alone would leave held until the child exits
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _prepare(self, owner: str) -> Path:
        for folder in (self.objects, self.tmp, self.refs / owner):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.refs / owner / secrets.token_hex(8)

    def secure_file(self, source: Path, owner: str) -> Staged:
        """Copy ``source`` in as a new ref of ``owner`` (a journal's name), not hashed yet:
        the kernel copies it (``shutil.copyfile``, no pass through Python), and the
        hashing, which costs more than the copy, is left to the uploader's thread
        (:meth:`hashed`). Raises the ``OSError`` of a file that cannot be read, or of a
        staging area that cannot be written (a full disk)."""
        ref = self._prepare(owner)
        try:
            shutil.copyfile(source, ref)
            os.chmod(ref, 0o444)  # an object, and every name of it, is read-only
            return Staged(ref, "", ref.stat().st_size)
        except BaseException:
            ref.unlink(missing_ok=True)
            raise

    # -- what was sent where (for destinations that keep no checksum) -----------------------

    def _sent_db(self) -> sqlite3.Connection:
        if self._sent is None:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(str(self.root / "sent.db"), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS sent (location TEXT PRIMARY KEY, "
                         "sha256 TEXT NOT NULL, size INTEGER NOT NULL)")
            self._sent = conn
        return self._sent

    def sent_before(self, location: str) -> tuple[str, int] | None:
        """The sha256 and size of what this machine last uploaded to ``location`` (an
        artifact's full URI), or None."""
        with self._sent_lock:
            row = self._sent_db().execute("SELECT sha256, size FROM sent WHERE location = ?",
                                          (location,)).fetchone()
        return (row[0], int(row[1])) if row else None

    def record_sent(self, location: str, sha256: str, size: int) -> None:
        with self._sent_lock:
            self._sent_db().execute("INSERT OR REPLACE INTO sent VALUES (?, ?, ?)",
                                    (location, sha256, size))

    def hashed(self, staged: Staged, sha256: str = "",
               progress: Callable[[int], object] | None = None) -> Staged:
        """``staged`` with its sha256, its ref made a name of the object of its content: a
        ref :meth:`secure_file` made is hashed now (unless ``sha256`` says what it is),
        and when an object with the same content exists the ref becomes another name of
        it (its own copy is freed), else it becomes the object. Refs that are already
        objects' names come back as they are."""
        if staged.sha256:
            return staged
        sha256 = sha256 or file_sha256(staged.ref, progress)
        target = self.object_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            if target.exists():
                merged = staged.ref.with_name(staged.ref.name + ".merged")
                os.link(target, merged)
                os.replace(merged, staged.ref)
            else:
                os.link(staged.ref, target)
        return Staged(staged.ref, sha256, staged.size)

    def partial_path(self) -> Path:
        """A new name in ``tmp/`` for a file being written in (a download, say)."""
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.tmp / f"{os.getpid()}-{secrets.token_hex(6)}"

    def adopt_file(self, partial: Path, owner: str) -> Staged:
        """Hash ``partial`` (a file in ``tmp/`` this process wrote) and make it an object,
        taking a ref on it for ``owner``; ``partial`` is gone afterwards."""
        ref = self._prepare(owner)
        digest = hashlib.sha256()
        size = 0
        try:
            with open(partial, "rb") as reader:
                while block := reader.read(BLOCK):
                    digest.update(block)
                    size += len(block)
            return self._adopt(partial, digest.hexdigest(), size, ref)
        finally:
            partial.unlink(missing_ok=True)

    def secure_bytes(self, data: bytes, owner: str) -> Staged:
        """As :meth:`secure_file`, for bytes made in memory (a text, a dict, a figure)."""
        ref = self._prepare(owner)
        partial = self.partial_path()
        try:
            with open(partial, "xb") as writer:
                writer.write(data)
            return self._adopt(partial, hashlib.sha256(data).hexdigest(), len(data), ref)
        finally:
            partial.unlink(missing_ok=True)

    def _adopt(self, partial: Path, sha256: str, size: int, ref: Path) -> Staged:
        """Make ``partial`` the object of its content (or drop it: the object exists),
        then link ``ref`` to the object, in one critical section."""
        target = self.object_path(sha256)
        target.parent.mkdir(exist_ok=True, mode=0o700)
        with self._locked():
            if not target.exists():
                os.chmod(partial, 0o444)  # an object, and every link to it, is read-only
                os.replace(partial, target)
            os.link(target, ref)
        return Staged(ref, sha256, size)

    def release(self, ref: Path, sha256: str) -> None:
        """Drop ``ref`` (its upload is done, or given up); delete the object when no other
        name is left on it (no other upload, no local artifact root holds it). A ref not
        hashed yet (``sha256`` "") is its own file, gone with its name."""
        ref.unlink(missing_ok=True)
        if sha256:
            self.collect(sha256)

    def collect(self, sha256: str) -> None:
        """Delete the object of ``sha256`` if nothing but its own name links to it."""
        target = self.object_path(sha256)
        with self._locked():
            try:
                if target.stat().st_nlink == 1:
                    target.unlink()
            except FileNotFoundError:
                pass

    def drop_owner(self, owner: str) -> None:
        """Remove the refs folder of ``owner`` (its journal is done and gone)."""
        shutil.rmtree(self.refs / owner, ignore_errors=True)
