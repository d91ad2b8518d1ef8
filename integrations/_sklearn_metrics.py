"""MLflow's ``training_*`` metrics of a fitted scikit-learn estimator, computed cheaply.

The names and the definitions are MLflow's (``mlflow/sklearn/utils.py``): classifiers get
precision, recall and F1 (``average="weighted"``, or ``"binary"`` with ``pos_label``),
accuracy, and log loss and ROC AUC (``average="weighted"``, ``multi_class="ovo"``) where
the estimator has ``predict_proba``; regressors get MSE, RMSE, MAE and R²; every
estimator with a ``score`` gets ``training_score``. A metric that cannot be computed is
left out, as MLflow leaves it out.

Why a copy of scikit-learn's arithmetic: measured (``benchmarks/bench_sklearn_metrics.py``,
CPU time, three runs), scikit-learn's functions take 20-27 ms for the six classification
metrics of 20,000 binary rows, against 1.6-1.8 ms here and 36-66 ms for the
LogisticRegression fit they follow: a third of the fit or more, where autolog's budget is
5 %; with three classes the copy saves 13-14 ms, 8-10 % of the fit. Their
``config_context(skip_parameter_validation=True, assume_finite=True)`` saves under 2 ms
of that: the time goes into the work each function redoes on its own (34 ``np.unique``
calls per set of six metrics, a third of it, the target-type checks, one confusion
matrix per metric). So the common case (1-D labels, no ``pos_label``) is computed here
from one label encoding with numpy, the same arithmetic in the same order as
scikit-learn's, so the values agree to the last few ulps (tests compare them); anything
else (multilabel targets, multiclass or weighted ROC AUC, regressors, ...) calls
scikit-learn's own functions, as MLflow does, without their parameter validation.

Predictions are made once each: ``training_score`` reuses accuracy or R² when ``score``
is scikit-learn's default one, a forest's ``predict`` is the argmax of the
``predict_proba`` already computed, and a linear classifier's (LinearSVC, SGDClassifier,
Perceptron...) is the sign or argmax of its ``decision_function``, exactly as they do it.
A classifier's predictions are returned with its metrics (:class:`Predictions`), for the
diagnostic plots, which then predict nothing again.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

PREFIX = "training_"
_FOREST_CLASSIFIER = "sklearn.ensemble._forest.ForestClassifier"  # by name: no import
_LINEAR_CLASSIFIER = "sklearn.linear_model._base.LinearClassifierMixin"
_score_takes_weight: dict[Any, bool] = {}


@dataclass(frozen=True)
class Predictions:
    """A classifier's predictions on its training set, made for the training metrics."""

    y_pred: Any
    proba: Any = None  # predict_proba's, where the estimator has it
    decision: Any = None  # decision_function's, where predict is derived from it


def training_metrics(estimator: Any, X: Any, y: Any, sample_weight: Any,
                     pos_label: Any = None) -> tuple[dict[str, float], Predictions | None]:
    """The ``training_*`` metrics of ``estimator`` fitted on ``X``, ``y``, and a
    classifier's predictions they were computed from (None for any other estimator, or
    one that could not predict)."""
    from sklearn.base import is_classifier, is_regressor

    metrics: dict[str, float] = {}
    predictions = None
    if y is not None and is_classifier(estimator):
        predictions = classifier_predictions(estimator, X)
        if predictions is not None:
            metrics = classification_metrics(estimator, y, predictions.y_pred, predictions.proba,
                                              sample_weight, pos_label)
    elif y is not None and is_regressor(estimator):
        metrics = _regressor_metrics(estimator, X, y, sample_weight)
    score = _training_score(estimator, X, y, sample_weight, metrics)
    if score is not None:
        metrics[PREFIX + "score"] = score
    return metrics, predictions


# -- classifiers ---------------------------------------------------------------------------


