"""What a fit's data was, as MLflow records a run's dataset inputs: :func:`describe`.

A numpy array or a scipy sparse matrix (with optional targets) is described as MLflow's
``NumpyDataset`` describes one: schema ``{"mlflow_tensorspec": {"features": ...,
"targets": ...}}``, profile ``features_shape``, ``features_size``, ``features_nbytes``
(and ``targets_*``; a sparse matrix counted as the dense array MLflow makes of it). A
pandas DataFrame (or Series) as its ``PandasDataset``: schema ``{"mlflow_colspec":
[...]}``, profile ``num_rows`` and ``num_elements``. The source is MLflow's code source:
the system tags of the script that logged it. The name is ``dataset`` unless given, as
MLflow names the datasets its autologging records.

Cheap on purpose, since it runs on the training thread before a fit: the digest (the
first 8 hex characters of an md5, as MLflow's) covers the shape, the dtypes or columns and
a sample, never all of the data: the first :data:`SAMPLE_ELEMENTS` elements of an array
in C order (a view where the array is contiguous, else a copy of those elements only),
the first :data:`SAMPLE_ROWS` rows of a frame (``pandas.util.hash_pandas_object``), the
first :data:`SAMPLE_ELEMENTS` elements of each array a sparse matrix stores. So two
datasets that differ only beyond the sample share a digest, as with MLflow. What a
schema cannot read from dtypes alone comes from the same rows: the type of an object
column (text, bytes, numbers, or lists of one of them), and whether a column may hold
missing values (``required``), which MLflow reads from every row. A schema MLflow could
not make either (a column of unsigned 64-bit integers, or of mixed types) is left out,
as MLflow leaves it out; so is one of nested lists or dicts, which MLflow's would type.

No framework is imported here: a value is recognized by its class once its library is
loaded, so describing a numpy array never imports pandas.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from typing import Any

from autolog.run import Run
from autolog.schemas import SAMPLE_ELEMENTS, SAMPLE_ROWS, colspecs, schema_of, tensor_schema
from autolog.source import GIT_COMMIT, SOURCE_NAME, SOURCE_TYPE, USER, system_tags
from autolog.stores.base import DatasetInput
from autolog.validation import MAX_DATASET_SCHEMA_LENGTH

DEFAULT_NAME = "dataset"  # MLflow's name for a dataset given none
CODE_SOURCE = "code"  # MLflow's CodeDatasetSource
_SOURCE_TAGS = (USER, SOURCE_NAME, SOURCE_TYPE, GIT_COMMIT)
_SPARSE_ARRAYS = ("data", "indices", "indptr", "row", "col", "offsets")


def describe(features: Any, targets: Any = None, *, context: str | None = "train",
             name: str | None = None) -> DatasetInput:
    """``features`` (and ``targets``) as a dataset input of ``context`` (``"train"``,
    ``"eval"``...; None: no context tag), named ``name`` (default ``"dataset"``).

    ``features`` and ``targets`` are numpy arrays, pandas DataFrames or Series, or scipy
    sparse matrices; anything else is a ``TypeError``. A frame's targets count in its
    digest, not in its schema or profile (MLflow's autologging records none for a frame)."""
    kind = _kind(features)
    if kind is None:
        raise TypeError(f"features must be a numpy array, a pandas DataFrame or Series, or a "
                        f"scipy sparse matrix; got {type(features).__name__}")
    if targets is not None and _kind(targets) is None:
        raise TypeError(f"targets must be None, a numpy array, a pandas DataFrame or Series, "
                        f"or a scipy sparse matrix; got {type(targets).__name__}")
    if context is not None and not isinstance(context, str):
        raise TypeError(f"context must be a string such as 'train' or 'eval', got {context!r}")
    if kind == "pandas":
        columns = colspecs(features)
        schema = None if columns is None else {"mlflow_colspec": columns}
        profile = {"num_rows": len(features), "num_elements": int(features.size)}
    else:
        if not features.shape:
            raise ValueError("features must have at least one dimension (rows), got a scalar array")
        schema = {"mlflow_tensorspec": {"features": _schema_json(features),
                                        "targets": None if targets is None else _schema_json(targets)}}
        if schema["mlflow_tensorspec"]["features"] is None:
            schema = None
        profile = {f"features_{key}": value for key, value in _sizes(features).items()}
        if targets is not None:
            profile.update({f"targets_{key}": value for key, value in _sizes(targets).items()})
    md5 = hashlib.md5(usedforsecurity=False)
    for part in (features, targets):
        if part is not None:
            _hash_into(md5, part)
    return _dataset(md5, schema, profile, context, name)


def describe_tensor(shape: tuple[int, ...], dtype: str, itemsize: int, identity: Iterable[bytes],
                    *, context: str | None = "train", name: str | None = None) -> DatasetInput:
    """A dataset known by its shape, its element type and a few bytes that identify it,
    described as a dense array of that shape and type: for a framework's own container
    (XGBoost's ``DMatrix``) read without touching its data."""
    md5 = hashlib.md5(usedforsecurity=False)
    md5.update(repr(("tensor", tuple(shape), dtype)).encode())
    for part in identity:
        md5.update(part)
    size = _product(shape)
    schema = {"mlflow_tensorspec": {"features": json.dumps(tensor_schema(dtype, shape)), "targets": None}}
    profile = {"features_shape": list(shape), "features_size": size,
               "features_nbytes": size * itemsize}
    return _dataset(md5, schema, profile, context, name)


def supported(data: Any) -> bool:
    """Whether :func:`describe` takes ``data``."""
    return _kind(data) is not None


def log_if_supported(run: Run, features: Any, targets: Any = None, *,
                     context: str | None = "train", name: str | None = None) -> bool:
    """For integrations: queue ``features`` (with ``targets`` where :func:`describe` takes
    them) as an input of ``run`` if :func:`describe` takes them; whether it did."""
    if not supported(features):
        return False
    run.log_inputs([describe(features, targets if supported(targets) else None,
                             context=context, name=name)])
    return True


# -- the pieces ----------------------------------------------------------------------------


def _dataset(md5, schema: dict | None, profile: dict, context: str | None,
             name: str | None) -> DatasetInput:
    schema_json = None if schema is None else json.dumps(schema)
    if schema_json is not None and len(schema_json) > MAX_DATASET_SCHEMA_LENGTH:
        schema_json = None  # a frame of very many columns: MLflow would refuse the dataset
    return DatasetInput(name=DEFAULT_NAME if name is None else name, digest=md5.hexdigest()[:8],
                        source_type=CODE_SOURCE, source=_code_source(), schema=schema_json,
                        profile=json.dumps(profile), context=context)


def _code_source() -> str:
    """MLflow's ``CodeDatasetSource`` JSON: the system tags of the code that logged it."""
    tags = system_tags()
    return json.dumps({"tags": {key: tags[key] for key in _SOURCE_TAGS if key in tags}})


def _kind(data: Any) -> str | None:
    """``numpy``, ``pandas``, ``sparse`` or None, without importing any of them."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(data, numpy.ndarray):
        return "numpy"
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, (pandas.DataFrame, pandas.Series)):
        return "pandas"
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(data):
        return "sparse"
    return None


def _product(shape: Iterable[int]) -> int:
    size = 1
    for dimension in shape:
        size *= int(dimension)
    return size


def _sizes(data: Any) -> dict[str, Any]:
    """Shape, size and bytes, as MLflow's NumpyDataset profile reads them (a sparse matrix
    as the dense array MLflow makes of it; a frame's bytes are its columns')."""
    shape = [int(dimension) for dimension in data.shape]
    size = _product(shape)
    kind = _kind(data)
    if kind == "sparse":
        nbytes = size * data.dtype.itemsize
    elif kind == "pandas" and data.ndim == 2:
        nbytes = int(data.memory_usage(index=False).sum())
    else:
        nbytes = int(data.nbytes)
    return {"shape": shape, "size": size, "nbytes": nbytes}


def _schema_json(data: Any) -> str | None:
    """MLflow's ``Schema.to_json`` of ``data`` (None where it has none)."""
    schema = schema_of(data)
    return None if schema is None else json.dumps(schema)


