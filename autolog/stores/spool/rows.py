"""A batch as the spool stores it: entries of (kind, points, body), one per request to send.

A ``metrics`` body is :func:`pack_rows` of its rows; ``params``, ``tags`` and ``status``
bodies are JSON, and an ``inputs`` body is the log-inputs request to send (its point
count: the datasets in it). Every stored entry carries :func:`checksum` of its kind, point
count and body (spool formats 2 and 3; format 1, written by autolog 0.1, has none).
"""

from __future__ import annotations

import json
import struct
import zlib
from array import array
from collections.abc import Sequence
from operator import itemgetter

from autolog.stores.base import DatasetInput, MetricRow
from autolog.stores.chunks import from_little_endian, little_endian
from autolog.stores.mlflow_rest import input_body, tag_bodies
from autolog.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

Entry = tuple[str, int, bytes]  # kind ('params', 'tags', 'metrics', 'status', 'inputs'), points, body

UNSENDABLE_MARK = "unsendable: "  # how the error of a batch that cannot be sent begins
# What decoding a stored body or encoding it for the server raises when the body cannot
# be sent (damaged in a format-1 spool, or text JSON cannot carry): set aside, not retried.
UNSENDABLE = (ValueError, UnicodeError, struct.error, KeyError, IndexError, TypeError,
              OverflowError)

_KEY, _VALUE, _TIMESTAMP, _STEP = (itemgetter(i) for i in range(4))
_COLUMNS = (("I", 4), ("d", 8), ("q", 8), ("q", 8))  # key index, value, timestamp, step
assert all(array(code).itemsize == size for code, size in _COLUMNS)


def pack_rows(rows: Sequence[MetricRow]) -> bytes:
    """Metric rows as the spool keeps them: a header (sizes, then the distinct keys as
    JSON) and four little-endian columns. Building it is C-level work per point, and
    reading it back runs no code (unlike pickle)."""
    keys = list(map(_KEY, rows))
    names = list(dict.fromkeys(keys))
    index = {name: i for i, name in enumerate(names)}
    header = json.dumps(names).encode()
    columns = (map(index.__getitem__, keys), map(_VALUE, rows), map(_TIMESTAMP, rows),
               map(_STEP, rows))
    return b"".join([struct.pack("<II", len(header), len(rows)), header,
                     *(little_endian(array(code, items))
                       for (code, _), items in zip(_COLUMNS, columns))])


def unpack_rows(body: bytes) -> list[MetricRow]:
    """The rows of a :func:`pack_rows` body; raises one of :data:`UNSENDABLE` on a body
    that is not one (sizes beyond the body, keys that are not a JSON list of text)."""
    header_size, count = struct.unpack_from("<II", body)
    offset = 8 + header_size
    if offset + 28 * count != len(body):
        raise ValueError(f"a metrics body of {len(body)} bytes cannot hold {count} rows")
    names = json.loads(body[8:offset])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("the keys of a metrics body are not a list of text")
    columns = []
    for code, size in _COLUMNS:
        columns.append(from_little_endian(code, body[offset:offset + size * count]))
        offset += size * count
    keys, values, timestamps, steps = columns
    return [(names[key], value, timestamp, step)
            for key, value, timestamp, step in zip(keys, values, timestamps, steps)]


def checksum(kind: str, points: int, body: bytes) -> int:
    """The CRC-32 a stored batch carries (formats 2 and 3)."""
    return zlib.crc32(body, zlib.crc32(f"{kind}:{points}:".encode()))


def encode_entries(metrics: Sequence[MetricRow] = (), params: dict[str, str] | None = None,
                   tags: dict[str, str] | None = None) -> list[Entry]:
    """A batch as spool entries, one per request to send."""
    entries: list[Entry] = []
    if params:
        items = list(params.items())
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = dict(items[start:start + MAX_PARAMS_TAGS_PER_BATCH])
            entries.append(("params", len(chunk), json.dumps(chunk).encode()))
    if tags:
        entries.extend(("tags", count, body) for count, body in tag_bodies(tags))
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        chunk = metrics[start:start + MAX_METRICS_PER_BATCH]
        entries.append(("metrics", len(chunk), pack_rows(chunk)))
    return entries


def status_entry(status: str, end_time: int | None) -> Entry:
    """A run's status change as a spool entry."""
    return "status", 0, json.dumps({"status": status, "end_time": end_time}).encode()


def inputs_entry(inputs: Sequence[DatasetInput]) -> Entry:
    """Dataset inputs of a run as a spool entry: one log-inputs request."""
    return "inputs", len(inputs), input_body(inputs)
