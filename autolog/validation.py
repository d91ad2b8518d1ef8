"""Key and value rules of the MLflow tracking server, checked at the call site.

The limits are MLflow's own (``mlflow/utils/validation.py``), so a batch built from values
that passed here is never refused by a server. Every failure is a ``ValueError`` raised in
the caller's frame, before anything is queued: a value refused later, by the writer, could
only be dropped or jam the queue behind it. Beyond MLflow's own rules that means: text must
be encodable as UTF-8 (no lone surrogates, which ``os.fsdecode`` gives for a file name that
is not UTF-8) and hold no NUL character (PostgreSQL refuses it); a metric value must fit a
float (``10**400`` does not) and a step or timestamp an int64.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import posixpath
import re
from decimal import Decimal

MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_REQUEST_BYTES = 1_000_000
# A dataset input's fields (mlflow/utils/validation.py; the source type: its column's size)
MAX_DATASET_NAME_LENGTH = 500
MAX_DATASET_DIGEST_LENGTH = 36
MAX_DATASET_SOURCE_TYPE_LENGTH = 36
MAX_DATASET_SOURCE_LENGTH = 65535
MAX_DATASET_SCHEMA_LENGTH = 1048575
MAX_DATASET_PROFILE_LENGTH = 16777215
MAX_INPUT_TAG_VALUE_LENGTH = 500

_KEY_CHARACTERS = re.compile(r"^[/\w.\- :]*$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The smallest int that float() rounds to infinity (it raises OverflowError): halfway
# between the largest float and 2**1024, which rounds to even, upwards.
FLOAT_INT_LIMIT = 2**1024 - 2**970


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: a message never prints the 400 digits of 10**400, or
    the 6,000 characters of a param value."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters shown"
    return f"{text[:limit]}... ({size})"


def check_text(what: str, text: str) -> str:
    """``text`` unchanged if a store can keep it: encodable as UTF-8, without NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} {_short(text, 80)} cannot be stored: the character {text[exc.start]!r} at "
            f"position {exc.start} is not valid Unicode text (a lone surrogate, as "
            "os.fsdecode gives for a file name that is not UTF-8); pass text, e.g. "
            "os.fsencode(name).decode('utf-8', 'replace')"
        ) from None
    if "\x00" in text:
        raise ValueError(
            f"{what} {_short(text, 80)} cannot be stored: it contains a NUL character (\\x00) at "
            f"position {text.index(chr(0))}, which PostgreSQL-backed MLflow servers refuse"
        )
    return text


def _check_key(kind: str, key: object) -> str:
    if not isinstance(key, str):
        raise ValueError(f"{kind} key must be a string, got {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError(f"{kind} key must not be empty")
    check_text(f"{kind} key", key)
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"{kind} key {key[:60]!r}... is {len(key)} characters; the limit is {MAX_KEY_LENGTH}"
        )
    if not _KEY_CHARACTERS.match(key):
        raise ValueError(
            f"invalid {kind.lower()} key {key!r}: names may only contain alphanumerics, "
            "underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)"
        )
    normalized = posixpath.normpath(key)
    if normalized != key or normalized == "." or normalized.startswith(("..", "/")):
        raise ValueError(
            f"invalid {kind.lower()} key {key!r}: it would resolve to the path {normalized!r}; "
            "names must not contain '//', '/./', '..' or start or end with '/'"
        )
    return key


def check_metric_key(key: object) -> str:
    return _check_key("Metric", key)


def check_param_key(key: object) -> str:
    return _check_key("Param", key)


def check_tag_key(key: object) -> str:
    return _check_key("Tag", key)


def check_param_value(key: str, stored: str) -> str:
    check_text(f"param {key!r}: the value", stored)
    if len(stored) > MAX_PARAM_VALUE_LENGTH:
        raise ValueError(
            f"param {key!r}: value is {len(stored)} characters; the limit is "
            f"{MAX_PARAM_VALUE_LENGTH}"
        )
    return stored


