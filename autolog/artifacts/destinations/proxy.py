"""The tracking server's artifact proxy: ``mlflow-artifacts:`` URIs, over REST with ``requests``.

URLs are formed as MLflow's ``MlflowArtifactsRepository`` forms them, so that autolog and
MLflow's client read and write the same files: ``mlflow-artifacts:/<path>`` is relative to
the tracking server (``<tracking URI>/api/2.0/mlflow-artifacts/artifacts/<path>``),
``mlflow-artifacts://host:port/<path>`` names its own host (with the tracking URI's scheme
and path prefix), and an ``http(s)://…/mlflow-artifacts/artifacts/…`` URI is used as is.
Authentication and TLS are the tracking client's (:func:`~autolog.stores.mlflow_rest.authenticate`).

An upload is one streamed ``PUT`` of the staged file with its ``Content-Length``: blocks of
1 MiB are read from disk as the socket takes them, so memory stays flat whatever the size.
Only a connection that could not be opened is retried here (nothing was sent yet); a body
cut half-way is not re-sent by urllib3, the uploader thread uploads the whole file again
later on :class:`DestinationUnavailableError`. The proxy reports sizes, not checksums: an
upload is verified by listing its folder and comparing the size.

Timeouts: opening a connection waits ``CONNECT_TIMEOUT_S``; the answer, and each block of
the body the socket cannot take at once (a server slow to write its disk), wait
``AUTOLOG_HTTP_TIMEOUT`` seconds (default 60) each, never the whole transfer.
"""

from __future__ import annotations

import io
import os
import posixpath
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Retry

from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    Progress,
    VerificationError,
)
from autolog.artifacts.paths import check_artifact_path, join
from autolog.config import env_float
from autolog.stores.mlflow_rest import (
    AUTH_STATUSES,
    CREDENTIAL_VARIABLES,
    RETRY_STATUSES,
    authenticate,
    misconfiguration,
)
from autolog.uris import redact_uri, split_credentials

ARTIFACTS_SERVICE = "/api/2.0/mlflow-artifacts/artifacts"
_SERVICE_TAIL = "/mlflow-artifacts/artifacts"  # where MLflow splits an http(s) artifact URI
BLOCK = 1 << 20
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # AUTOLOG_HTTP_TIMEOUT overrides
RETRIES = 2  # connection errors (any request); read errors and 408/429/5xx answers (GET only)
BACKOFF_FACTOR_S = 0.5  # a retry at once, then after 1 s


def read_timeout() -> float:
    """Seconds to wait for an answer, or for the socket to take the next block of a body."""
    return env_float("AUTOLOG_HTTP_TIMEOUT", READ_TIMEOUT_S)