def classifier_predictions(estimator, X) -> Predictions | None:
    """``predict`` (and ``predict_proba``) on ``X``, each computed once; None when the
    model cannot predict (MLflow then logs no metric either)."""
    try:
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(X)
            if _predict_is_argmax_of_proba(estimator):
                return Predictions(estimator.classes_.take(np.argmax(proba, axis=1), axis=0), proba)
            return Predictions(estimator.predict(X), proba)
        if _defined_by(estimator, "predict", _LINEAR_CLASSIFIER):
            decision = estimator.decision_function(X)
            if isinstance(decision, np.ndarray):  # not an array API namespace's array
                chosen = (decision > 0).astype(np.intp) if decision.ndim == 1 \
                    else np.argmax(decision, axis=1)
                return Predictions(estimator.classes_.take(chosen, axis=0), decision=decision)
        return Predictions(estimator.predict(X))
    except Exception:  # noqa: BLE001 - the model cannot predict: MLflow logs no metric either
        return None


def classification_metrics(estimator, y, y_pred, proba, sample_weight,
                           pos_label=None) -> dict[str, float]:
    """MLflow's classifier metrics of these predictions: computed here in the common case,
    else by :func:`sklearn_classification_metrics`."""
    fast = None
    if pos_label is None:
        fast = _FastClassification.build(estimator, y, y_pred, proba, sample_weight)
    if fast is None:
        with unchecked():
            return sklearn_classification_metrics(y, y_pred, proba, sample_weight, pos_label)
    metrics = fast.label_metrics()
    if proba is not None:
        for name, compute in (("log_loss", fast.log_loss), ("roc_auc", fast.roc_auc)):
            value = compute()
            if value is not None:
                metrics[PREFIX + name] = value
    return metrics


def unchecked():
    """scikit-learn's configuration for autolog's own metric calls: no validation of the
    parameters, which are autolog's. Finiteness is still checked, so that a NaN prediction
    leaves its metric out, as in MLflow, rather than logging NaN."""
    import sklearn

    return sklearn.config_context(skip_parameter_validation=True)


def _predict_is_argmax_of_proba(estimator) -> bool:
    """True for forests, whose ``predict`` is the argmax of ``predict_proba``."""
    return getattr(estimator, "n_outputs_", None) == 1 \
        and _defined_by(estimator, "predict", _FOREST_CLASSIFIER)


def _defined_by(estimator, method: str, dotted: str) -> bool:
    """Whether ``estimator``'s ``method`` is the one of the class named ``dotted``."""
    owner = _defining_class(type(estimator), method)
    return owner is not None and f"{owner.__module__}.{owner.__qualname__}" == dotted


class _FastClassification:
    """Per-label counts of one (y_true, y_pred) pair, and the metrics built from them."""

    def __init__(self, true_codes, pred_codes, proba, weights):
        self.true_codes, self.pred_codes = true_codes, pred_codes
        self.proba, self.weights = proba, weights

    @classmethod
    def build(cls, estimator, y, y_pred, proba, sample_weight):
        y_true, y_pred = np.asarray(y), np.asarray(y_pred)
        if y_true.ndim != 1 or y_pred.shape != y_true.shape or y_true.size == 0:
            return None
        if y_true.dtype.kind not in "biufUSO" or y_pred.dtype.kind not in "biufUSO":
            return None
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != y_true.shape or not weights.sum() > 0:
                return None
        if proba is not None:
            proba = np.asarray(proba)
            if proba.ndim != 2 or proba.shape[0] != y_true.size:
                proba = None
        codes = _encode(getattr(estimator, "classes_", None), y_true, y_pred)
        if codes is None:
            return None
        return cls(*codes, proba, weights)

    def label_metrics(self) -> dict[str, float]:
        """Precision, recall, F1 (weighted) and accuracy, as scikit-learn computes them."""
        t, p, w = self.true_codes, self.pred_codes, self.weights
        n_labels = int(max(t.max(), p.max())) + 1
        present = (np.bincount(t, minlength=n_labels) > 0) | (np.bincount(p, minlength=n_labels) > 0)
        hit = t == p
        tp = np.bincount(t[hit], weights=None if w is None else w[hit], minlength=n_labels)
        true_sum = np.bincount(t, weights=w, minlength=n_labels)
        pred_sum = np.bincount(p, weights=w, minlength=n_labels)
        tp, true_sum, pred_sum = tp[present], true_sum[present], pred_sum[present]
        precision = _divide(tp, pred_sum)
        recall = _divide(tp, true_sum)
        f1 = _divide(2.0 * tp, true_sum + pred_sum)
        return {
            PREFIX + "precision_score": _weighted_mean(precision, true_sum),
            PREFIX + "recall_score": _weighted_mean(recall, true_sum),
            PREFIX + "f1_score": _weighted_mean(f1, true_sum),
            PREFIX + "accuracy_score": float(np.average(hit, weights=w)),
        }

    def log_loss(self) -> float | None:
        proba, t = self.proba, self.true_codes
        in_true = np.bincount(t) > 0
        if proba is None or int(in_true.sum()) != proba.shape[1]:
            return None  # scikit-learn refuses this case too
        if proba.dtype.kind != "f":
            proba = proba.astype(np.float64)
        if proba.min() < 0 or proba.max() > 1:
            return None
        column = np.cumsum(in_true) - 1  # label code -> column among y_true's labels
        eps = np.finfo(proba.dtype).eps
        chosen = np.clip(proba[np.arange(t.size), column[t]], eps, 1 - eps)
        return float(np.average(-np.log(chosen), weights=self.weights))

    def roc_auc(self) -> float | None:
        """Binary, unweighted ROC AUC as ``roc_curve`` + ``auc`` compute it; other cases go
        to scikit-learn."""
        proba, t = self.proba, self.true_codes
        if proba is None:
            return None
        labels = np.flatnonzero(np.bincount(t))
        if proba.shape[1] != 2 or labels.size != 2 or self.weights is not None:
            return _sklearn_roc_auc(t, proba, self.weights)  # codes keep the labels' order
        return _binary_roc_auc(t == labels[1], proba[:, 1])


