"""An MLflow tracking server over its REST API 2.0, with ``requests``.

:class:`MlflowRestClient` is a synchronous :class:`~autolog.stores.base.Store`: every call
is one or more HTTP requests on a pooled ``requests.Session`` whose urllib3 ``Retry``
retries what MLflow's own client retries (408, 429, 500, 502, 503, 504, and connection
errors) with exponential backoff. Runs log through the durable spool in front of it
(:mod:`autolog.stores.spool`), so that the writer never waits on the network.

Every wait is bounded. One call (retries, backoff and ``Retry-After`` waits included) has
a total deadline, ``AUTOLOG_HTTP_TIMEOUT`` seconds (default 60): requests' own read timeout
is per socket read, so a server that accepts and never answers would cost it 4 × the
timeout, and one that trickles a byte a second would never end. The deadline is enforced
below requests: each connection arms a timer when it sends a request that shuts its
socket down at the deadline (a blocked read then ends at once), and the ``Retry`` allows no
retry, nor a wait before one, past it. A ``Retry-After`` is obeyed up to 30 s.

An answer that is not MLflow's (a proxy's HTML login page, ``{}`` where a run was due, an
HTML 404 page of some other web server) is :class:`NotMlflowServerError` naming the URI,
and 401/403 says to check the credentials. A host name that does not resolve and a TLS
failure (``https://`` to an ``http://`` server, a certificate that fails verification)
are :class:`MisconfiguredServerError`: what the user must fix, not an outage to wait out.
Connection refused, resets and timeouts are :class:`ServerUnreachableError`.

Authentication and TLS come from the variables MLflow users already set:
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (or ``user:password@`` in the
URI), ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``,
``MLFLOW_TRACKING_SERVER_CERT_PATH`` and ``MLFLOW_TRACKING_CLIENT_CERT_PATH``. Credentials
are never part of :attr:`MlflowRestClient.uri`, a repr, or an exception message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, MaxRetryError, ResponseError
from urllib3.util import Retry

from autolog.config import env_flag, env_float
from autolog.stores.base import (
    DATASET_CONTEXT_TAG,
    DatasetInput,
    Experiment,
    InvalidSearchError,
    Metric,
    MetricRow,
    ParamRefusedError,
    RunInfo,
    RunNotFoundError,
    RunRecord,
    StoreError,
)
from autolog.uris import redact_uri, split_credentials
from autolog.validation import (
    MAX_BATCH_REQUEST_BYTES,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

API_PREFIX = "/api/2.0/mlflow/"
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)  # what MLflow's own client retries
AUTH_STATUSES = (401, 403)
RETRIES = 3
BACKOFF_FACTOR_S = 0.5  # urllib3 retries at once, then after 1 s, then 2 s
BACKOFF_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 60.0  # one call in all, retries included; AUTOLOG_HTTP_TIMEOUT overrides
PROBE_CONNECT_TIMEOUT_S = 2.0  # starting a run: how long before it starts offline
PROBE_READ_TIMEOUT_S = 10.0
RETRY_AFTER_MAX_S = 30.0
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, "
                        "MLFLOW_TRACKING_TOKEN, or user:password@ in the URI")
PAGE_SIZE = 1000
HISTORY_PAGE_SIZE = 25_000
# Room for the {"run_id": "...", } the sender adds to a stored body.
BODY_LIMIT = MAX_BATCH_REQUEST_BYTES - 1024

RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
PARAM_CHANGE_REFUSED = "Changing param values is not allowed"


class MlflowRestError(StoreError):
    """The server answered with an error; carries MLflow's ``error_code`` and ``message``."""

    def __init__(self, description: str, status: int, error_code: str, message: str):
        self.status = status
        self.error_code = error_code
        self.message = message
        text = f"{description} failed with HTTP {status} {error_code}: {message}"
        if status in AUTH_STATUSES:
            text += (f" (the server refused the credentials: check your credentials, "
                     f"{CREDENTIAL_VARIABLES})")
        super().__init__(text)

    @property
    def retry_later(self) -> bool:
        """Worth sending again later: the server was unavailable or overloaded, or refused
        the credentials (which the user can fix before ``autolog sync``)."""
        return self.status in RETRY_STATUSES or self.status in AUTH_STATUSES


class RestRunNotFoundError(MlflowRestError, RunNotFoundError):
    """``RESOURCE_DOES_NOT_EXIST`` for a run."""


class RestParamRefusedError(MlflowRestError, ParamRefusedError):
    """``INVALID_PARAMETER_VALUE: Changing param values is not allowed``."""


