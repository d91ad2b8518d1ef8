"""A model's signature, described from the training data's dtypes and shapes.

MLflow infers a signature by predicting on an input example, on the training thread.
Here the fit's own ``X`` and ``y`` say it: column names and dtypes of a DataFrame, dtype
and trailing shape of an array, read without touching the values (microseconds for any
size). The result is MLflow's JSON form of a schema (what ``Schema.to_json`` writes);
the saver thread turns it into MLflow's ``ModelSignature``.
"""

from __future__ import annotations

import json
from typing import Any

# numpy dtype kind/size -> MLflow's column type (mlflow.types.DataType), as MLflow maps them
_COLUMN_TYPES = {
    ("b", 1): "boolean",
    ("i", 1): "integer", ("i", 2): "integer", ("i", 4): "integer", ("i", 8): "long",
    ("u", 1): "integer", ("u", 2): "integer", ("u", 4): "long",
    ("f", 4): "float", ("f", 8): "double",
}


def _column_type(dtype: Any, first: Any) -> str | None:
    kind, size = getattr(dtype, "kind", None), getattr(dtype, "itemsize", None)
    if kind == "M":
        return "datetime"
    if kind == "O" or str(dtype) in ("string", "str"):  # object columns: judged by a value
        return "string" if isinstance(first, str) else "binary" if isinstance(first, bytes) else None
    return _COLUMN_TYPES.get((kind, size))


def _frame_schema(frame: Any) -> list[dict] | None:
    columns = []
    for position, (name, dtype) in enumerate(frame.dtypes.items()):
        first = frame.iloc[0, position] if dtype.kind == "O" and len(frame) else None
        column_type = _column_type(dtype, first)
        if column_type is None:  # a category or a mixed column: no schema MLflow enforces
            return None
        columns.append({"type": column_type, "name": str(name), "required": True})
    return columns


def _series_schema(series: Any) -> list[dict] | None:
    first = series.iloc[0] if series.dtype.kind == "O" and len(series) else None
    column_type = _column_type(series.dtype, first)
    if column_type is None:
        return None
    column = {"type": column_type, "required": True}
    if series.name is not None:
        column["name"] = str(series.name)
    return [column]


def _tensor_schema(dtype_name: str, shape: tuple) -> list[dict] | None:
    if not shape:
        return None
    return [{"type": "tensor", "tensor-spec": {"dtype": dtype_name, "shape": [-1, *shape[1:]]}}]


# torch dtypes that numpy has under the same name (a tensor-spec names a numpy dtype)
_TORCH_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                           "uint8", "bool"})


def schema_of(data: Any) -> list[dict] | None:
    """MLflow's schema of ``data`` (a pandas DataFrame or Series, a numpy array, a torch
    tensor), or None where MLflow would enforce none that fits (lists, sparse matrices)."""
    module = type(data).__module__.partition(".")[0]
    if module == "pandas":
        if hasattr(data, "columns"):
            return _frame_schema(data)
        if hasattr(data, "dtype"):
            return _series_schema(data)
        return None
    if module == "numpy" and hasattr(data, "dtype"):
        if data.dtype.kind in "OV":
            return None
        # MLflow refuses a width ("<U3"): text and bytes are "str" and "bytes", as it infers them
        name = {"U": "str", "S": "bytes"}.get(data.dtype.kind, str(data.dtype))
        return _tensor_schema(name, data.shape)
    if module == "torch" and hasattr(data, "dtype"):  # read without moving it off its device
        name = str(data.dtype).removeprefix("torch.")
        return _tensor_schema(name, tuple(data.shape)) if name in _TORCH_DTYPES else None
    return None


def signature_of(inputs: Any, outputs: Any = None) -> dict[str, str] | None:
    """The signature of a model fitted on ``inputs`` (and ``outputs``), as the dict
    ``mlflow.models.ModelSignature.from_dict`` takes, or None when the inputs have none."""
    input_schema = schema_of(inputs)
    if input_schema is None:
        return None
    output_schema = schema_of(outputs) if outputs is not None else None
    return {"inputs": json.dumps(input_schema),
            "outputs": json.dumps(output_schema) if output_schema is not None else None}


def example_of(inputs: Any, rows: int = 5) -> Any:
    """The first ``rows`` rows of ``inputs``, copied (the caller may change its data after
    the fit), or None for data that cannot be cut so."""
    try:
        head = inputs.iloc[:rows] if hasattr(inputs, "iloc") else inputs[:rows]
        return head.copy()
    except (TypeError, AttributeError, IndexError, KeyError):
        return None