def check_dataset_field(field: str, value: object, limit: int, required: bool = True) -> str | None:
    """A field of a dataset input (its name, digest, schema, ...): text a store can keep,
    at most ``limit`` characters; None only where not ``required``."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise TypeError(f"dataset {field} must be a string, got {type(value).__name__}: "
                        f"{_short(value)}")
    if required and not value:
        raise ValueError(f"dataset {field} must not be empty")
    check_text(f"dataset {field}", value)
    if len(value) > limit:
        raise ValueError(f"dataset {field} {_short(value)} is {len(value)} characters; the "
                         f"limit is {limit}")
    return value


def check_tag_value(key: str, value: object) -> str:
    stored = str(value)
    check_text(f"tag {key!r}: the value", stored)
    if len(stored) > MAX_TAG_VALUE_LENGTH:
        raise ValueError(
            f"tag {key!r}: value is {len(stored)} characters; the limit is {MAX_TAG_VALUE_LENGTH}"
        )
    return stored


def check_experiment_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    check_text("experiment name", name)
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ValueError(
            f"experiment name is {len(name)} characters; the limit is {MAX_EXPERIMENT_NAME_LENGTH}"
        )
    return name


def check_step(step: object) -> int:
    """A step is a 64-bit integer; integral floats and numpy/torch integers are accepted."""
    if isinstance(step, bool) or step is None:
        raise ValueError(f"metric step must be an integer, got {step!r}")
    try:
        as_int = int(step)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise ValueError(f"metric step must be an integer, got {_short(step)}") from None
    if as_int != step or not INT64_MIN <= as_int <= INT64_MAX:
        raise ValueError(
            f"metric step must be a 64-bit integer (between -2**63 and 2**63 - 1), got {_short(step)}")
    return as_int


def check_timestamp_ms(timestamp: object) -> int:
    """Timestamps are milliseconds since the epoch, as in MLflow: a non-negative int64."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Real):
        raise ValueError(
            f"metric timestamp must be milliseconds since the epoch, got {_short(timestamp)}")
    # Compared before any float conversion, which would overflow for a huge int.
    if not (0 <= timestamp <= INT64_MAX):  # NaN compares false
        raise ValueError(
            f"metric timestamp must be a non-negative 64-bit integer, got {_short(timestamp)}")
    return int(timestamp)


def metric_value_kind(value: object) -> str:
    """Classify a metric value; conversion is the writer's job, except that a host value
    that may not fit a float (a big int, Decimal, Fraction, numpy longdouble) is checked.

    Returns ``"native"`` for Python int/float, ``"lazy"`` for a numpy or torch scalar that the
    writer converts later, and raises ``ValueError`` for anything that is not one number.
    Checking a torch tensor's ``numel()``/``dtype`` reads metadata only: no device sync.
    """
    if isinstance(value, bool):
        return "lazy"
    if isinstance(value, int):
        if not -FLOAT_INT_LIMIT < value < FLOAT_INT_LIMIT:
            raise _beyond_float(value)
        return "native"
    if isinstance(value, float):
        return "native"
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"metric value must be a number, got {type(value).__name__}: {value!r}")
    numel = getattr(value, "numel", None)
    if callable(numel) and hasattr(value, "detach"):  # a torch tensor, checked by duck type
        if numel() != 1:
            raise ValueError(
                f"metric value must be a scalar tensor, got a tensor of shape {tuple(value.shape)}"
            )
        if value.dtype.is_complex:
            raise ValueError("metric value must be a real number, got a complex tensor")
        return "lazy"
    size = getattr(value, "size", None)
    if hasattr(value, "dtype") and size is not None:  # numpy scalar or array
        if size != 1:
            raise ValueError(f"metric value must be a scalar, got an array of shape {value.shape}")
        if value.dtype.kind not in "biuf":
            raise ValueError(f"metric value must be a real number, got dtype {value.dtype}")
        if value.dtype.kind == "f" and value.dtype.itemsize > 8:  # longdouble: may overflow
            _check_fits_float(value.reshape(-1)[0] if getattr(value, "ndim", 0) else value)
        return "lazy"
    if isinstance(value, (numbers.Real, Decimal)):  # Fraction, Decimal, ...: host values
        _check_fits_float(value)
        return "lazy"
    raise ValueError(f"metric value must be a number, got {type(value).__name__}: {value!r}")