class ServerUnreachableError(StoreError):
    """No answer from the server (connection refused, timeout, reset), after retries."""


class MisconfiguredServerError(StoreError):
    """The tracking URI cannot lead to an MLflow server as written (its host does not
    resolve, TLS fails, or what answers is not MLflow): an error to fix, not an outage."""


class NotMlflowServerError(MisconfiguredServerError):
    """The server answered with something that is not MLflow's JSON."""


# OpenSSL's reasons when what answers a TLS hello is not TLS (a plain http server); a TLS
# connection cut short (EOF, reset) is an outage and keeps its ServerUnreachableError.
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL",
                    "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}


def misconfiguration(exc: BaseException) -> str | None:
    """What to check when a failed request shows a misconfiguration rather than an outage:
    a host that does not exist (not a DNS server that does not answer now), or TLS."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (requests.exceptions.InvalidURL, LocationParseError)):
            return "the URI cannot be read (a port outside 1-65535?): check it"
        if isinstance(error, socket.gaierror) and error.errno in (
                socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return "its host name does not resolve: check the host in the tracking URI"
        if isinstance(error, ssl.SSLCertVerificationError):
            return ("TLS failed: the server's certificate fails verification; check "
                    "MLFLOW_TRACKING_SERVER_CERT_PATH (the CA that signed it), or set "
                    "MLFLOW_TRACKING_INSECURE_TLS=true to skip verification")
        if isinstance(error, ssl.SSLError) and error.reason in _NOT_TLS_REASONS:
            return ("TLS failed: the server does not speak TLS; check the scheme (http:// "
                    "rather than https://?)")
        pending.extend([error.__cause__, error.__context__, getattr(error, "reason", None),
                        *(arg for arg in error.args if isinstance(arg, BaseException))])
    return None


# -- the per-call deadline ---------------------------------------------------------------

_call = threading.local()  # .deadline (time.monotonic()) and .timers of this thread's call


def _remaining() -> float:
    """Seconds left to the current call of this thread (inf outside a call)."""
    deadline = getattr(_call, "deadline", None)
    return math.inf if deadline is None else deadline - time.monotonic()


class _DeadlineRetry(Retry):
    """urllib3's Retry, bounded: a ``Retry-After`` is obeyed up to ``RETRY_AFTER_MAX_S``,
    and neither a wait nor a retry goes past the call's deadline."""

    def get_retry_after(self, response) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else max(0.0, min(seconds, RETRY_AFTER_MAX_S, _remaining()))

    def get_backoff_time(self) -> float:
        return max(0.0, min(super().get_backoff_time(), _remaining()))

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if _remaining() <= 0:
            raise MaxRetryError(_pool, url, error or ResponseError("the call's deadline passed"))
        return retry


class _DeadlineConnectionMixin:
    """Arms a timer when a request is sent that shuts the socket down at the deadline of
    the call, so a read blocked on a silent or trickling server ends then; the call
    cancels its timers when it has the whole answer."""

    def request(self, *args, **kwargs):
        remaining = _remaining()
        if remaining != math.inf:
            timer = threading.Timer(max(remaining, 0.0), self._abort)
            timer.daemon = True
            try:
                timer.start()
            except RuntimeError:  # interpreter shutdown (Python 3.12+ starts no thread then):
                pass  # the exit drain still sends, each read bounded by the socket timeout
            else:
                _call.timers.append(timer)
        return super().request(*args, **kwargs)

    def _abort(self) -> None:
        sock = self.sock
        if sock is None:
            return
        # socket.socket's own shutdown for an SSLSocket too (SSLSocket.shutdown drops the
        # TLS state under the reading thread); a wrapper (pyOpenSSL) has only its own.
        shutdown = (socket.socket.shutdown if isinstance(sock, socket.socket)
                    else type(sock).shutdown)
        with contextlib.suppress(OSError):
            shutdown(sock, socket.SHUT_RDWR)


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections that keep the call's deadline (HTTP proxies
    included; SOCKS proxies use urllib3's own connections)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