def _encode(classes, y_true, y_pred):
    """Integer codes of both label arrays over their sorted union of labels."""
    if classes is not None:
        classes = np.asarray(classes)
        if classes.ndim == 1 and classes.size and bool(np.all(classes[:-1] < classes[1:])):
            t = _codes_in(classes, y_true)
            p = _codes_in(classes, y_pred) if t is not None else None
            if p is not None:
                return t, p
    try:
        labels, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    except TypeError:  # labels that cannot be sorted: scikit-learn refuses them too
        return None
    inverse = inverse.reshape(-1)
    return inverse[: y_true.size], inverse[y_true.size:]


def _codes_in(classes, values):
    if values.dtype.kind in "iu" and classes.dtype.kind in "iu" and classes[0] == 0 \
            and classes[-1] == classes.size - 1:  # labels 0..k-1: they are their own codes
        return values if values.min() >= 0 and values.max() < classes.size else None
    try:
        codes = np.searchsorted(classes, values)
    except TypeError:
        return None
    if codes.size and codes.max() >= classes.size:
        return None
    if not np.array_equal(classes[codes], values):
        return None
    return codes


def _divide(numerator, denominator):
    """scikit-learn's ``_prf_divide`` with ``zero_division="warn"``: x/0 is 0."""
    zero = denominator == 0
    result = numerator / np.where(zero, 1.0, denominator)
    result[zero] = 0.0
    return result


def _weighted_mean(values, weights) -> float:
    if weights.sum() == 0:
        return float(np.mean(values))
    return float(np.average(values, weights=weights))


def _binary_roc_auc(positive, score) -> float | None:
    """The area under the ROC curve as the Mann-Whitney statistic: the share of
    (positive, negative) pairs ranked right, ties counting half. It is the area that
    ``roc_curve`` + ``auc`` compute by trapezoids, counted exactly in integers, and two
    value sorts cost less than scikit-learn's argsort of all scores."""
    positives, negatives = np.sort(score[positive]), np.sort(score[~positive])
    if positives.size == 0 or negatives.size == 0:
        return None  # scikit-learn: undefined, nan and a warning
    below = np.searchsorted(negatives, positives, side="left")
    tied = negatives[np.minimum(below, negatives.size - 1)] == positives
    not_above = np.searchsorted(negatives, positives, side="right") if tied.any() else below
    twice_right = int(below.sum()) + int(not_above.sum())  # 2 per pair below, 1 per tie
    return twice_right / (2 * positives.size * negatives.size)


