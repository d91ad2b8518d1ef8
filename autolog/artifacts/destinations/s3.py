"""``s3://`` artifact URIs: straight from this process to object storage with boto3, the
client-to-store upload the seed FAQ recommends (the tracking server never carries the bytes).

Objects are addressed as MLflow's ``S3ArtifactRepository`` addresses them, so MLflow's client
finds what autolog put there and autolog finds what MLflow put there: the bucket and the key
prefix come from the URI, and the variables an MLflow user has set mean the same here
(``MLFLOW_S3_ENDPOINT_URL`` for MinIO and the like, ``MLFLOW_S3_IGNORE_TLS``,
``MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE``, ``MLFLOW_S3_EXPECTED_BUCKET_OWNER``,
``MLFLOW_S3_UPLOAD_EXTRA_ARGS``); boto3 itself reads the ``AWS_*`` variables, profiles and
instance roles.

Every object autolog uploads carries its sha256 in its metadata (``x-amz-meta-sha256``): an
upload is verified against it, and the same bytes logged again are recognised by one HEAD
request and not sent again.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    Progress,
    VerificationError,
)
from autolog.config import env_flag

MULTIPART_THRESHOLD = 64 << 20  # larger files go up in parts, retried part by part
PART_SIZE = 16 << 20  # s3transfer raises it for files over ~160 GB (S3 allows 10,000 parts)
MAX_CONCURRENCY = 4  # parts in flight: memory stays a few MiB whatever the file size

# Botocore's own retries stay short, so that an endpoint that is down fails the attempt in
# seconds; the uploader retries later, for as long as it takes.
RETRIES = {"max_attempts": 3, "mode": "standard"}
CONNECT_TIMEOUT_S = 5

# S3 error codes that mean "not now" rather than "never" (most come with a 5xx; these do not)
TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "InternalError", "BadDigest",
    "IncompleteBody", "XAmzContentSHA256Mismatch",
})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
HINTS = {
    "NoSuchBucket": "the bucket does not exist; create it, or point the experiment's artifact "
                    "location at one that does",
    "AccessDenied": "these AWS credentials may not use this bucket or prefix",
    "403": "these AWS credentials may not use this bucket or prefix",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (or the AWS profile in use)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (or the AWS profile in use)",
}

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def s3_client() -> Any:
    """The boto3 S3 client for the endpoint and credentials the environment names now.

    One client per distinct setting, kept for the life of the process: a client is
    thread-safe, so the uploader thread and the caller's thread share it, and its connection
    pool is reused from one upload to the next."""
    import boto3
    from botocore.config import Config

    endpoint_url = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    verify = False if env_flag("MLFLOW_S3_IGNORE_TLS") else None
    addressing_style = os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")
    aws_settings = tuple(sorted((name, value) for name, value in os.environ.items()
                                if name.startswith("AWS_")))
    key = (endpoint_url, verify, addressing_style, aws_settings)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(signature_version="s3v4", s3={"addressing_style": addressing_style},
                            retries=RETRIES, connect_timeout=CONNECT_TIMEOUT_S,
                            max_pool_connections=2 * MAX_CONCURRENCY)
            # a session of its own: boto3's default session is not safe to share across threads
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, verify=verify,
                                                    config=config)
            _clients[key] = client
        return client


class S3Destination:
    checksum_first = True

    def __init__(self, uri: str):
        try:
            from boto3.s3.transfer import TransferConfig
        except ImportError:
            raise ArtifactRefusedError(
                f'{uri}: s3:// artifact locations need boto3: pip install "autolog-ml[s3]"') from None
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ArtifactRefusedError(f"{uri!r} is not an s3://bucket/prefix URI")
        self.uri = uri
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE,
            max_concurrency=MAX_CONCURRENCY)
        self.exit_transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE, use_threads=False)
        owner = os.environ.get("MLFLOW_S3_EXPECTED_BUCKET_OWNER")
        self.owner_args = {"ExpectedBucketOwner": owner} if owner else {}

    def __repr__(self) -> str:
        return f"S3Destination({self.uri!r})"

    def _key(self, artifact_path: str) -> str:
        return f"{self.prefix}/{artifact_path}" if self.prefix else artifact_path

    def _head(self, artifact_path: str) -> dict | None:
        """The object's HEAD answer, None when there is no such object."""
        try:
            return s3_client().head_object(Bucket=self.bucket, Key=self._key(artifact_path),
                                           **self.owner_args)
        except Exception as exc:
            error = self._translate(exc, "reading", artifact_path)
            if isinstance(error, ArtifactNotFoundError):
                return None
            raise error from None

    def stored(self, artifact_path: str, sha256: str, size: int) -> bool:
        try:
            head = self._head(artifact_path)
        except ArtifactRefusedError:  # without s3:ListBucket, S3 answers 403 for a missing
            return False  # key: the PUT that follows says whether writing is allowed
        return head is not None and _holds(head, sha256, size)

    def upload(self, source: Path, artifact_path: str, sha256: str, size: int,
               progress: Progress | None = None) -> None:
        extra_args = self._upload_args(artifact_path)
        extra_args["Metadata"] = {**extra_args.get("Metadata", {}), "sha256": sha256}
        # s3transfer calls progress from its worker threads, and with a negative count when
        # it rewinds a part to send it again
        def send(config: Any) -> None:
            s3_client().upload_file(str(source), self.bucket, self._key(artifact_path),
                                    ExtraArgs=extra_args, Callback=progress, Config=config)

        try:
            try:
                send(self.transfer_config)
            except RuntimeError as exc:
                # autolog's exit wait runs in an atexit handler, after threading has shut
                # down: concurrent.futures refuses s3transfer's thread pool then ("cannot
                # schedule new futures after interpreter shutdown"), so the parts go up one
                # after the other on the uploader's own thread.
                if "shutdown" not in str(exc):
                    raise
                send(self.exit_transfer_config)
        except Exception as exc:
            raise self._translate(exc, "uploading", artifact_path) from None
        head = self._head(artifact_path)
        if head is None or not _holds(head, sha256, size):
            found = "nothing" if head is None else (
                f"{head['ContentLength']} bytes, sha256 {head.get('Metadata', {}).get('sha256')}")
            raise VerificationError(f"{self._where(artifact_path)} holds {found} after the upload, "
                                    f"not {size} bytes with sha256 {sha256}")

    def _upload_args(self, artifact_path: str) -> dict:
        """What MLflow's S3 repository sends with a file: its guessed content type and
        encoding, the expected bucket owner, and the user's MLFLOW_S3_UPLOAD_EXTRA_ARGS
        (server-side encryption and the like, which a bucket policy may demand)."""
        args: dict = dict(self.owner_args)
        content_type, encoding = mimetypes.guess_type(artifact_path)
        if content_type:
            args["ContentType"] = content_type
        if encoding:
            args["ContentEncoding"] = encoding
        if extra := os.environ.get("MLFLOW_S3_UPLOAD_EXTRA_ARGS"):
            try:
                args.update(json.loads(extra))
            except ValueError as exc:
                raise ArtifactRefusedError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS is not JSON: {exc}") from None
        return args

    def list(self, path: str | None = None) -> list[ArtifactEntry]:
        folder = self._key(path) if path else self.prefix
        listed_prefix = f"{folder}/" if folder else ""
        root_prefix = f"{self.prefix}/" if self.prefix else ""
        entries = []
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=listed_prefix, Delimiter="/", **self.owner_args)
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    relative = common["Prefix"].removeprefix(root_prefix).rstrip("/")
                    entries.append(ArtifactEntry(relative, True, None))
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # a folder marker some tools create, as MLflow skips it
                    entries.append(ArtifactEntry(item["Key"].removeprefix(root_prefix), False,
                                                 int(item["Size"])))
        except Exception as exc:
            raise self._translate(exc, "listing", path or "") from None
        return sorted(entries, key=lambda entry: entry.path)

    def download(self, artifact_path: str, target: Path, progress: Progress | None = None) -> None:
        try:
            s3_client().download_file(self.bucket, self._key(artifact_path), str(target),
                                      ExtraArgs=self.owner_args or None, Callback=progress,
                                      Config=self.transfer_config)
        except Exception as exc:
            raise self._translate(exc, "downloading", artifact_path) from None

    def _where(self, artifact_path: str) -> str:
        return f"s3://{self.bucket}/{self._key(artifact_path)}"

    def _translate(self, exc: Exception, verb: str, artifact_path: str) -> Exception:
        """The destination error for what boto3 raised; anything else unchanged.

        5xx, throttling, timeouts and an endpoint that does not answer are worth retrying;
        other 4xx answers (no permission, no bucket, bad credentials) are not, until the
        user changes something, and the message says what."""
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # boto3 wraps the S3 answer in a message
        if isinstance(exc, RetriesExceededError):
            exc = exc.last_exception
        endpoint = s3_client().meta.endpoint_url
        where = f"{self.uri} at {endpoint}"
        doing = f"{verb} {artifact_path!r}" if artifact_path else f"{verb} the artifact root"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            said = f"{code}: {error.get('Message') or f'HTTP {status}'}"
            if status >= 500 or status == 429 or code in TRANSIENT_CODES:
                return DestinationUnavailableError(f"S3 could not take {doing} in {where} now ({said})")
            if code in NOT_FOUND_CODES:
                return ArtifactNotFoundError(f"no artifact {artifact_path!r} in {self.uri}")
            hint = HINTS.get(code)
            return ArtifactRefusedError(f"S3 refused {doing} in {where} ({said})"
                                        + (f": {hint}" if hint else ""))
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ArtifactRefusedError(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"or AWS_PROFILE ({exc})")
        if isinstance(exc, ParamValidationError):
            return ArtifactRefusedError(f"S3 request for {doing} in {where} is not valid: {exc}")
        if isinstance(exc, BotoCoreError):  # connection refused, timeouts, a broken transfer
            return DestinationUnavailableError(f"S3 endpoint {endpoint} did not answer {doing}: {exc}")
        return exc


def _holds(head: dict, sha256: str, size: int) -> bool:
    return head.get("ContentLength") == size and head.get("Metadata", {}).get("sha256") == sha256