def _json_value(value: float) -> float | str:
    """NaN and ±inf as MLflow's client writes them in JSON (protobuf's JSON mapping)."""
    if math.isfinite(value):
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _split_to_limit(items: list, encode) -> Iterator[tuple[int, bytes]]:
    """(count, body) for ``items``, halving any chunk whose body exceeds the size limit."""
    body = encode(items)
    if len(body) <= BODY_LIMIT or len(items) == 1:
        yield len(items), body
        return
    middle = len(items) // 2
    yield from _split_to_limit(items[:middle], encode)
    yield from _split_to_limit(items[middle:], encode)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def metric_bodies(rows: Sequence[MetricRow]) -> Iterator[tuple[int, bytes]]:
    """log-batch bodies (without ``run_id``) for metric rows, within the server's limits."""
    def encode(chunk: list) -> bytes:
        return _dumps({"metrics": [
            {"key": key, "value": _json_value(value), "timestamp": timestamp, "step": step}
            for key, value, timestamp, step in chunk
        ]})

    for chunk in _chunks(list(rows), MAX_METRICS_PER_BATCH):
        yield from _split_to_limit(chunk, encode)


def tag_bodies(tags: dict[str, str]) -> Iterator[tuple[int, bytes]]:
    def encode(chunk: list) -> bytes:
        return _dumps({"tags": [{"key": key, "value": value} for key, value in chunk]})

    for chunk in _chunks(list(tags.items()), MAX_PARAMS_TAGS_PER_BATCH):
        yield from _split_to_limit(chunk, encode)


_DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")


def input_body(inputs: Sequence[DatasetInput]) -> bytes:
    """A log-inputs body (without ``run_id``), as MLflow's client writes one: each input's
    dataset, and its context as the input tag ``mlflow.data.context``."""
    datasets = []
    for item in inputs:
        dataset = {name: getattr(item, name) for name in _DATASET_FIELDS
                   if getattr(item, name) is not None}
        tags = [] if item.context is None else [{"key": DATASET_CONTEXT_TAG, "value": item.context}]
        datasets.append({"tags": tags, "dataset": dataset})
    return _dumps({"datasets": datasets})


def inputs_from_body(body: bytes) -> list[DatasetInput]:
    """The inputs of an :func:`input_body` (raises ``KeyError``, ``TypeError`` or
    ``ValueError`` on a body that is not one)."""
    inputs = []
    for entry in json.loads(body)["datasets"]:
        tags = {tag["key"]: tag["value"] for tag in entry.get("tags", ())}
        inputs.append(DatasetInput(**{name: entry["dataset"].get(name) for name in _DATASET_FIELDS},
                                   context=tags.get(DATASET_CONTEXT_TAG)))
    return inputs


def with_run_id(run_id: str, body: bytes) -> bytes:
    """A stored log-batch body addressed to ``run_id``."""
    return b'{"run_id":' + _dumps(run_id) + b"," + body[1:]


def _tls_verify() -> bool | str:
    insecure = env_flag("MLFLOW_TRACKING_INSECURE_TLS")
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if insecure and cert_path:
        raise StoreError(
            "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set; "
            "set at most one of them"
        )
    return cert_path or not insecure


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