def _beyond_float(value: object) -> ValueError:
    return ValueError(
        f"metric value {_short(value)} is beyond the range of a 64-bit float (about ±1.8e308), the "
        "type MLflow stores metrics as"
    )


def _check_fits_float(value: object) -> None:
    """A host value (not a tensor) whose float() would fail or turn a finite number into
    ±inf is refused; the conversion is cheap, and the writer converts it again later."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise _beyond_float(value) from None
    except (TypeError, ValueError) as exc:  # Decimal('sNaN'), say
        raise ValueError(f"metric value {value!r} is not a number a float can hold: {exc}") from None
    if math.isinf(number) and not value == number:
        raise _beyond_float(value)


def to_float(value: object) -> float:
    """Convert a value accepted by :func:`metric_value_kind` (writer thread only)."""
    if hasattr(value, "detach"):
        return float(value.detach().reshape(-1)[0].item())
    if hasattr(value, "dtype") and getattr(value, "ndim", 0):
        return float(value.reshape(-1)[0])
    return float(value)


def to_floats(values: list) -> list[float | None]:
    """Convert many values at once (writer thread only); None where one cannot be.

    Torch tensors are stacked per device and copied in one transfer, so a batch of CUDA
    losses costs one synchronisation of the writer thread, not one per point.
    """
    if values and hasattr(values[0], "detach"):  # a batch of tensors only, on one device:
        with contextlib.suppress(AttributeError, RuntimeError, TypeError):  # else one by one
            return _stacked(values)
    floats: list[float | None] = [None] * len(values)
    by_device: dict[object, list[int]] = {}
    for index, value in enumerate(values):
        if hasattr(value, "detach"):
            by_device.setdefault(value.device, []).append(index)
            continue
        try:
            floats[index] = to_float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    for indexes in by_device.values():
        try:
            converted = _stacked([values[i] for i in indexes])
        except (RuntimeError, TypeError):  # one at a time
            converted = [_try_float(values[i]) for i in indexes]
        for index, number in zip(indexes, converted):
            floats[index] = number
    return floats


def _stacked(tensors: list) -> list[float]:
    """One device's scalar tensors as floats, in one transfer. They are stacked as they
    are, per dtype and shape, so there is no torch op per value (each would cost the
    writer a dispatch and a GIL release, and the training thread the GIL back); not across
    dtypes, which ``stack`` would promote to the widest float present (int64 to float32).
    Raises AttributeError, RuntimeError or TypeError for values that are not tensors of
    one device."""
    import torch  # imported already: a tensor exists

    if len({(tensor.dtype, tensor.shape) for tensor in tensors}) == 1:  # a loop's losses
        with torch.no_grad():
            return torch.stack(tensors).reshape(-1).double().tolist()
    groups: dict[tuple, list[int]] = {}
    for position, tensor in enumerate(tensors):
        groups.setdefault((tensor.dtype, tensor.shape), []).append(position)
    with torch.no_grad():
        parts = [torch.stack([tensors[p] for p in positions]).reshape(-1).double()
                 for positions in groups.values()]
        flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()
    converted = [0.0] * len(tensors)
    for position, number in zip((p for positions in groups.values() for p in positions), flat):
        converted[position] = number
    return converted


def _try_float(value: object) -> float | None:
    try:
        return to_float(value)
    except (RuntimeError, TypeError, ValueError):
        return None
