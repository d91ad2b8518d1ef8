"""Autologging for scikit-learn: the outermost fit of every estimator, searches, metrics.

Which estimators: no list. When scikit-learn is imported, every class already derived
from ``BaseEstimator`` is walked (``__subclasses__``, recursively), with every class in
their MROs and the mixins of ``sklearn.base``; a class defined later, a third-party one
included, is patched as its class statement finishes, by a hook on ``__init_subclass__``.
Only methods a class defines itself are wrapped (``fit``, ``fit_transform``,
``fit_predict``; ``predict``-like methods and ``score`` for post-training metrics), so an
inherited method is wrapped once, where it is defined.

Which fit logs: the outermost autologged call of the thread (:func:`outermost`). A
Pipeline logs, its steps do not; ``super().fit()`` is part of the fit that called it.
scikit-learn runs the inner fits of searches and meta-estimators through joblib, in
worker threads (threading backend, ``prefer="threads"``) or processes, where the
thread-local owner is not visible. So a task given to scikit-learn's ``Parallel`` while
an autologged call owns the thread carries that owner to the worker, and runs there as
part of the call: no run of its own, for it or anything it fits. Loky worker processes
start without autolog; forked ones inherit the forking thread's owner.
``cross_val_score`` and its siblings (MLflow's list) own their call, so they log
nothing, as with MLflow. They and the ``sklearn.metrics`` functions are wrapped in place
(:meth:`SklearnIntegration._wrap_function`), so a name imported before ``autolog()`` counts.

Estimators of a framework that has its own integration (XGBoost's ``XGBClassifier``...)
are fitted and logged by that integration; this one never wraps their fit methods.
Preprocessing classes are not logged on their own (the ``exclude`` option; MLflow's list),
only as part of a Pipeline.

After the fit (and its metrics), the fitted estimator is logged as ``model`` in MLflow's
format, and a refit search's ``best_estimator_`` as ``best_estimator`` (MLflow's names;
the model options of :data:`MODEL_OPTIONS`), then its diagnostics are queued
(:mod:`._sklearn_diagnostics`); both are saved on the model saver's thread.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import weakref
from numbers import Number
from types import FunctionType, ModuleType
from typing import Any

import wrapt
from autolog_integrations import _sklearn_diagnostics as diagnostics
from autolog_integrations import _sklearn_post_training as post_training
from autolog_integrations._sklearn_metrics import training_metrics

from autolog.datasets import log_if_supported
from autolog.integration import Integration, Probe
from autolog.lifecycle import INTEGRATION_TAG, start_run
from autolog.models.options import MODEL_OPTIONS, log_fitted
from autolog.patching import current_owner, outermost
from autolog.run import Run

FIT_METHODS = ("fit", "fit_transform", "fit_predict")
# helpers that fit a clone per fold: no run per fold (MLflow's list)
CROSS_VALIDATION = ("cross_validate", "cross_val_predict", "cross_val_score", "learning_curve",
                    "permutation_test_score", "validation_curve")
# data manipulation, not models: no run of their own (MLflow's list); a prefix of
# "<module>.<qualname>" of the estimator's class
EXCLUDED_BY_DEFAULT = ("sklearn.preprocessing", "sklearn.impute", "sklearn.feature_extraction",
                       "sklearn.feature_selection",
                       "sklearn.compose._column_transformer.ColumnTransformer")
_SEARCH_BASE = "sklearn.model_selection._search.BaseSearchCV"
_LANGUAGE_MODULES = frozenset({"builtins", "abc", "typing"})  # object, Generic, ...: left alone


_TASK_OWNER = "_autolog_owner"  # set on a joblib task made under an owner: a plain str

# Features that read scikit-learn's private internals (see Integration.probes)
JOBLIB_TASKS = "fits in joblib workers as part of the autologged call"
EARLY_IMPORTED_METRICS = "post-training metrics of functions imported before autolog()"
SEARCH_CHILD_RUNS = "search child runs and best_* values"


def _class_named(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return isinstance(getattr(importlib.import_module(module), name), type)


def _inner_cell(function: Any) -> Any:
    """The closure cell through which a ``validate_params`` wrapper (scikit-learn's public
    functions) calls the function it wraps, or None (see ``_wrap_function``)."""
    inner = getattr(function, "__wrapped__", None)
    cells = getattr(function, "__closure__", None) or ()
    return next((cell for cell in cells if inner is not None and cell.cell_contents is inner),
                None)


def remember_fitted(model: Any, run: Run) -> None:
    """For other integrations (XGBoost's sklearn API): ``model`` was fitted into ``run``,
    so post-training metrics on its predictions go there (if this integration is on)."""
    from autolog.integration import get

    integration = get(SklearnIntegration.name)
    if integration is not None and integration.enabled \
            and integration.options["log_post_training_metrics"]:
        post_training.remember_fitted(model, run)


class SklearnIntegration(Integration):
    name = "sklearn"
    modules = ("sklearn", "sklearn.utils.parallel", "sklearn.metrics", "sklearn.model_selection")
    supported = ">=1.4,<1.10"  # 1.4.0 (CI's lowest-versions venv) to 1.9.x
    default_options = {
        "max_tuning_runs": 5,  # child runs of a search, best first; None: all
        # training_* metrics predict over the whole training set: for a model whose predict
        # costs as much as its fit (SVC, k-NN) they double the fit; False skips them
        "log_training_metrics": True,
        "log_post_training_metrics": True,
        "pos_label": None,  # binary precision/recall/F1 for this label instead of weighted
        "exclude": EXCLUDED_BY_DEFAULT,
        # confusion matrix, ROC and PR curves, cv_results.csv, estimator.html (drawn off
        # the training thread, from the training metrics' predictions)
        "log_diagnostics": True,
        "log_datasets": True,  # the training data as an MLflow dataset input (MLflow's option)
        **MODEL_OPTIONS,
    }
    probes = (
        Probe(JOBLIB_TASKS, "sklearn.utils.parallel._FuncWrapper.__call__",
              lambda parallel: callable(parallel._FuncWrapper.__call__)
              and callable(parallel.Parallel.__call__), "sklearn.utils.parallel"),
        Probe(EARLY_IMPORTED_METRICS, "the closure cell of validate_params' wrapper",
              lambda metrics: _inner_cell(metrics.accuracy_score) is not None,
              "sklearn.metrics"),
        Probe(SEARCH_CHILD_RUNS, _SEARCH_BASE, lambda _: _class_named(_SEARCH_BASE),
              "sklearn.model_selection"),
    )

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self._cells: list[tuple[Any, Any]] = []  # (closure cell, its original content)
        self._patched: weakref.WeakSet = weakref.WeakSet()
        self._claimed_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._claimed_packages: frozenset[str] | None = None
        self._class_lock = threading.RLock()
        self._hook = threading.local()  # .depth, .pending: classes being created

    # -- patching -----------------------------------------------------------------------

    def patch(self, module: ModuleType) -> None:
        if module.__name__ == "sklearn":
            self._patch_estimators()
        elif module.__name__ == "sklearn.metrics":
            for name in post_training.metric_names(module):
                self._wrap_function(module, name, post_training.on_metric)
            post_training.enable(True)
        elif module.__name__ == "sklearn.utils.parallel":
            if self.feature_on(JOBLIB_TASKS):
                self.patcher.wrap(module.Parallel, "__call__", _on_parallel_call)
                self.patcher.wrap(module._FuncWrapper, "__call__", _on_task)
        elif module.__name__ == "sklearn.model_selection":
            for name in CROSS_VALIDATION:
                if name in vars(module):
                    self._wrap_function(module, name, self._on_cross_validation)

    def unpatch(self) -> None:
        for cell, original in reversed(self._cells):
            cell.cell_contents = original
        post_training.enable(False)
        self._reset()

    def _wrap_function(self, module: ModuleType, name: str, wrapper) -> None:
        """Wrap a public function so that every name bound to it sees the wrapper, including
        ``from sklearn.metrics import accuracy_score`` run before ``autolog()``.

        scikit-learn's public functions are ``validate_params`` wrappers that call the
        function they wrap through a closure cell: that cell is wrapped in place (and put
        back by :meth:`unpatch`). Anything else is wrapped as a module attribute.
        """
        function = vars(module)[name]
        cell = _inner_cell(function)
        if cell is None:  # (a release without the cells: the probe said so, once)
            self.patcher.wrap(module, name, wrapper)
            return
        inner = cell.cell_contents
        cell.cell_contents = wrapt.FunctionWrapper(inner, wrapper)
        self._cells.append((cell, inner))

    def _patch_estimators(self) -> None:
        import sklearn.base

        base = sklearn.base.BaseEstimator
        roots = [base, *(obj for obj in vars(sklearn.base).values() if isinstance(obj, type))]
        with self._class_lock:
            stack, seen = roots, set()
            while stack:
                cls = stack.pop()
                if cls in seen:
                    continue
                seen.add(cls)
                self._patch_class(cls)
                stack.extend(type.__subclasses__(cls))

    def _patch_class(self, cls: type) -> None:
        """Wrap what ``cls`` and the classes of its MRO define themselves (once each)."""
        for klass in cls.__mro__:
            if klass in self._patched or klass.__module__ in _LANGUAGE_MODULES:
                continue
            self._patched.add(klass)
            own = vars(klass)
            if "__init_subclass__" in own:
                self.patcher.wrap(klass, "__init_subclass__", self._on_new_class)
            if not self._claimed(klass):
                for name in FIT_METHODS:
                    if _is_method(own.get(name)):
                        self.patcher.wrap(klass, name, self._on_fit)
            for name in post_training.PREDICT_METHODS:
                if _is_method(own.get(name)):
                    self.patcher.wrap(klass, name, post_training.on_predict)
            if _is_method(own.get("score")):
                self.patcher.wrap(klass, "score", post_training.on_score)

    def _on_new_class(self, wrapped, instance, args, kwargs):
        """``__init_subclass__``: patch the new class once every ``__init_subclass__`` of
        its bases has run, since some (scikit-learn's set_output) wrap its methods after
        calling ``super()``, and a patch made before would be wrapped over."""
        hook = self._hook
        hook.depth = getattr(hook, "depth", 0) + 1
        try:
            result = wrapped(*args, **kwargs)
        finally:
            hook.depth -= 1
        if isinstance(instance, type):
            pending = hook.__dict__.setdefault("pending", [])
            pending.append(instance)
            if hook.depth == 0:
                hook.pending = []
                with self.guard(), self._class_lock:
                    from sklearn.base import BaseEstimator

                    for cls in pending:
                        if issubclass(cls, BaseEstimator):
                            self._patch_class(cls)
        return result

    def _claimed(self, cls: type) -> bool:
        """Whether ``cls`` belongs to a framework another integration logs (its MRO has a
        class from that framework's package)."""
        try:
            known = self._claimed_cache.get(cls)
        except TypeError:
            known = None
        if known is None:
            if self._claimed_packages is None:
                from autolog.integration import registry

                self._claimed_packages = frozenset(
                    module.partition(".")[0]
                    for name, integration in registry.integrations().items() if name != self.name
                    for module in integration.modules
                )
            known = any(getattr(klass, "__module__", "").partition(".")[0] in self._claimed_packages
                        for klass in cls.__mro__)
            self._claimed_cache[cls] = known
        return known

    def _excluded(self, cls: type) -> bool:
        path = f"{cls.__module__}.{cls.__qualname__}"
        return any(path == prefix or path.startswith(prefix + ".")
                   for prefix in self.options["exclude"] or ())

    # -- the wrappers ---------------------------------------------------------------------

    def _on_fit(self, wrapped, instance, args, kwargs):
        if current_owner() is not None or instance is None or self._claimed(type(instance)):
            return wrapped(*args, **kwargs)
        with outermost(self.name):
            if self._excluded(type(instance)):
                return wrapped(*args, **kwargs)
            return self._logged_fit(wrapped, instance, args, kwargs)

    def _on_cross_validation(self, wrapped, instance, args, kwargs):
        """Own the call and log nothing."""
        if current_owner() is not None:
            return wrapped(*args, **kwargs)
        with outermost(self.name):
            return wrapped(*args, **kwargs)

    # -- what a fit logs ------------------------------------------------------------------

    def _logged_fit(self, wrapped, estimator, args, kwargs):
        with self.fit_run() as run:
            if run is None:
                return wrapped(*args, **kwargs)
            search = self._is_search(estimator)
            with self.guard():
                run.log_autolog_params(estimator.get_params(deep=not search), self.name)
                run.set_tags(_estimator_tags(estimator))
            if self.options["log_datasets"]:
                with self.guard():  # the training data, as an MLflow dataset input
                    X, y, _ = _fit_data(wrapped, args, kwargs)
                    log_if_supported(run, X, y, context="train")
            result = wrapped(*args, **kwargs)
            X = y = sample_weight = predictions = None
            with self.guard():
                X, y, sample_weight = _fit_data(wrapped, args, kwargs)
                predictions = self._log_training(run, estimator, search, X, y, sample_weight)
            # One snapshot for the model and its estimator.html (None: it cannot be pickled,
            # and logging the model says so, once).
            snapshot = diagnostics.snapshot(estimator) \
                if self.options["log_models"] or self.options["log_diagnostics"] else None
            with self.guard():  # after the metrics: log_models="best" compares them
                self._log_models(run, estimator, search, X, y, snapshot)
            if self.options["log_diagnostics"]:
                with self.guard():
                    diagnostics.log_diagnostics(run, estimator, y, sample_weight, predictions, search,
                                                snapshot)
            return result

    def _log_training(self, run: Run, estimator: Any, search: bool, X: Any, y: Any,
                      sample_weight: Any):
        """The training metrics (and a search's results); the classifier's predictions
        they were computed from, or None."""
        metrics, predictions = {}, None
        if self.options["log_training_metrics"]:
            metrics, predictions = training_metrics(estimator, X, y, sample_weight,
                                                    self.options["pos_label"])
        if search:
            self._log_search(run, estimator, metrics)
        for key, value in metrics.items():
            run.log_metric(key, value)
        if self.options["log_post_training_metrics"]:
            post_training.remember_fitted(estimator, run)
        return predictions

    def _log_models(self, run: Run, estimator: Any, search: bool, X: Any, y: Any,
                    snapshot: bytes | None) -> None:
        """The fitted estimator as ``model``; a search's refitted best one also as
        ``best_estimator`` (MLflow's names)."""
        log_fitted(run, estimator, self.options, inputs=X, outputs=y, name="model", snapshot=snapshot)
        if search and hasattr(estimator, "best_estimator_"):
            log_fitted(run, estimator.best_estimator_, self.options, inputs=X, outputs=y,
                       name="best_estimator")

    def _is_search(self, estimator: Any) -> bool:
        """A search estimator (a subclass of BaseSearchCV, by name: no import), where the
        probe found that class."""
        return self.feature_on(SEARCH_CHILD_RUNS) and any(
            f"{klass.__module__}.{klass.__qualname__}" == _SEARCH_BASE
            for klass in type(estimator).__mro__)

    def _log_search(self, run: Run, search: Any, metrics: dict[str, float]) -> None:
        """``best_cv_score``, ``best_<param>`` and one child run per top candidate."""
        if hasattr(search, "best_score_"):
            metrics["best_cv_score"] = search.best_score_
        if hasattr(search, "best_params_"):
            run.log_autolog_params({f"best_{k}": v for k, v in search.best_params_.items()},
                                   self.name)
        if hasattr(search, "cv_results_"):
            self._log_candidates(search)

    def _log_candidates(self, search: Any) -> None:
        import numpy as np

        results = search.cv_results_
        rows = range(len(results["params"]))
        limit = self.options["max_tuning_runs"]
        if limit is not None:  # the best first, by the first ranking (MLflow's order)
            rank = "rank_test_score" if "rank_test_score" in results else next(
                (key for key in results if key.startswith("rank_test_")), None)
            order = np.argsort(np.asarray(results[rank]), kind="stable") if rank else rows
            rows = list(order)[:max(0, limit)]
        if len(rows) == 0:
            return
        seed = search.estimator
        base = seed.get_params(deep=not self._is_search(seed))
        tags = {INTEGRATION_TAG: self.name, **_estimator_tags(seed)}
        columns = [key for key in results if not key.startswith(("param", "split"))]
        for row in rows:  # nested under the active run, the fit's, in its experiment
            child = start_run(nested=True, tags=tags)
            try:
                child.log_autolog_params({**base, **results["params"][row]}, self.name)
                for key in columns:
                    value = results[key][row]
                    if isinstance(value, Number) and not isinstance(value, bool):
                        child.log_metric(key, value)
            finally:  # the search succeeded (children are logged after it): FINISHED, even
                child.end()  # when autolog's own logging failed here (its guard warns)


def _on_parallel_call(wrapped, instance, args, kwargs):
    """``Parallel.__call__`` under an owner: tag each task with it (in this thread, before
    joblib hands the tasks to its workers)."""
    owner = current_owner()
    if owner is None:
        return wrapped(*args, **kwargs)
    iterable = args[0] if args else kwargs.pop("iterable")
    return wrapped(_tagged(iterable, owner), *args[1:], **kwargs)


def _tagged(iterable, owner: str):
    from sklearn.utils.parallel import _FuncWrapper

    for function, task_args, task_kwargs in iterable:
        if isinstance(function, _FuncWrapper):  # made by scikit-learn's delayed()
            setattr(function, _TASK_OWNER, owner)
        yield function, task_args, task_kwargs


def _on_task(wrapped, instance, args, kwargs):
    """A task in a joblib worker: run it as part of the autologged call that made it."""
    owner = vars(instance).get(_TASK_OWNER)
    if owner is None or current_owner() is not None:
        return wrapped(*args, **kwargs)
    with outermost(owner):
        return wrapped(*args, **kwargs)


def _is_method(attribute: Any) -> bool:
    """A function, or a method descriptor such as scikit-learn's ``available_if``."""
    return isinstance(attribute, FunctionType) or (
        hasattr(type(attribute), "__get__") and callable(getattr(attribute, "fn", None)))


def _estimator_tags(estimator: Any) -> dict[str, str]:
    cls = type(estimator)
    return {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__name__}"}


_fit_signatures: dict[Any, tuple[list[str], int | None]] = {}


def _fit_data(wrapped, args: tuple, kwargs: dict) -> tuple[Any, Any, Any]:
    """``X``, ``y`` and ``sample_weight`` of a fit call, found by the method's signature."""
    key = getattr(wrapped, "__func__", None) or getattr(wrapped, "func", wrapped)  # or partial
    known = _fit_signatures.get(key)
    if known is None:
        names = list(inspect.signature(wrapped).parameters)
        known = _fit_signatures[key] = (
            names[:2], names.index("sample_weight") if "sample_weight" in names else None)
    (x_name, *y_name), weight_at = known

    def argument(position: int, name: str | None):
        if len(args) > position:
            return args[position]
        return kwargs.get(name) if name else None

    sample_weight = argument(weight_at, "sample_weight") if weight_at is not None else None
    return argument(0, x_name), argument(1, y_name[0] if y_name else None), sample_weight