def authenticate(session: requests.Session, uri: str) -> tuple[str, list[str]]:
    """Set up ``session`` to talk to the MLflow server at ``uri`` as MLflow's own client
    would: basic auth or a bearer token, TLS verification, a client certificate (see the
    module doc). Returns the URI without credentials and the secrets that must never be
    shown (to redact from messages)."""
    clean, user, password = split_credentials(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or user
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or password
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:  # MLflow prefers basic auth when both are configured
        session.auth = (user, password)
    elif token:
        session.auth = _BearerAuth(token)
    session.verify = _tls_verify()
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        session.cert = client_cert
    session.headers["User-Agent"] = "autolog"
    return clean, [secret for secret in (password, token) if secret]


class MlflowRestClient:
    """The Store protocol over MLflow's REST API, one request (or a few) per call.

    ``retries=0`` makes a client that gives up on the first failure (used to decide at
    once whether a new run can be created online). ``read_timeout`` is the total deadline
    of one call (default ``AUTOLOG_HTTP_TIMEOUT``, else 60 s); see the module doc.
    """

    def __init__(
        self,
        uri: str,
        *,
        retries: int = RETRIES,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float | None = None,
    ):
        if not uri.startswith(("http://", "https://")):
            raise ValueError(f"not an MLflow server URI: {redact_uri(uri)!r} "
                             "(expected http(s)://host:port)")
        self._call_timeout = read_timeout or env_float("AUTOLOG_HTTP_TIMEOUT", CALL_TIMEOUT_S)
        # Each socket read may take the whole deadline; the deadline timer ends it sooner.
        self._timeout = (min(connect_timeout, self._call_timeout), self._call_timeout)
        session = requests.Session()
        retry = _DeadlineRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # POST too: every call we make is safe to repeat
            backoff_factor=BACKOFF_FACTOR_S,
            backoff_max=BACKOFF_MAX_S,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=8, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.uri, self._secrets = authenticate(session, uri)
        self._base = self.uri + API_PREFIX
        self._session = session

    def __repr__(self) -> str:
        return f"MlflowRestClient({self.uri!r})"

    def close(self) -> None:
        self._session.close()

    # -- transport ----------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def call(self, method: str, endpoint: str, *, query: dict | None = None,
             body: bytes | dict | None = None) -> dict:
        """One API call (with urllib3's retries); the decoded JSON answer."""
        data = body if isinstance(body, bytes) or body is None else _dumps(body)
        description = f"{method} {API_PREFIX}{endpoint} on {self.uri}"
        _call.deadline, _call.timers = time.monotonic() + self._call_timeout, []
        try:
            response = self._session.request(
                method, self._base + endpoint, params=query, data=data, timeout=self._timeout,
                headers={"Content-Type": "application/json"} if data is not None else None,
                # per request: else requests lets REQUESTS_CA_BUNDLE override the session's
                # MLFLOW_TRACKING_SERVER_CERT_PATH / MLFLOW_TRACKING_INSECURE_TLS
                verify=self._session.verify,
            )
        except requests.RequestException as exc:
            if _remaining() <= 0:
                raise ServerUnreachableError(self._redact(
                    f"{description}: no complete answer within {self._call_timeout:g} s "
                    f"(AUTOLOG_HTTP_TIMEOUT) ({type(exc).__name__}: {exc})")) from None
            check = misconfiguration(exc)
            if check is not None:
                raise MisconfiguredServerError(self._redact(
                    f"{self.uri} cannot be an MLflow tracking server as written: {check} "
                    f"({description}: {type(exc).__name__}: {exc})")) from None
            raise ServerUnreachableError(
                self._redact(f"{description}: no answer ({type(exc).__name__}: {exc})")
            ) from None
        finally:
            for timer in _call.timers:
                timer.cancel()
            _call.deadline, _call.timers = None, []
        if response.status_code != 200:
            raise self._error(endpoint, description, response)
        try:
            answer = response.json() if response.content else {}
        except ValueError:  # a proxy's login page, say
            answer = None
        if not isinstance(answer, dict):
            raise self._not_mlflow(description, response.text)
        return answer

    def _not_mlflow(self, description: str, text: str, status: int = 200) -> NotMlflowServerError:
        shown = " ".join(text.split())[:200]
        return NotMlflowServerError(self._redact(
            f"{self.uri} is not an MLflow tracking server (or not at this path): {description} "
            f"answered HTTP {status} with {shown!r}, not MLflow's JSON. Check the tracking URI; "
            "a proxy's login page means the credentials are missing"))

    @contextlib.contextmanager
    def _parsing(self, description: str, answer: dict) -> Iterator[None]:
        """Reading fields out of ``answer``: a missing or mistyped one means the server is
        not MLflow (a ``KeyError`` would say nothing to the user)."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._not_mlflow(description, json.dumps(answer)) from None

    def _error(self, endpoint: str, description: str,
               response: requests.Response) -> MlflowRestError | NotMlflowServerError:
        """The error an answer other than 200 means. One that is not MLflow's JSON error
        (an HTML 404 page, say) where MLflow would have sent one means another server
        answers at this URI; an unavailable, overloaded or refusing server keeps its
        status (a proxy's 502 page is an outage, not a misconfiguration)."""
        try:
            answer = response.json()
            error_code = str(answer.get("error_code", "UNKNOWN"))
            message = str(answer.get("message", ""))
        except (ValueError, AttributeError):
            answer = None
            error_code, message = "UNKNOWN", response.text[:500]
        if (response.status_code not in (*RETRY_STATUSES, *AUTH_STATUSES)
                and not isinstance(answer, dict)):
            return self._not_mlflow(description, response.text, response.status_code)
        message = self._redact(message)
        kind = MlflowRestError
        if error_code == RESOURCE_DOES_NOT_EXIST and endpoint.startswith(("runs/", "metrics/")):
            kind = RestRunNotFoundError
        elif error_code == INVALID_PARAMETER_VALUE and PARAM_CHANGE_REFUSED in message:
            kind = RestParamRefusedError
        return kind(self._redact(description), response.status_code, error_code, message)

    def _pages(self, method: str, endpoint: str, request: dict, field: str,
               limit: int | None = None) -> Iterator[dict]:
        """Every item of a paged list answer (``page_token``/``next_page_token``)."""
        token, seen = None, 0
        while True:
            page = dict(request, page_token=token) if token else request
            if method == "GET":
                answer = self.call("GET", endpoint, query=page)
            else:
                answer = self.call("POST", endpoint, body=page)
            for item in answer.get(field, []):
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = answer.get("next_page_token")
            if not token:
                return

    def ping(self) -> None:
        """One cheap request: returns when the server answers as MLflow does (an MLflow
        error about experiment 0 included); raises when it cannot take data now."""
        try:
            self.call("GET", "experiments/get", query={"experiment_id": "0"})
        except MlflowRestError as exc:
            if exc.retry_later:
                raise

    # -- experiments --------------------------------------------------------------------

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            answer = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
        except MlflowRestError as exc:
            if exc.error_code == RESOURCE_DOES_NOT_EXIST:
                return None
            raise
        with self._parsing("GET experiments/get-by-name", answer):
            experiment = answer["experiment"]
            deleted = experiment.get("lifecycle_stage") == "deleted"
            found = Experiment(str(experiment["experiment_id"]), str(experiment["name"]))
        if deleted:
            raise StoreError(
                f"experiment {name!r} on {self.uri} is deleted; restore it in MLflow or use "
                "another name"
            )
        return found

    def get_or_create_experiment(self, name: str) -> Experiment:
        found = self.get_experiment_by_name(name)
        if found is not None:
            return found
        try:
            answer = self.call("POST", "experiments/create", body={"name": name})
        except MlflowRestError as exc:
            if exc.error_code != RESOURCE_ALREADY_EXISTS:  # another process created it first
                raise
            return self.get_experiment_by_name(name)  # type: ignore[return-value]
        with self._parsing("POST experiments/create", answer):
            return Experiment(str(answer["experiment_id"]), name)

    def list_experiments(self) -> list[Experiment]:
        found = self._pages("POST", "experiments/search", {"max_results": PAGE_SIZE},
                            "experiments")
        with self._parsing("POST experiments/search", {}):
            experiments = [Experiment(str(e["experiment_id"]), e["name"]) for e in found]
        return sorted(experiments, key=lambda e: (len(e.experiment_id), e.experiment_id))

    # -- runs ---------------------------------------------------------------------------

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> RunInfo:
        answer = self.call("POST", "runs/create", body={
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_time,
            "tags": [{"key": key, "value": value} for key, value in tags.items()],
        })
        with self._parsing("POST runs/create", answer):
            return _run_info(answer["run"]["info"])

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        body: dict = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self.call("POST", "runs/update", body=body)

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricRow] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Params first and in their own requests (a refused param must not take metrics
        with it), then tags, then metrics, each split to the server's limits."""
        if params:
            self.log_params(run_id, params)
        for _, body in tag_bodies(tags or {}):
            self.post_batch(run_id, body)
        for _, body in metric_bodies(metrics):
            self.post_batch(run_id, body)

    def post_batch(self, run_id: str, body: bytes) -> None:
        """Send one log-batch body from :func:`metric_bodies` or :func:`tag_bodies`."""
        self.call("POST", "runs/log-batch", body=with_run_id(run_id, body))

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInput]) -> None:
        if inputs:
            self.post_inputs(run_id, input_body(inputs))

    def post_inputs(self, run_id: str, body: bytes) -> None:
        """Send one :func:`input_body` (``runs/log-inputs``; the server stores a dataset
        input it already has once, so sending it again is harmless)."""
        self.call("POST", "runs/log-inputs", body=with_run_id(run_id, body))

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params the server does not have yet; never send one it would refuse.

        The run's params are read first: values it already holds are skipped, and a key it
        holds with another value (logged by another process) raises
        :class:`ParamRefusedError` after the others were sent. The missing ones go one per
        ``runs/log-parameter`` request, not in a log-batch: processes of one job (DDP
        ranks) log the same params into one run at once, and a log-batch that loses that
        race is refused (the server inserts what it did not see when it read, and the
        database's unique key answers HTTP 400), while log-parameter, on that conflict,
        re-reads the key and accepts a value equal to the one stored. The price: a request
        and a server commit per new param (20 params: about 0.5 s of the sender thread's
        time against a SQLite-backed server on the 2-core test machine, where one
        log-batch took 26 ms).
        """
        stored = self.get_run(run_id).params
        refused = {key: value for key, value in params.items()
                   if key in stored and stored[key] != value}
        for key, value in params.items():
            if key in stored:
                continue
            try:
                self.call("POST", "runs/log-parameter",
                          body={"run_id": run_id, "key": key, "value": value})
            except RestParamRefusedError:  # another process logged another value meanwhile
                refused[key] = value
                stored = {**stored, **self.get_run(run_id).params}
        if refused:
            details = "; ".join(f"{key!r} is {stored.get(key)!r} on the server, refused {value!r}"
                                for key, value in refused.items())
            raise ParamRefusedError(
                f"{PARAM_CHANGE_REFUSED} (run {run_id} on {self.uri}): {details}")

    def get_run(self, run_id: str) -> RunRecord:
        answer = self.call("GET", "runs/get", query={"run_id": run_id})
        with self._parsing("GET runs/get", answer):
            return _run_record(answer["run"])

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return [Metric(*row) for page in self.iter_metric_history(run_id, key) for row in page]

    def iter_metric_history(self, run_id: str, key: str,
                            page: int = HISTORY_PAGE_SIZE) -> Iterator[list[MetricRow]]:
        """A key's points as ``(key, value, timestamp, step)`` rows, in lists of at most
        ``page``, read from the server page by page (``autolog sync`` streams them)."""
        request = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE_SIZE}
        rows: list[MetricRow] = []
        with self._parsing("GET metrics/get-history", {}):
            for m in self._pages("GET", "metrics/get-history", request, "metrics"):
                # float() reads the "NaN"/"Infinity" strings of protobuf's JSON mapping too
                rows.append((m["key"], float(m["value"]), int(m.get("timestamp", 0)),
                             int(m.get("step", 0))))
                if len(rows) == page:
                    yield rows
                    rows = []
        if rows:
            yield rows

    def search_runs(
        self, experiment_ids: Iterable[str], filter_string: str = "",
        order_by: Sequence[str] = (), max_results: int = 1000,
    ) -> list[RunRecord]:
        """The server's ``runs/search``, page by page up to ``max_results``; a filter or
        order the server refuses is :class:`InvalidSearchError` with its message."""
        ids = [str(i) for i in experiment_ids]
        if not ids:
            return []
        request: dict = {"experiment_ids": ids, "max_results": min(max_results, PAGE_SIZE)}
        if filter_string:
            request["filter"] = filter_string
        if order_by:
            request["order_by"] = list(order_by)
        found = self._pages("POST", "runs/search", request, "runs", limit=max_results)
        try:
            with self._parsing("POST runs/search", {}):
                return [_run_record(run) for run in found]
        except MlflowRestError as exc:
            if exc.error_code == INVALID_PARAMETER_VALUE:
                raise InvalidSearchError(exc.message) from None
            raise

    def find_run_by_tag(self, experiment_ids: Iterable[str], key: str, value: str) -> RunInfo | None:
        """The run carrying tag ``key=value`` in those experiments, if any."""
        quoted = value.replace("'", "\\'")
        found = self.search_runs(experiment_ids, f"tags.`{key}` = '{quoted}'", max_results=1)
        return found[0].info if found else None


def _int(value: object, default: int | None = None) -> int | None:
    return default if value is None or value == "" else int(value)  # type: ignore[arg-type]


def _run_info(info: dict) -> RunInfo:
    return RunInfo(
        run_id=info.get("run_id") or info["run_uuid"],
        experiment_id=str(info["experiment_id"]),
        run_name=info.get("run_name", ""),
        status=info.get("status", "RUNNING"),
        start_time=_int(info.get("start_time"), 0),  # type: ignore[arg-type]
        end_time=_int(info.get("end_time")),
        artifact_uri=info.get("artifact_uri", ""),
    )


def _pairs(items: list[dict] | None) -> dict[str, str]:
    return {item["key"]: item.get("value", "") for item in items or []}


def _run_record(run: dict) -> RunRecord:
    data = run.get("data", {})
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
    tags = _pairs(data.get("tags"))
    info = _run_info(run["info"])
    if not info.run_name and "mlflow.runName" in tags:
        info = dataclasses.replace(info, run_name=tags["mlflow.runName"])
    return RunRecord(info, _pairs(data.get("params")), tags, metrics)


def probe_client(uri: str) -> MlflowRestClient:
    """A client that asks once, quickly: whether a run can start online now, whether a
    server URI is configured right."""
    return MlflowRestClient(uri, retries=0, connect_timeout=PROBE_CONNECT_TIMEOUT_S,
                            read_timeout=PROBE_READ_TIMEOUT_S)
