"""The model flavors autolog saves, each with MLflow's own ``save_model``.

A flavor is found from the model's class hierarchy by module name, so nothing here
imports a framework until a model of it is saved (on the saver's thread).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

# MLflow warns at every scikit-learn or PyTorch save in a pickle format (it recommends skops,
# which refuses custom estimators and is not installed with scikit-learn, or torch.export's
# pt2, which needs an input example and fails on a forward with Python control flow).
# autolog chose cloudpickle, as MLflow's own autolog does, so that warning is not the
# user's to act on.
_PICKLE_ADVICE = ("Saving scikit-learn models in the pickle or cloudpickle format",
                  "Saving pytorch model by Pickle or CloudPickle format")


class _DropPickleAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PICKLE_ADVICE)


@dataclass(frozen=True)
class Flavor:
    name: str  # MLflow's flavor module: mlflow.<name>.save_model / load_model
    # top-level modules whose distributions the model requires (besides those its pickle
    # refers to: lightning, a Pipeline's XGBoost step, the user's own installed package)
    modules: tuple[str, ...]
    save_options: tuple[tuple[str, Any], ...] = ()

    def save(self, model: Any, path: str, **kwargs: Any) -> None:
        """``mlflow.<flavor>.save_model(model, path, ...)`` (imports MLflow: seconds the first
        time, so only ever on the saver's thread)."""
        module = importlib.import_module(f"mlflow.{self.name}")
        if self.name in ("sklearn", "pytorch"):
            logging.getLogger(f"mlflow.{self.name}").addFilter(_DROP_PICKLE_ADVICE)
        module.save_model(model, path, **dict(self.save_options), **kwargs)


_DROP_PICKLE_ADVICE = _DropPickleAdvice()

SKLEARN = Flavor("sklearn", ("sklearn", "cloudpickle", "numpy", "scipy"),
                 (("serialization_format", "cloudpickle"),))
XGBOOST = Flavor("xgboost", ("xgboost", "numpy", "scipy"))
# MLflow's default for PyTorch is now pt2 (torch.export), which needs an input example and
# traces forward; its own autolog saves with pickle, as here.
PYTORCH = Flavor("pytorch", ("torch", "cloudpickle", "numpy"), (("serialization_format", "pickle"),))

# (a class in the model's MRO, "<module>.<qualname>"; the flavor), the first match wins:
# XGBoost's scikit-learn classes are scikit-learn estimators too. A LightningModule is a
# torch.nn.Module, saved by MLflow's pytorch flavor.
_BY_CLASS = (
    ("xgboost.core.Booster", XGBOOST),
    ("xgboost.sklearn.XGBModel", XGBOOST),
    ("torch.nn.modules.module.Module", PYTORCH),
    ("sklearn.base.BaseEstimator", SKLEARN),
)


def flavor_of(model: Any) -> Flavor:
    """The flavor that saves ``model``; :class:`TypeError` for a model of none."""
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(model).__mro__}
    for name, flavor in _BY_CLASS:
        if name in names:
            return flavor
    raise TypeError(
        f"autolog.log_model saves scikit-learn estimators, XGBoost models, torch.nn.Module and "
        f"Lightning modules; got {type(model).__module__}.{type(model).__qualname__}")
