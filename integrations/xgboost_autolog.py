"""Autologging for XGBoost: ``xgboost.train``, ``xgboost.cv`` and the scikit-learn API.

What a training logs, under MLflow's names:

* params: the booster params, then the train arguments with their defaults
  (``num_boost_round``, ``early_stopping_rounds``, ``maximize``, ``verbose_eval``, ...;
  not the data, callables or callbacks), as MLflow does;
* metrics: one point per iteration for every eval set and metric, ``<eval>-<metric>``
  (``@`` becomes ``_at_``, as in MLflow) with step = iteration, from a
  ``TrainingCallback`` added to the call's ``callbacks`` (found by binding the call's
  signature, never by position; the caller's list is not modified). ``xgboost.cv`` logs
  ``<eval>-<metric>-mean`` and ``-std``, the names of its result columns;
* early stopping (``early_stopping_rounds`` or an ``EarlyStopping`` callback):
  ``best_iteration``, ``stopped_iteration``, and every eval metric of the best iteration
  again one step after the last iteration, as MLflow does;
* the model: ``xgboost.train``'s Booster, or the scikit-learn API's fitted estimator, as
  ``model`` in MLflow's format (``mlflow.xgboost`` and ``mlflow.pyfunc`` load it), saved
  off the training thread (:mod:`autolog.models`; the options ``log_models``,
  ``log_input_examples``, ``log_model_signatures``, ``registered_model_name``, and
  ``monitor``/``mode``/``threshold`` for ``log_models="best"``, with an eval metric
  named as logged here, e.g. ``validation_0-logloss``). The signature and input example
  come from the scikit-learn API's ``X`` and ``y``; a ``DMatrix`` gets none (its feature
  types do not say float32 from float64). ``xgboost.cv`` logs no model;
* feature importance, for each of the ``importance_types`` (``weight`` and ``gain`` by
  default): the artifacts ``feature_importance_<type>.json`` and ``.png``, as MLflow
  logs them (see :mod:`._xgboost_importance`). Deprecated, to be dropped in the next
  release: the tags ``feature_importance_<type>``, a JSON object of feature ->
  importance, most important first, cut to the tag size limit, kept one release for
  dashboards that read them.

The scikit-learn API (``XGBClassifier``, ``XGBRegressor``, ``XGBRanker``, ...) is one fit
and one run, logged here: the fit owns the run (tags ``estimator_name`` and
``estimator_class``), the ``xgboost.train`` it calls logs into it, and the scikit-learn
integration leaves these fits alone. The params ``get_params()`` leaves at ``None``
(XGBoost's defaults: ``learning_rate``, ``max_depth``, ...) are logged with the value the
booster actually used, read from its config after training (``learning_rate`` 0.3); the
tag ``autolog.xgboost.params_from_booster`` lists them, so the ``None`` of the call is not
silently lost. MLflow logs them as ``None``. Those values are read from the layout of
``Booster.save_config()``'s JSON (its ``learner`` section), which XGBoost does not
promise: a probe checks it once as the integration is enabled, and without it they are
logged as ``None``, as MLflow logs them (one warning).
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from autolog_integrations import _xgboost_importance as importance

from autolog.datasets import SAMPLE_ELEMENTS, DatasetInput, describe_tensor, log_if_supported
from autolog.integration import Integration, Probe
from autolog.models.options import MODEL_OPTIONS, log_fitted
from autolog.patching import current_owner, outermost
from autolog.run import Run, user_call_site
from autolog.validation import MAX_TAG_VALUE_LENGTH

FROM_BOOSTER_TAG = "autolog.xgboost.params_from_booster"
BOOSTER_PARAMS = "the values the booster used for params given as None"
# arguments of train/cv that are data, callables or callbacks, not params (MLflow's list)
_NOT_PARAMS = frozenset({"params", "dtrain", "evals", "obj", "feval", "evals_result",
                         "xgb_model", "callbacks", "learning_rates", "folds", "fpreproc"})


class XGBoostIntegration(Integration):
    name = "xgboost"
    modules = ("xgboost",)
    supported = ">=2.1.1,<3.3"  # xgboost-cpu 2.1.1 (the first of that name) to 3.2.x
    probes = (
        Probe(BOOSTER_PARAMS, "the layout of Booster.save_config() that autolog reads",
              lambda xgboost: _booster_config_readable(xgboost)),
    )
    default_options = {
        "importance_types": ("weight", "gain"),
        "log_datasets": True,  # train and eval data as MLflow dataset inputs (MLflow's option)
        **MODEL_OPTIONS,
    }

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # .sklearn_fit: the run of the XGBModel.fit running

    def patch(self, module: ModuleType) -> None:
        import xgboost.sklearn
        import xgboost.training

        self.callback_class = _callback_class(xgboost)
        for function, wrapper in (("train", self._on_train), ("cv", self._on_cv)):
            for owner in (module, xgboost.training, xgboost.sklearn):
                if function in vars(owner):
                    self.patcher.wrap(owner, function, wrapper)
        stack = [xgboost.sklearn.XGBModel]
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if cls.__module__ == xgboost.sklearn.__name__ and "fit" in vars(cls):
                self.patcher.wrap(cls, "fit", self._on_sklearn_fit)

    # -- the wrappers -----------------------------------------------------------------------

    def _on_sklearn_fit(self, wrapped, instance, args, kwargs):
        if current_owner() is not None:
            return wrapped(*args, **kwargs)
        with outermost(self.name), self.fit_run() as run:
            if run is None:
                return wrapped(*args, **kwargs)
            call_site = "<unknown>"
            with self.guard():
                cls = type(instance)
                run.set_tags({"estimator_name": cls.__name__,
                              "estimator_class": f"{cls.__module__}.{cls.__name__}"})
                call_site = user_call_site()
            if self.options["log_datasets"]:
                with self.guard():
                    _log_fit_data(run, wrapped, args, kwargs)
            self._local.sklearn_fit = (run, call_site)
            try:
                result = wrapped(*args, **kwargs)
            finally:
                self._local.sklearn_fit = None
            with self.guard():
                _remember_fitted(instance, run)
            with self.guard():
                X = args[0] if args else kwargs.get("X")
                y = args[1] if len(args) > 1 else kwargs.get("y")
                log_fitted(run, instance, self.options, inputs=X, outputs=y)
            return result

    def _on_train(self, wrapped, instance, args, kwargs):
        return self._training(wrapped, args, kwargs, cv=False)

    def _on_cv(self, wrapped, instance, args, kwargs):
        return self._training(wrapped, args, kwargs, cv=True)

    def _training(self, wrapped, args, kwargs, cv: bool):
        sklearn_fit = getattr(self._local, "sklearn_fit", None)
        if sklearn_fit is not None and not cv:  # the train call of an XGBModel.fit
            self._local.sklearn_fit = None
            # its model is the estimator, logged by _on_sklearn_fit, not this Booster;
            # its data: the fit's X, y and eval_set
            return _Training(self, sklearn_fit[0], wrapped, cv, sklearn_fit[1],
                             logs_booster=False).call(args, kwargs)
        if current_owner() is not None:
            return wrapped(*args, **kwargs)
        with outermost(self.name), self.fit_run() as run:
            if run is None:
                return wrapped(*args, **kwargs)
            return _Training(self, run, wrapped, cv, user_call_site(), logs_booster=not cv).call(
                args, kwargs)


class _Training:
    """One logged ``train``/``cv`` call: params before, the callback during, the rest after."""

    def __init__(self, integration: XGBoostIntegration, run: Run, function: Callable, cv: bool,
                 call_site: str, logs_booster: bool) -> None:
        self.integration, self.run, self.function, self.cv = integration, run, function, cv
        # A train of its own (not cv, not a scikit-learn fit's inner one) logs its Booster,
        # and its dtrain and evals as dataset inputs (a scikit-learn fit logs its X, y).
        self.call_site, self.logs_booster = call_site, logs_booster
        self.callback = None
        self.unset: list[str] = []  # booster params given as None: logged after training

    def call(self, args: tuple, kwargs: dict):
        call_args, call_kwargs, bound, user_callbacks = args, kwargs, None, []
        with self.integration.guard():
            bound = _signature(self.function).bind(*args, **kwargs)
            self._log_params(bound)
            user_callbacks = list(bound.arguments.get("callbacks") or ())
            callback = self.integration.callback_class(self.integration, self.run, self.cv)
            # first, so that a callback that stops training cannot keep it from the last point
            bound.arguments["callbacks"] = [callback, *user_callbacks]
            call_args, call_kwargs = bound.args, bound.kwargs
            self.callback = callback
        if self.logs_booster and bound is not None and self.integration.options["log_datasets"]:
            with self.integration.guard():
                _log_dmatrices(self.run, bound)
        try:
            result = self.function(*call_args, **call_kwargs)
        except BaseException:
            if self.unset:
                with self.integration.guard():
                    self._log({key: None for key in self.unset})
            raise
        if self.callback is not None:
            with self.integration.guard():
                self._after(result, bound, user_callbacks)
        if self.logs_booster:
            with self.integration.guard():
                log_fitted(self.run, result, self.integration.options)
        return result

    def _log(self, params: dict[str, Any]) -> None:
        self.run.log_autolog_params(params, self.integration.name, self.call_site)

    def _log_params(self, bound: inspect.BoundArguments) -> None:
        booster_params = _as_dict(bound.arguments.get("params"))
        self.unset = [key for key, value in booster_params.items() if value is None]
        self._log({key: value for key, value in booster_params.items() if value is not None})
        self._log({name: bound.arguments.get(name, parameter.default)
                   for name, parameter in bound.signature.parameters.items()
                   if name not in _NOT_PARAMS})

    def _after(self, result: Any, bound: inspect.BoundArguments, user_callbacks: list) -> None:
        import xgboost

        booster = None if self.cv else result
        if self.unset:
            resolved = {}
            if booster is not None and self.integration.feature_on(BOOSTER_PARAMS):
                resolved = _effective_params(booster, self.unset)
            self._log({key: resolved.get(key) for key in self.unset})
            if resolved:
                self.run.set_tags({FROM_BOOSTER_TAG: ", ".join(sorted(resolved))})
        early_stopping = bound.arguments.get("early_stopping_rounds") or any(
            isinstance(callback, xgboost.callback.EarlyStopping) for callback in user_callbacks)
        if early_stopping:
            best = self.callback.best_iteration if self.cv else getattr(booster, "best_iteration", None)
            self._log_best_iteration(best)
        if booster is not None:
            by_kind = {kind: found for kind in self.integration.options["importance_types"] or ()
                       if (found := importance.scores(booster, kind)) is not None}
            if by_kind:
                importance.log_later(self.run, by_kind)
                self.run.set_tags({f"feature_importance_{kind}": _importance_tag(found)  # deprecated
                                   for kind, found in by_kind.items()})

    def _log_best_iteration(self, best: int | None) -> None:
        callback = self.callback
        if callback.last_epoch is None:
            return
        log = self.run.log_metric
        log("stopped_iteration", callback.last_epoch)
        if best is None:
            return
        log("best_iteration", best)
        index = best - callback.first_epoch
        step = callback.last_epoch + 1
        for key, values in callback.series():
            if 0 <= index < len(values):
                callback.log_point(key, values[index], step)


def _callback_class(xgboost: ModuleType) -> type:
    """The ``TrainingCallback`` that logs every eval metric at every iteration."""

    class AutologCallback(xgboost.callback.TrainingCallback):
        def __init__(self, integration: XGBoostIntegration, run: Run, cv: bool) -> None:
            super().__init__()
            self.integration, self.run, self.cv = integration, run, cv
            self.first_epoch: int | None = None
            self.last_epoch: int | None = None
            self.best_iteration: int | None = None
            self.history: dict = {}
            self._keys: dict[tuple[str, str], str] = {}

        def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
            with self.integration.guard():
                if self.first_epoch is None:
                    self.first_epoch = epoch
                self.last_epoch = epoch
                self.history = evals_log
                for key, values in self.series():
                    self.log_point(key, values[-1], epoch)
            return False

        def after_training(self, model):
            with self.integration.guard():
                self._catch_up()
            if self.cv:  # xgboost.cv returns no booster: read early stopping's result here
                with self.integration.guard():
                    try:
                        self.best_iteration = int(model.best_iteration)
                    except (AttributeError, TypeError, ValueError):
                        self.best_iteration = None  # no early stopping in this run
            return model

        def _catch_up(self) -> None:
            """Log the iterations the evals log holds but this callback was not called for.
            XGBoost 2.1 calls the callbacks in the order of a set and stops at the first
            that asks to stop, so once EarlyStopping comes first, the last iteration's
            values reach the log (the same dict, filled in place) and not this callback."""
            if self.first_epoch is None:
                return
            logged = self.last_epoch - self.first_epoch + 1
            for key, values in self.series():
                for index in range(logged, len(values)):
                    self.log_point(key, values[index], self.first_epoch + index)
                    self.last_epoch = max(self.last_epoch, self.first_epoch + index)

        def series(self):
            """``(metric key, values so far)`` for every eval set and metric."""
            keys = self._keys
            for data, metrics in self.history.items():
                for metric, values in metrics.items():
                    key = keys.get((data, metric))
                    if key is None:
                        key = keys[(data, metric)] = f"{data}-{metric}".replace("@", "_at_")
                    yield key, values

        def log_point(self, key: str, value: Any, step: int) -> None:
            if self.cv:  # (mean, std)
                self.run.log_metric(f"{key}-mean", value[0], step)
                self.run.log_metric(f"{key}-std", value[1], step)
            else:
                self.run.log_metric(key, value, step)

    return AutologCallback


_signatures: dict[Callable, inspect.Signature] = {}


def _signature(function: Callable) -> inspect.Signature:
    signature = _signatures.get(function)
    if signature is None:
        signature = _signatures[function] = inspect.signature(function)
    return signature


def _as_dict(params: Any) -> dict[str, Any]:
    """Booster params as a dict; a list of pairs may repeat a key (``eval_metric``)."""
    if params is None:
        return {}
    if isinstance(params, dict):
        return dict(params)
    merged: dict[str, Any] = {}
    for key, value in params:
        if key in merged:
            previous = merged[key]
            merged[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            merged[key] = value
    return merged


def _effective_params(booster: Any, keys: list[str]) -> dict[str, Any]:
    """The values the booster used for ``keys``, from its saved config."""
    config = json.loads(booster.save_config())
    learner = config.get("learner", {})
    found: dict[str, Any] = {}
    metrics = [m.get("name") for m in learner.get("metrics", []) if isinstance(m, dict)]
    if metrics:
        found["eval_metric"] = metrics[0] if len(metrics) == 1 else metrics
    _collect_leaves(config, found)
    resolved = {}
    for key in keys:
        value = found.get(key)
        if value is not None and value != "":
            resolved[key] = _readable(value)
    return resolved


def _booster_config_readable(xgboost: ModuleType) -> bool:
    """Whether :func:`_effective_params` reads the params of a one-tree booster back."""
    import numpy

    data = xgboost.DMatrix(numpy.array([[0.0], [1.0]]), label=numpy.array([0.0, 1.0]))
    params = {"max_depth": 2, "eval_metric": "logloss", "nthread": 1}
    booster = xgboost.train(params, data, num_boost_round=1)
    return _effective_params(booster, list(params)) == params


def _collect_leaves(node: Any, found: dict[str, Any]) -> None:
    """Every ``name: "value"`` of the config, the first occurrence of each name winning."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                found.setdefault(key, value)
            else:
                _collect_leaves(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_leaves(item, found)


def _readable(value: Any) -> Any:
    """A config string as the number it means: ``"6"`` as 6, ``"[5.05E-1]"`` (a one-element
    vector) as 0.505, and ``"0.300000012"`` (a float32 printed with 9 digits) as 0.3."""
    import numpy

    if not isinstance(value, str):
        return value
    text = value[1:-1] if value.startswith("[") and value.endswith("]") and "," not in value else value
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return value
    digits = re.split("[eE]", text)[0].lstrip("+-").replace(".", "").lstrip("0")
    return float(str(numpy.float32(number))) if len(digits) <= 9 else number


def _importance_tag(scores: dict[str, Any]) -> str:
    """The deprecated tag (to be dropped next release): ``scores`` as JSON, most important
    first, with the least important features left out when the whole would exceed a tag's
    size. Per-class scores (gblinear's) are ranked by their sum."""
    def total(value: Any) -> float:
        return float(sum(value)) if isinstance(value, list) else float(value)

    pieces = [f"{json.dumps(name)}: {json.dumps(value)}"
              for name, value in sorted(scores.items(), key=lambda item: -total(item[1]))]
    size, kept = 2, 0
    for piece in pieces:
        size += len(piece) + (2 if kept else 0)
        if size > MAX_TAG_VALUE_LENGTH:
            break
        kept += 1
    return "{" + ", ".join(pieces[:kept]) + "}"


def _log_fit_data(run: Run, fit: Callable, args: tuple, kwargs: dict) -> None:
    """A scikit-learn-API fit's ``X``, ``y`` (``train``) and each ``eval_set`` pair (``eval``,
    named ``validation_<i>`` as XGBoost names its metrics) as dataset inputs."""
    arguments = inspect.signature(fit).bind_partial(*args, **kwargs).arguments
    log_if_supported(run, arguments.get("X"), arguments.get("y"), context="train")
    for index, pair in enumerate(arguments.get("eval_set") or ()):
        log_if_supported(run, pair[0], pair[1], context="eval", name=f"validation_{index}")


def _log_dmatrices(run: Run, bound: inspect.BoundArguments) -> None:
    """``train``'s ``dtrain`` (``train``) and each of its ``evals`` (``eval``, under its
    name) as dataset inputs, as MLflow's autologging records them."""
    inputs = []
    dtrain = bound.arguments.get("dtrain")
    if dtrain is not None:
        inputs.append(_dmatrix_input(dtrain, "train", None))
    for dmatrix, name in bound.arguments.get("evals") or ():
        inputs.append(_dmatrix_input(dmatrix, "eval", str(name)))
    run.log_inputs(inputs)


def _dmatrix_input(dmatrix: Any, context: str, name: str | None) -> DatasetInput:
    """A DMatrix described without reading its data: its shape, feature names and types,
    and its first labels identify it; MLflow describes one as the float32 array of its
    features (``DMatrix.get_data``), so the schema and profile say the same."""
    import numpy

    shape = (int(dmatrix.num_row()), int(dmatrix.num_col()))
    labels = numpy.asarray(dmatrix.get_label())[:SAMPLE_ELEMENTS]
    identity = [json.dumps([dmatrix.feature_names, dmatrix.feature_types]).encode(),
                labels.tobytes()]
    return describe_tensor(shape, "float32", 4, identity, context=context, name=name)


def _remember_fitted(model: Any, run: Run) -> None:
    from autolog_integrations.sklearn_autolog import remember_fitted

    remember_fitted(model, run)

