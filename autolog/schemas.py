"""MLflow's schema of a piece of data, read from its dtypes, shape and first rows.

One inference for the two places MLflow writes a schema: a dataset input's schema
(:mod:`autolog.datasets`) and a model's signature (:mod:`autolog.models.signature`). Both
are what MLflow's ``_infer_schema`` makes of the data, as ``Schema.to_json`` writes it: a
TensorSpec for an array (numpy, scipy sparse, torch), ColSpecs for a pandas DataFrame or
Series. What dtypes alone cannot say comes from the first :data:`SAMPLE_ROWS` rows: the
type of an object column (text, bytes, numbers, or lists of one of them), and whether a
column may hold missing values (``required``), which MLflow reads from every row. A schema
MLflow could not make either (a column of unsigned 64-bit integers, or of mixed types) is
None, as MLflow leaves it out.

No framework is imported here: a value is recognized by its class's module.
"""

from __future__ import annotations

import itertools
from typing import Any

SAMPLE_ELEMENTS = 10_000  # of an array (and of each array a sparse matrix stores)
SAMPLE_ROWS = 10_000  # of a pandas frame

# torch dtypes that numpy has under the same name (a TensorSpec names a numpy dtype)
_TORCH_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                           "uint8", "bool"})


def tensor_name(dtype: Any) -> str:
    """A numpy dtype as MLflow's TensorSpec writes it (text and bytes without their size)."""
    return {"U": "str", "S": "bytes"}.get(dtype.char, dtype.name)


def tensor_schema(dtype: str, shape: tuple[int, ...] | list[int]) -> list[dict]:
    """MLflow's schema of one TensorSpec, rows as its variable dimension."""
    return [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": [-1, *map(int, shape[1:])]}}]


def schema_of(data: Any) -> list[dict] | None:
    """MLflow's schema of ``data`` (a pandas DataFrame or Series, a numpy array, a scipy
    sparse matrix, a torch tensor), or None where it has none (no rows dimension, object
    arrays, a column of no type MLflow takes)."""
    module = type(data).__module__.partition(".")[0]
    if module == "pandas" and hasattr(data, "ndim"):
        return colspecs(data)
    shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
    if not shape or dtype is None:
        return None
    if module == "torch":  # read without moving it off its device
        name = str(dtype).removeprefix("torch.")
        return tensor_schema(name, tuple(shape)) if name in _TORCH_DTYPES else None
    if module in ("numpy", "scipy") and getattr(dtype, "kind", "O") not in "OV":
        return tensor_schema(tensor_name(dtype), shape)
    return None


def colspecs(data: Any) -> list[dict] | None:
    """MLflow's ColSpecs of a frame's columns (of a Series: one, named as the Series), read
    from their dtypes and first rows; None when a column has no type MLflow's schema takes."""
    import pandas

    sample = data.head(SAMPLE_ROWS)
    if data.ndim == 1:
        columns = [(data.name, sample)]
    else:
        columns = [(column, sample.iloc[:, position]) for position, column in enumerate(data.columns)]
    specs = []
    for column, values in columns:
        kind = _column_type(values.dtype, values, pandas)
        if kind is None:
            return None
        spec: dict[str, Any] = dict(kind) if isinstance(kind, dict) else {"type": kind}
        if column is not None:  # JSON keeps a str or an int name; anything else as text
            spec["name"] = column if type(column) in (str, int) else str(column)
        spec["required"] = not bool(values.isna().any())
        specs.append(spec)
    return specs


def _column_type(dtype: Any, values: Any, pandas: Any) -> str | dict | None:
    """MLflow's DataType name for a column (``_infer_pandas_column``)."""
    if isinstance(dtype, pandas.CategoricalDtype):
        categories = dtype.categories
        return _column_type(categories.dtype, pandas.Series(categories[:SAMPLE_ROWS]), pandas)
    if isinstance(dtype, pandas.StringDtype):  # text by its dtype: no value read
        return "string"
    kind, size = getattr(dtype, "kind", "O"), getattr(dtype, "itemsize", 0)
    if kind == "O":
        inferred = _INFERRED_TYPES.get(pandas.api.types.infer_dtype(values, skipna=True))
        return inferred if inferred is not None else _object_type(values)
    if kind == "b":
        return "boolean"
    if kind in "iu":
        if size < 4 or (kind == "i" and size == 4):
            return "integer"
        if size < 8 or (kind == "i" and size == 8):
            return "long"
        return None  # uint64: MLflow has no type for it
    if kind == "f":
        return "float" if size <= 4 else "double" if size <= 8 else None
    return {"U": "string", "S": "binary", "M": "datetime"}.get(kind)


# pandas' infer_dtype of an object column (one pass in C) -> MLflow's type; any other
# answer (lists, mixed types) is read value by value (:func:`_object_type`)
_INFERRED_TYPES = {"string": "string", "bytes": "binary", "boolean": "boolean", "integer": "long",
                   "floating": "double", "mixed-integer-float": "double", "empty": "any"}


def _object_type(values: Any) -> str | dict | None:
    """The type of an object column, from the values of its first rows: a scalar type,
    or an array of one (a column of lists, as MLflow's ``Array``)."""
    present = values.dropna()
    types = {type(value) for value in present}
    if types and all(issubclass(t, list) for t in types):
        items = itertools.islice((item for cell in present for item in cell), SAMPLE_ELEMENTS)
        inner = _scalar_type({type(item) for item in items})
        return None if inner is None else {"type": "array", "items": {"type": inner}}
    return _scalar_type(types) if types else "any"  # no value to read: MLflow's AnyType


def _scalar_type(types: set[type]) -> str | None:
    for python_type, name in ((str, "string"), (bytes, "binary"), (bool, "boolean"),
                              (int, "long"), (float, "double")):
        if types and all(issubclass(t, python_type) for t in types):
            return name
    return None
