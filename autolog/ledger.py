"""ParamLedger: one run's parameters, their canonical values, where each came from.

MLflow stores a param as a string and refuses a second, different string for the same
key, which in a six-hour job means a crash at the last ``log_param``. The ledger decides
in this process, before anything is queued:

* a repeat that means the same (``1``, ``1.0``, ``"1"``, ``numpy.int64(1)``; a float32 and
  the float64 it came from; ``True`` and ``"True"``) is dropped and never sent;
* a manual value that differs raises :class:`ParamConflictError` at the user's line;
* an autologged value that differs follows ``on_conflict``: ``namespace`` (kept under
  ``<integration>.<key>``), ``skip``, or ``raise``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from autolog.config import check_on_conflict, warn
from autolog.validation import MAX_PARAM_VALUE_LENGTH, check_param_key, check_param_value

TRUNCATION_MARK = "..."  # what MLflow's autolog appends to a param value it cuts

MANUAL = "manual"


class ParamConflictError(ValueError):
    """A param key got a second value that differs from the first."""

    def __init__(self, key: str, existing: LedgerEntry, new_value: str, new_source: str):
        self.key = key
        self.existing = existing
        self.new_value = new_value
        self.new_source = new_source
        super().__init__(
            f"param {key!r} is already {existing.stored!r} (from {existing.source}, set at "
            f"{existing.call_site}); refusing {new_value!r} from {new_source}. Params are "
            "immutable within a run: use another key, or a metric for values that change."
        )


@dataclass(frozen=True)
class LedgerEntry:
    stored: str  # exactly what is sent to the store
    canonical: Any
    source: str  # "manual", "autolog:<integration>" or "store" (seeded on resume)
    call_site: str


def stored_form(value: object) -> str:
    """The string MLflow would store for ``value`` (``str(value)``, as its client does)."""
    return value if isinstance(value, str) else str(value)


def canonical(value: object) -> Any:
    """A value that compares equal for values that mean the same param.

    Numbers become ``("num", exact Fraction)`` or ``("f32", float32 rounding)``; booleans and
    their strings ``("bool", b)``; ``None`` and ``"None"`` ``("none",)``; anything else its
    stored string.
    """
    if value is None:
        return ("none",)
    if isinstance(value, str):
        return _canonical_string(value)
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return ("bool", bool(value))
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(value, "ndim", 1) == 0:  # numpy scalar, 0-d array or tensor
        return _canonical_number(value.item(), float32=str(dtype).endswith("float32"))
    if isinstance(value, (int, float, Decimal, Fraction)):
        return _canonical_number(value)
    return stored_form(value)


def _canonical_string(text: str) -> Any:
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return ("bool", lowered == "true")
    if stripped == "None":
        return ("none",)
    try:
        number = Decimal(stripped)
    except InvalidOperation:
        return text
    return _canonical_number(number)


def _canonical_number(number: Any, float32: bool = False) -> Any:
    if isinstance(number, bool):
        return ("bool", number)
    if isinstance(number, (float, Decimal)) and not math.isfinite(number):
        if math.isnan(number):
            return ("num", "nan")
        return ("num", "inf" if number > 0 else "-inf")
    if float32:
        return ("f32", _float32_repr(float(number)))
    if isinstance(number, float):  # the shortest repr, so 0.1 equals "0.1"
        return ("num", Fraction(repr(number)))
    return ("num", Fraction(number))


def _float32_repr(number: float) -> Fraction:
    import numpy  # only reached for float32 values, so numpy is already imported

    return Fraction(str(numpy.float32(number)))


def equivalent(a: Any, b: Any) -> bool:
    """Whether two canonical values mean the same param value."""
    if a == b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple) and {a[0], b[0]} == {"num", "f32"}:
        exact = a if a[0] == "num" else b
        single = b if exact is a else a
        return isinstance(exact[1], Fraction) and _float32_repr(float(exact[1])) == single[1]
    return False


class ParamLedger:
    """Thread-safe map of key -> :class:`LedgerEntry` for one run."""

    def __init__(self, on_conflict: str = "namespace"):
        self.on_conflict = check_on_conflict(on_conflict)
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()

    def reset_lock_after_fork(self) -> None:
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> LedgerEntry | None:
        return self._entries.get(key)

    def items(self) -> list[tuple[str, LedgerEntry]]:
        return list(self._entries.items())

    def seed(self, params: dict[str, str], source: str = "store") -> None:
        """Load params already stored for a resumed run, so conflicts with them are caught."""
        with self._lock:
            for key, stored in params.items():
                self._entries[key] = LedgerEntry(stored, canonical(stored), source, "earlier run")

    def record_manual(self, params: dict[str, Any], call_site: str) -> dict[str, str]:
        """Admit user params; raise before admitting any if one conflicts.

        Returns the params to send (new keys only) as key -> stored string.
        """
        prepared = [self._prepare(key, value) for key, value in params.items()]
        with self._lock:
            new = []
            for key, stored, canon in prepared:
                existing = self._entries.get(key)
                if existing is None:
                    new.append((key, stored, canon))
                elif not equivalent(existing.canonical, canon):
                    raise ParamConflictError(key, existing, stored, MANUAL)
            for key, stored, canon in new:
                self._entries[key] = LedgerEntry(stored, canon, MANUAL, call_site)
            return {key: stored for key, stored, _ in new}

    def record_autolog(
        self, params: dict[str, Any], integration: str, call_site: str
    ) -> dict[str, str]:
        """Admit autologged params, resolving conflicts by ``on_conflict``; never raises for
        bad keys or long values (they are skipped or truncated with a warning) and raises
        :class:`ParamConflictError` only when the policy is ``raise``."""
        source = f"autolog:{integration}"
        to_send: dict[str, str] = {}
        with self._lock:
            for key, value in params.items():
                try:
                    key, stored, canon = self._prepare(key, value, truncate=True)
                except ValueError as exc:
                    warn(
                        f"autolog ({integration}): skipped param: {exc}")
                    continue
                admitted_key = self._admit_autolog(key, stored, canon, integration, source)
                if admitted_key is not None:
                    self._entries[admitted_key] = LedgerEntry(stored, canon, source, call_site)
                    to_send[admitted_key] = stored
        return to_send

    def _admit_autolog(
        self, key: str, stored: str, canon: Any, integration: str, source: str
    ) -> str | None:
        existing = self._entries.get(key)
        if existing is None:
            return key
        if equivalent(existing.canonical, canon):
            return None
        if self.on_conflict == "raise":
            raise ParamConflictError(key, existing, stored, source)
        if self.on_conflict == "skip":
            warn(
                f"autolog: param {key!r}={stored!r} from {source} skipped: the run already has "
                f"{existing.stored!r} from {existing.source}")
            return None
        namespaced = f"{integration}.{key}"
        other = self._entries.get(namespaced)
        if other is not None:
            if not equivalent(other.canonical, canon):
                warn(
                    f"autolog: param {key!r}={stored!r} from {source} skipped: both {key!r} "
                    f"and {namespaced!r} already hold other values")
            return None
        warn(
            f"autolog: param {key!r} is {existing.stored!r} (from {existing.source}); the "
            f"value {stored!r} from {source} is logged as {namespaced!r}")
        return namespaced

    @staticmethod
    def _prepare(key: Any, value: Any, truncate: bool = False) -> tuple[str, str, Any]:
        check_param_key(key)
        stored = stored_form(value)
        if truncate and len(stored) > MAX_PARAM_VALUE_LENGTH:
            length = len(stored)
            cut = stored[:MAX_PARAM_VALUE_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
            stored = check_param_value(key, cut)  # refuses text no store takes: no cut then
            warn(f"autolog: param {key!r} value ({length} characters) truncated to "
                 f"{MAX_PARAM_VALUE_LENGTH}, ending in {TRUNCATION_MARK!r} (as MLflow's "
                 "autolog does)")
            return key, stored, canonical(stored)
        check_param_value(key, stored)
        return key, stored, canonical(value)
