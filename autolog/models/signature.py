"""A model's signature, described from the training data.

MLflow infers a signature by predicting on an input example, on the training thread.
Here the fit's own ``X`` and ``y`` say it, as :mod:`autolog.schemas` reads them (dtypes
and shapes; a frame's first rows for its object columns and missing values). The result
is MLflow's JSON form of a schema (what ``Schema.to_json`` writes); the saver thread turns
it into MLflow's ``ModelSignature``.
"""

from __future__ import annotations

import json
from typing import Any

from autolog.schemas import schema_of


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