def _sklearn_roc_auc(y_true, proba, weights) -> float | None:
    from sklearn.metrics import roc_auc_score

    score = proba[:, 1] if proba.shape[1] == 2 else proba
    with unchecked():
        return _quietly(roc_auc_score, y_true, score, average="weighted",
                        sample_weight=weights, multi_class="ovo")


def sklearn_classification_metrics(y, y_pred, proba, sample_weight, pos_label) -> dict[str, float]:
    """MLflow's calls of scikit-learn's functions, one by one (a metric that fails is left out)."""
    from sklearn import metrics as m

    average = "weighted" if pos_label is None else "binary"
    out: dict[str, float] = {}
    for name, function in (("precision_score", m.precision_score),
                           ("recall_score", m.recall_score), ("f1_score", m.f1_score)):
        value = _quietly(function, y, y_pred, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)
        if value is not None:
            out[PREFIX + name] = value
    accuracy = _quietly(m.accuracy_score, y, y_pred, normalize=True, sample_weight=sample_weight)
    if accuracy is not None:
        out[PREFIX + "accuracy_score"] = accuracy
    if proba is not None:
        loss = _quietly(m.log_loss, y, proba, sample_weight=sample_weight)
        if loss is not None:
            out[PREFIX + "log_loss"] = loss
        auc = _sklearn_roc_auc(y, np.asarray(proba), sample_weight)
        if auc is not None:
            out[PREFIX + "roc_auc"] = auc
    return out


def _quietly(function, *args, **kwargs):
    """``function(...)`` as a float, or None if scikit-learn refuses the input; its
    warnings (ill-defined precision, ...) are about autolog's computation, not the user's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(function(*args, **kwargs))
    except Exception:  # noqa: BLE001 - MLflow skips a metric that cannot be computed
        return None


# -- regressors ------------------------------------------------------------------------------


def _regressor_metrics(estimator, X, y, sample_weight) -> dict[str, float]:
    from sklearn import metrics as m

    try:
        y_pred = estimator.predict(X)
    except Exception:  # noqa: BLE001 - as for classifiers
        return {}
    out: dict[str, float] = {}
    with unchecked():
        for name, function in (("mean_squared_error", m.mean_squared_error),
                               ("mean_absolute_error", m.mean_absolute_error),
                               ("r2_score", m.r2_score)):
            value = _quietly(function, y, y_pred, sample_weight=sample_weight,
                             multioutput="uniform_average")
            if value is not None:
                out[PREFIX + name] = value
    if PREFIX + "mean_squared_error" in out:
        out[PREFIX + "root_mean_squared_error"] = float(np.sqrt(out[PREFIX + "mean_squared_error"]))
    return out


# -- training_score --------------------------------------------------------------------------


def _training_score(estimator, X, y, sample_weight, metrics) -> float | None:
    """``estimator.score`` on the training data (``score(X)`` for clusterers and density
    models fitted without labels); accuracy or R² again when ``score`` is the default one."""
    from sklearn.base import ClassifierMixin, RegressorMixin

    if not hasattr(estimator, "score"):
        return None
    owner = _defining_class(type(estimator), "score")
    if y is not None:
        if owner is ClassifierMixin and PREFIX + "accuracy_score" in metrics:
            return metrics[PREFIX + "accuracy_score"]
        if owner is RegressorMixin and PREFIX + "r2_score" in metrics:
            return metrics[PREFIX + "r2_score"]
        args = (X, y)
    elif _y_is_optional(estimator.score):
        args = (X,)
    else:
        return None
    if sample_weight is not None and _takes_sample_weight(estimator.score):
        return _quietly(estimator.score, *args, sample_weight=sample_weight)
    return _quietly(estimator.score, *args)


def _defining_class(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return None


def _parameters(method) -> list[inspect.Parameter]:
    return list(inspect.signature(method).parameters.values())


def _takes_sample_weight(method) -> bool:
    key = getattr(method, "__func__", method)
    known = _score_takes_weight.get(key)
    if known is None:
        known = _score_takes_weight[key] = any(p.name == "sample_weight" for p in _parameters(method))
    return known


def _y_is_optional(method) -> bool:
    positional = [p for p in _parameters(method)
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 1 or (
        len(positional) > 1 and positional[1].default is not inspect.Parameter.empty)
