"""Packing metric points into per-key chunks of typed arrays (the embedded store's format),
and the little-endian array packing that the spool's row encoding shares.

The work per point is C-level (``array`` from ``map``), so packing 1,000,000 points costs
about 0.3 s of one core; the arrays are stored little-endian whatever the machine.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from autolog.stores.base import MetricRow

_VALUE, _TIMESTAMP, _STEP = itemgetter(1), itemgetter(2), itemgetter(3)
_SWAP = sys.byteorder != "little"


def little_endian(typed: array) -> bytes:
    """The bytes of ``typed``, little-endian whatever the machine (``typed`` is left as is)."""
    if _SWAP:
        typed = array(typed.typecode, typed)
        typed.byteswap()
    return typed.tobytes()


def from_little_endian(typecode: str, raw: bytes) -> array:
    """The array of ``typecode`` that :func:`little_endian` packed into ``raw``."""
    typed = array(typecode)
    typed.frombytes(raw)
    if _SWAP:
        typed.byteswap()
    return typed


@dataclass(frozen=True)
class Chunk:
    key: str
    values: array
    timestamps: array
    steps: array
    latest: tuple[float, int, int]  # value, timestamp, step of the point with the highest (step, time)

    def row(self) -> tuple:
        return (self.key, len(self.values), min(self.steps), max(self.steps),
                *map(little_endian, (self.values, self.timestamps, self.steps)))


def pack_chunks(rows: Sequence[MetricRow]) -> list[Chunk]:
    """Group ``(key, value, timestamp, step)`` rows by key, keeping their order."""
    groups: dict[str, list[MetricRow]] = {}
    for row in rows:
        group = groups.get(row[0])
        if group is None:
            group = groups[row[0]] = []
        group.append(row)
    return [_chunk(key, group) for key, group in groups.items()]


def _chunk(key: str, group: list[MetricRow]) -> Chunk:
    values = array("d", map(_VALUE, group))
    timestamps = array("q", map(_TIMESTAMP, group))
    steps = array("q", map(_STEP, group))
    top = max(steps)
    first = steps.index(top)
    if steps.count(top) == 1:
        best = first
    else:  # several points at the top step: the latest timestamp wins, then the last logged
        best = max((i for i in range(first, len(steps)) if steps[i] == top),
                   key=lambda i: (timestamps[i], i))
    return Chunk(key, values, timestamps, steps, (values[best], timestamps[best], steps[best]))


def unpack_chunk(values: bytes, timestamps: bytes, steps: bytes) -> Iterable[tuple[float, int, int]]:
    return zip(from_little_endian("d", values), from_little_endian("q", timestamps),
               from_little_endian("q", steps))