def service_location(artifact_uri: str, tracking_uri: str) -> tuple[str, str]:
    """The artifact service's URL (``…/api/2.0/mlflow-artifacts/artifacts``) and the run's
    root path within it, for an artifact URI without credentials, as MLflow resolves it."""
    parts = urlsplit(artifact_uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        url, found, root = artifact_uri.partition(_SERVICE_TAIL)
        if not found:
            raise ArtifactRefusedError(
                f"artifact URI {artifact_uri!r} is not an MLflow artifact proxy's "
                f"(expected http(s)://host:port{ARTIFACTS_SERVICE}/<path>)")
        return url.rstrip("/") + _SERVICE_TAIL, root.strip("/")
    tracking = urlsplit(tracking_uri)
    if tracking.scheme not in ("http", "https"):
        raise ArtifactRefusedError(
            f"the run's artifacts are on a tracking server ({artifact_uri}), but the tracking URI "
            f"is {redact_uri(tracking_uri)!r}: set it to that server, http(s)://host:port")
    if parts.hostname and parts.hostname.replace(".", "").isdigit() and not parts.port:
        raise ArtifactRefusedError(f"artifact URI {artifact_uri!r} names a port but no host")
    root = parts.path.strip("/")
    if ("/" + root).startswith(ARTIFACTS_SERVICE):  # MLflow's own form of the service root
        root = root[len(ARTIFACTS_SERVICE):].strip("/")
    base = f"{tracking.scheme}://{parts.netloc or tracking.netloc}{tracking.path.rstrip('/')}"
    return base + ARTIFACTS_SERVICE, root


# -- the transport ------------------------------------------------------------------------


class _BodyTimeoutMixin:
    """urllib3 sends a request body under the *connect* timeout (the socket's timeout until
    the answer is awaited): a server that stops reading for a few seconds while it writes
    a 2 GB file to disk would fail the upload. The connection is opened under the connect
    timeout, then the body is sent under the read timeout."""

    def request(self, *args, **kwargs):
        if self.sock is None:
            self.connect()
        self.timeout = read_timeout()
        return super().request(*args, **kwargs)


class _HTTPConnection(_BodyTimeoutMixin, HTTPConnection):
    pass


class _HTTPSConnection(_BodyTimeoutMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with 1 MiB blocks (urllib3 reads a body 16 KiB at a time) and
    connections that send a body under the read timeout (HTTP proxies included)."""

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs) -> None:
        super().init_poolmanager(connections, maxsize, block, blocksize=BLOCK, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, blocksize=BLOCK, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


class _ProgressReader(io.FileIO):
    """The staged file, read as the socket takes it, each block reported to ``progress``.
    A raw file (no buffer of its own); requests takes its ``Content-Length`` from fstat."""

    def __init__(self, path: Path, progress: Progress | None):
        super().__init__(path, "rb")
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        block = super().read(size)
        if block and self._progress is not None:
            self._progress(len(block))
        return block


def _session() -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=RETRIES, connect=RETRIES, read=RETRIES, status=RETRIES, other=0,
        allowed_methods=frozenset({"GET"}),  # a PUT's body is never sent twice by urllib3
        status_forcelist=RETRY_STATUSES,
        backoff_factor=BACKOFF_FACTOR_S,
        raise_on_status=False,
        respect_retry_after_header=False,  # an hour's Retry-After is the uploader's to wait
    )
    adapter = _Adapter(pool_connections=2, pool_maxsize=4, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# -- the destination ----------------------------------------------------------------------


class ProxyDestination:
    """A run's artifacts behind ``mlflow server --serve-artifacts`` (MLflow's default)."""

    checksum_first = False

    def __init__(self, artifact_uri: str, tracking_uri: str):
        self._session = _session()
        clean_tracking, self._secrets = authenticate(self._session, tracking_uri)
        self.uri, user, password = split_credentials(artifact_uri)
        if user and password:  # an http(s) artifact URI with its own user:password@
            self._session.auth = (user, password)
            self._secrets.append(password)
        self._service, self._root = service_location(self.uri, clean_tracking)
        self._timeout = (min(CONNECT_TIMEOUT_S, read_timeout()), read_timeout())

    def __repr__(self) -> str:
        return f"ProxyDestination({self.uri!r})"

    def close(self) -> None:
        self._session.close()

    def _url(self, artifact_path: str) -> str:
        path = join(self._root, artifact_path)
        return f"{self._service}/{quote(path, safe='/')}" if path else self._service

    def stored(self, artifact_path: str, sha256: str, size: int) -> bool:
        """The size only (the proxy reports no checksum); a server that does not answer
        raises :class:`DestinationUnavailableError`, as an upload would."""
        return self._stored_size(artifact_path) == size

    def upload(self, source: Path, artifact_path: str, sha256: str, size: int,
               progress: Progress | None = None) -> None:
        url = self._url(artifact_path)
        with _ProgressReader(source, progress) as body:
            # requests sends Transfer-Encoding: chunked for a file it measures as empty.
            data = body if os.fstat(body.fileno()).st_size else b""
            with self._request("PUT", url, data=data,
                               headers={"Content-Type": "application/octet-stream"}):
                pass
        stored = self._stored_size(artifact_path)
        if stored != size:
            shown = "no such file" if stored is None else f"{stored} bytes"
            raise VerificationError(f"after the upload, {url} lists {shown}, not {size} bytes")

    def list(self, path: str | None = None) -> list[ArtifactEntry]:
        path = path or ""
        folder = join(self._root, path)
        with self._request("GET", self._service, params={"path": folder} if folder else None) as response:
            files = self._json(response).get("files") or []
        entries = []
        for item in files:
            try:
                name = check_artifact_path(item.get("path"))
            except (TypeError, ValueError) as exc:
                raise ArtifactError(f"{self._service} listed an unsafe path: {exc}") from None
            is_dir = bool(item.get("is_dir"))
            file_size = None if is_dir or item.get("file_size") is None else int(item["file_size"])
            entries.append(ArtifactEntry(join(path, name), is_dir, file_size))
        # Some artifact stores behind the proxy list a file as itself: a file has no entries.
        if (path and len(entries) == 1 and not entries[0].is_dir
                and entries[0].path == join(path, posixpath.basename(path))):
            return []
        return sorted(entries, key=lambda entry: entry.path)

    def download(self, artifact_path: str, target: Path, progress: Progress | None = None) -> None:
        url = self._url(artifact_path)
        # identity: the bytes counted are the bytes the Content-Length announces
        with self._request("GET", url, stream=True, headers={"Accept-Encoding": "identity"},
                           not_a_file=(400, 404)) as response:
            expected = response.headers.get("Content-Length")
            received = 0
            try:
                with open(target, "wb") as writer:
                    for block in response.iter_content(BLOCK):
                        writer.write(block)
                        received += len(block)
                        if progress is not None:
                            progress(len(block))
            except requests.RequestException as exc:
                target.unlink(missing_ok=True)
                raise DestinationUnavailableError(self._redact(
                    f"GET {url}: the download broke off after {received} bytes "
                    f"({type(exc).__name__}: {exc})")) from None
        if expected is not None and received != int(expected):
            target.unlink(missing_ok=True)
            raise DestinationUnavailableError(
                f"GET {url}: {received} bytes received, the server announced {expected}")

    # -- transport ----------------------------------------------------------------------

    def _stored_size(self, artifact_path: str) -> int | None:
        """The size the proxy lists for the file ``artifact_path``, None if it has none."""
        folder, name = posixpath.split(artifact_path)
        for entry in self.list(folder):
            if posixpath.basename(entry.path) == name and not entry.is_dir:
                return entry.file_size or 0  # the proxy's JSON leaves a size of 0 out
        return None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _request(self, method: str, url: str, *, not_a_file: tuple[int, ...] = (),
                 **kwargs) -> requests.Response:
        """One request, its answer checked: the response (to use in a ``with``), or the
        error that says whether to retry later. ``not_a_file``: the statuses that mean
        :class:`ArtifactNotFoundError` (a download: 404, and 400 for a folder)."""
        description = f"{method} {url}"
        try:
            response = self._session.request(method, url, timeout=self._timeout,
                                             verify=self._session.verify, **kwargs)
        except requests.RequestException as exc:
            check = misconfiguration(exc)
            if check is not None:
                raise ArtifactRefusedError(self._redact(
                    f"{description}: {check} ({type(exc).__name__}: {exc})")) from None
            raise DestinationUnavailableError(self._redact(
                f"{description}: no answer ({type(exc).__name__}: {exc})")) from None
        if response.status_code < 300:
            return response
        with response:
            message = _message(response)
        status = response.status_code
        text = self._redact(f"{description} failed with HTTP {status}: {message}")
        if status in RETRY_STATUSES or status >= 500:
            raise DestinationUnavailableError(text)
        if status in not_a_file:
            raise ArtifactNotFoundError(text)
        if status in AUTH_STATUSES:
            raise ArtifactRefusedError(
                f"{text} (the server refused the credentials or the permission: check "
                f"{CREDENTIAL_VARIABLES})")
        raise ArtifactRefusedError(text)

    def _json(self, response: requests.Response) -> dict:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ArtifactRefusedError(
                f"{response.url} is not an MLflow artifact proxy: it answered "
                f"{' '.join(response.text.split())[:200]!r}")
        return answer


def _message(response: requests.Response) -> str:
    """What an error answer says: MLflow's ``message``, FastAPI's ``detail``, or its text."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        for field in ("message", "detail"):
            if answer.get(field):
                code = answer.get("error_code")
                return f"{code}: {answer[field]}" if code else str(answer[field])
    return " ".join(response.text.split())[:300] or response.reason or ""
