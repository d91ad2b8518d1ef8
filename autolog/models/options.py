"""The model options every integration takes, and what an integration calls at the end
of a fit (:func:`log_fitted`)."""

from __future__ import annotations

import math
from typing import Any

from autolog.models import registry
from autolog.models.saver import MODES, BestOnly, ModelInfo, log_model
from autolog.models.signature import example_of, signature_of
from autolog.run import Run

MODEL_OPTIONS: dict[str, Any] = {
    "log_models": True,  # True, False, or "best": only a model that beats the experiment's best
    "log_input_examples": False,  # the first rows of the training input, saved with the model
    "log_model_signatures": True,  # read from the training data's dtypes and shapes
    "registered_model_name": None,  # register every logged model as a version of this name
    "monitor": None,  # log_models="best": the metric that decides
    "mode": "min",  # log_models="best": "min" or "max" is better
    "threshold": None,  # log_models="best": beat this value instead of the experiment's best
}


def check_model_options(options: dict[str, Any]) -> None:
    """Refuse, at ``autolog()``'s line, model options that could not work."""
    log_models = options.get("log_models", True)
    if log_models not in (True, False, "best"):
        raise ValueError(f'log_models must be True, False or "best", got {log_models!r}')
    if options.get("mode", "min") not in MODES:
        raise ValueError(f'mode must be "min" or "max", got {options["mode"]!r}')
    monitor = options.get("monitor")
    if log_models == "best" and (not isinstance(monitor, str) or not monitor):
        raise ValueError('log_models="best" needs monitor=<the metric name that decides>, '
                         'e.g. monitor="val_loss", mode="min"')
    threshold = options.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or math.isnan(threshold)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if options.get("registered_model_name") is not None:
        registry.check_name(options["registered_model_name"])


def log_fitted(run: Run, model: Any, options: dict[str, Any], *, inputs: Any = None,
               outputs: Any = None, name: str = "model", snapshot: bytes | None = None
               ) -> ModelInfo | None:
    """Log the model a fit made, as the integration's ``options`` say (None: not logged);
    ``snapshot``: its cloudpickle bytes, where the integration took them already."""
    log_models = options["log_models"]
    if not log_models:
        return None
    best = BestOnly(options["monitor"], options["mode"], options["threshold"]) \
        if log_models == "best" else None
    signature = signature_of(inputs, outputs) \
        if options["log_model_signatures"] and inputs is not None else None
    example = example_of(inputs) if options["log_input_examples"] and inputs is not None else None
    return log_model(run, model, name, signature=signature, input_example=example,
                     registered_model_name=options["registered_model_name"], best=best,
                     snapshot=snapshot)
