"""Post-training metrics: a ``sklearn.metrics`` call on predictions of an autologged model.

As MLflow does: ``accuracy_score(y_test, model.predict(X_test))`` logs
``accuracy_score_X_test`` to the run ``model`` was fitted in, and ``model.score(X_test,
y_test)`` logs ``LogisticRegression_score_X_test``. The dataset part is the name of the
variable the user passed to ``predict`` (``unknown_dataset`` when it has none); a second
object under the same name becomes ``X_test-2``, and a second call of the same metric on
the same run ``accuracy_score-2_X_test``.

How: ``predict``-like methods of a model fitted under autolog remember the id of what they
return (until it is garbage-collected); a patched metric function looks its arguments up
there. Nothing is remembered for models fitted without autolog, so the wrappers cost a
dict lookup on every other call. The metric lands in the model's run whether it is still
open (queued like any metric) or has ended (written straight to its store, since an ended
run takes no more queued points). The metric functions are wrapped in place (see
``SklearnIntegration._wrap_function``), so a name imported before ``autolog()`` counts too.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
import weakref
from numbers import Number
from typing import Any

from autolog.patching import current_owner, guard
from autolog.run import Run
from autolog.validation import check_metric_key

PREDICT_METHODS = ("predict", "predict_proba", "predict_log_proba", "transform")
# sklearn.metrics names that are not metrics of predictions (MLflow's list)
_NOT_METRICS = frozenset({"check_scoring", "get_scorer", "make_scorer", "get_scorer_names"})
_INTERNAL = ("autolog", "autolog_integrations", "wrapt")
_UNKNOWN = "unknown_dataset"

_fitted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> Run
_predictions: dict[int, tuple[Run, str]] = {}  # id(prediction) -> (run, dataset name)
_dataset_ids: dict[tuple[str, str], dict[int, int]] = {}  # (run id, name) -> {id: index}
_metric_calls: dict[tuple[str, str], int] = {}  # (run id, metric name) -> calls so far
_local = threading.local()  # .busy: inside a predict/metric/score we are tracking
_state = {"enabled": False}


def enable(on: bool) -> None:
    _state["enabled"] = on
    if not on:
        reset()


def reset() -> None:
    _fitted.clear()
    _predictions.clear()
    _dataset_ids.clear()
    _metric_calls.clear()


def remember_fitted(model: Any, run: Run) -> None:
    """``model`` was fitted into ``run``: its predictions can be scored into that run."""
    if _state["enabled"]:
        try:
            _fitted[model] = run
        except TypeError:  # an estimator that cannot be weakly referenced: not tracked
            pass


def metric_names(metrics_module) -> list[str]:
    """The functions of ``sklearn.metrics`` that compute a metric (as MLflow patches them)."""
    names = []
    for name in getattr(metrics_module, "__all__", ()):
        function = getattr(metrics_module, name, None)
        if (name not in _NOT_METRICS and not name.startswith("plot_")
                and callable(function) and not isinstance(function, type)):
            names.append(name)
    return names


def _model_run(model: Any) -> Run | None:
    if not _fitted or current_owner() is not None or getattr(_local, "busy", False):
        return None
    try:
        return _fitted.get(model)
    except TypeError:
        return None


def _call_busy(wrapped, args, kwargs):
    """Call through with tracking off, so nested predicts and metrics are not logged."""
    _local.busy = True
    try:
        return wrapped(*args, **kwargs)
    finally:
        _local.busy = False


def on_predict(wrapped, instance, args, kwargs):
    run = _model_run(instance)
    if run is None:
        return wrapped(*args, **kwargs)
    result = _call_busy(wrapped, args, kwargs)
    with guard("sklearn"):
        try:
            weakref.finalize(result, _predictions.pop, id(result), None)
        except TypeError:  # a list or a tuple: it cannot be tracked
            return result
        _predictions[id(result)] = (run, _dataset_name(run, _first_arg(args, kwargs),
                                                       sys._getframe(1)))
    return result


def on_score(wrapped, instance, args, kwargs):
    run = _model_run(instance)
    if run is None:
        return wrapped(*args, **kwargs)
    value = _call_busy(wrapped, args, kwargs)
    with guard("sklearn"):
        if _loggable(value):
            name = _dataset_name(run, _first_arg(args, kwargs), sys._getframe(1))
            _log(run, f"{type(instance).__name__}_score", name, value)
    return value


def on_metric(wrapped, instance, args, kwargs):
    if not _predictions or current_owner() is not None or getattr(_local, "busy", False):
        return wrapped(*args, **kwargs)
    value = _call_busy(wrapped, args, kwargs)
    with guard("sklearn"):
        if _loggable(value):
            for arg in (*args, *kwargs.values()):
                found = _predictions.get(id(arg)) if arg is not None else None
                if found is not None:
                    run, name = found
                    _log(run, wrapped.__name__, name, value)
                    break
    return value


def _first_arg(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("X", next(iter(kwargs.values()), None))


def _loggable(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)  # numpy's bool is no Number


def _log(run: Run, metric: str, dataset: str, value: Any) -> None:
    calls = _metric_calls.get((run.id, metric), 0)
    _metric_calls[(run.id, metric)] = calls + 1
    key = check_metric_key(f"{_with_index(metric, calls)}_{dataset}")
    if run.final_status is None:
        run.log_metric(key, value)
    else:
        run.store.log_batch(run.id, metrics=[(key, float(value), int(time.time() * 1000), 0)])


def _with_index(name: str, index: int) -> str:
    return name if index == 0 else f"{name}-{index + 1}"


def _dataset_name(run: Run, dataset: Any, frame) -> str:
    """The variable name of ``dataset`` in the user's code, numbered per distinct object."""
    name = _variable_name(dataset, frame)
    seen = _dataset_ids.setdefault((run.id, name), {})
    return _with_index(name, seen.setdefault(id(dataset), len(seen)))


def _variable_name(value: Any, frame) -> str:
    """MLflow's rule: in the first frame outside autolog, the local bound to ``value``;
    if ``value`` was an argument of that frame's function, look in its caller instead."""
    if value is None:
        return _UNKNOWN
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INTERNAL:
        frame = frame.f_back
    while frame is not None:
        local_vars = frame.f_locals
        if any(argument is value for argument in _arguments(frame.f_code, local_vars)):
            frame = frame.f_back  # passed in by the caller: name it as the caller does
            continue
        for name, candidate in local_vars.items():
            if candidate is value:
                return name
        break
    return _UNKNOWN


def _arguments(code, local_vars: dict) -> list:
    """The values a frame's function was called with (``inspect.getargvalues``, cheaply)."""
    n_named = code.co_argcount + code.co_kwonlyargcount
    names = code.co_varnames
    values = [local_vars.get(name) for name in names[:n_named]]
    if code.co_flags & inspect.CO_VARARGS:
        values.extend(local_vars.get(names[n_named], ()))
        n_named += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        values.extend(local_vars.get(names[n_named], {}).values())
    return values