def _hash_into(md5, data: Any) -> None:
    """Shape, type and a sample of ``data`` into ``md5`` (see the module doc)."""
    kind = _kind(data)
    if kind == "pandas":
        _hash_frame(md5, data)
    elif kind == "sparse":
        md5.update(repr(("sparse", data.format, tuple(data.shape), data.dtype.str)).encode())
        for attribute in _SPARSE_ARRAYS:
            stored = getattr(data, attribute, None)
            if stored is not None and hasattr(stored, "dtype") and stored.dtype.kind != "O":
                md5.update(_array_sample(stored).tobytes())
    else:
        md5.update(repr(("ndarray", tuple(data.shape), data.dtype.str)).encode())
        sample = _array_sample(data)
        if data.dtype.kind == "O":  # the bytes would be addresses
            md5.update("\x1f".join(map(repr, sample.tolist())).encode())
        else:
            md5.update(sample.tobytes())


def _array_sample(array: Any):
    """The first :data:`SAMPLE_ELEMENTS` elements in C order, copying no more than them."""
    import numpy

    array = numpy.asarray(array)  # a view: a numpy.matrix would stay two-dimensional
    if array.flags.c_contiguous:
        return array.reshape(-1)[:SAMPLE_ELEMENTS]
    return array.flat[:SAMPLE_ELEMENTS]


def _hash_frame(md5, data: Any) -> None:
    import pandas

    md5.update(repr(("pandas", tuple(data.shape),
                     [str(c) for c in (data.columns if data.ndim == 2 else [data.name])],
                     [str(t) for t in (data.dtypes if data.ndim == 2 else [data.dtype])])).encode())
    sample = data.head(SAMPLE_ROWS)
    try:
        hashed = pandas.util.hash_pandas_object(sample)
    except TypeError:  # cells that cannot be hashed (lists): their text
        hashed = pandas.util.hash_pandas_object(sample.astype(str))
    md5.update(hashed.to_numpy().tobytes())
