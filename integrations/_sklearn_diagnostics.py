"""Diagnostics of an autologged scikit-learn fit, under MLflow's artifact names.

- a classifier: ``training_confusion_matrix.png`` (normalized over the true labels); a
  binary one also ``training_roc_curve.png`` and ``training_precision_recall_curve.png``
  (MLflow draws the curves for binary targets only, and so does autolog);
- a search: ``cv_results.csv``, its ``cv_results_`` as a table;
- every estimator: ``estimator.html``, scikit-learn's HTML view of it.

On the training thread, :func:`log_diagnostics` only takes what they need: the labels
(copied: the user may change them after the fit), the predictions the training metrics
already made (:class:`Predictions`: nothing is predicted again), the search's results
and the cloudpickle snapshot of the estimator its model is saved from (scikit-learn renders
its HTML in 20-60 ms, measured, so not on this thread; the snapshot is taken once for
both: about 1 ms for a linear model, 25 ms for 100 trees). Drawing, rendering and writing run on the
model saver's thread (:meth:`ModelSaver.run_later`), one task per artifact, and the bytes
go to the artifact uploader. The plots are drawn with matplotlib's object API: pyplot
would pick a GUI backend and keep global figures, from a thread that is not the user's,
and scikit-learn's ``*Display`` classes import it, so the few lines they draw are drawn
here.

The curves need a score per sample: ``predict_proba``'s, or ``decision_function``'s
where ``predict`` is derived from it (linear classifiers). A classifier with neither
(``SVC(probability=False)``) gets its confusion matrix only, since its curves would cost
another pass over the training set. With ``log_training_metrics=False`` nothing was
predicted: no plots. Without matplotlib (the ``plot`` extra) no plots either, and one
warning says so.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from autolog_integrations._sklearn_metrics import PREFIX, Predictions

from autolog.artifacts.logged import log_bytes
from autolog.artifacts.uploader import RunTarget
from autolog.config import warn
from autolog.models.saver import get_saver
from autolog.run import Run

DPI = 175  # MLflow's figures: 6 x 4 inches at 175 dpi
FIGURE_SIZE = (6.0, 4.0)
_ANNOTATED_LABELS = 30  # past this many classes, the matrix's cells carry no numbers
_PLOT_EXTRA = 'pip install "autolog-ml[plot]"'
_matplotlib: dict[str, bool] = {}  # "found": whether it is installed (looked up once)


def log_diagnostics(run: Run, estimator: Any, y: Any, sample_weight: Any,
                    predictions: Predictions | None, search: bool, snapshot: bytes | None) -> None:
    """Take what the diagnostics of this fit need, and queue their drawing."""
    from sklearn.base import is_classifier

    target = run.artifact_target()
    tasks: list[tuple[str, Callable[[], bytes], str]] = []  # (what, make the bytes, file)
    if predictions is not None and y is not None and is_classifier(estimator) and _has_matplotlib():
        tasks += _classifier_plots(estimator, y, sample_weight, predictions)
    if search and hasattr(estimator, "cv_results_"):
        results = dict(estimator.cv_results_)  # a refit assigns a new dict; this one stays
        tasks.append(("cv_results.csv", lambda: cv_results_csv(results), "cv_results.csv"))
    if snapshot is not None:
        tasks.append(("estimator.html", lambda: estimator_html(snapshot), "estimator.html"))
    for what, make, file_name in tasks:
        get_saver().run_later(f"{what} of run {run.id}", _writer(target, make, file_name))


def _writer(target: RunTarget, make: Callable[[], bytes], file_name: str) -> Callable[[], None]:
    return lambda: log_bytes(target, make(), file_name)


def _has_matplotlib() -> bool:
    found = _matplotlib.get("found")
    if found is None:
        found = _matplotlib["found"] = importlib.util.find_spec("matplotlib") is not None
        if not found:
            warn(f"autolog: scikit-learn's diagnostic plots need matplotlib ({_PLOT_EXTRA}); "
                 f"they are skipped (log_diagnostics=False turns diagnostics off)")
    return found


def snapshot(estimator: Any) -> bytes | None:
    """The fitted estimator's bytes, for its HTML view rendered later; None for one that
    cannot be pickled: it gets no ``estimator.html``, and no second warning beside the
    one its model's logging gives (with ``log_models`` on)."""
    import cloudpickle

    try:
        return cloudpickle.dumps(estimator)
    except Exception:  # noqa: BLE001 - see the docstring: not a second warning for one cause
        return None


# -- classifiers ---------------------------------------------------------------------------


def _classifier_plots(estimator: Any, y: Any, sample_weight: Any,
                      predictions: Predictions) -> list[tuple[str, Callable[[], bytes], str]]:
    y_true = np.array(y, copy=True)
    if y_true.ndim != 1:  # multilabel or multi-output: no confusion matrix of one target
        return []
    weights = None if sample_weight is None else np.array(sample_weight, dtype=np.float64, copy=True)
    labels = np.array(estimator.classes_) if hasattr(estimator, "classes_") else None
    y_pred, name = predictions.y_pred, type(estimator).__name__
    plots = [("the confusion matrix", lambda: confusion_matrix_png(y_true, y_pred, labels, weights),
              PREFIX + "confusion_matrix.png")]
    scores = _positive_scores(predictions, labels)  # binary: the labels fitted on are two
    if scores is not None:
        positive = labels[1]
        plots += [
            ("the ROC curve", lambda: roc_curve_png(y_true, scores, positive, weights, name),
             PREFIX + "roc_curve.png"),
            ("the precision-recall curve",
             lambda: precision_recall_curve_png(y_true, scores, positive, weights, name),
             PREFIX + "precision_recall_curve.png"),
        ]
    return plots


def _positive_scores(predictions: Predictions, labels: np.ndarray | None) -> np.ndarray | None:
    """The score of ``labels[1]`` per sample, for a binary classifier (as scikit-learn's
    curve displays take it from ``predict_proba`` or ``decision_function``)."""
    if labels is None or labels.size != 2:
        return None
    if predictions.proba is not None:
        proba = np.asarray(predictions.proba)
        return proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else None
    if predictions.decision is not None and np.ndim(predictions.decision) == 1:
        return np.asarray(predictions.decision)
    return None


def confusion_matrix_png(y_true, y_pred, labels, sample_weight) -> bytes:
    """scikit-learn's ``ConfusionMatrixDisplay`` as MLflow draws it: rows normalized,
    ``Blues``, each cell's value (``.2g``) in the color that reads on it."""
    from sklearn.metrics import confusion_matrix
    from sklearn.utils.multiclass import unique_labels

    if labels is None:  # a classifier without classes_: the labels seen, as scikit-learn finds them
        labels = unique_labels(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, labels=labels, sample_weight=sample_weight,
                              normalize="true")
    figure, axes = _figure()
    image = axes.imshow(matrix, interpolation="nearest", cmap="Blues")
    figure.colorbar(image, ax=axes)
    n = len(labels)
    if n <= _ANNOTATED_LABELS:
        light, dark = image.cmap(0.0), image.cmap(1.0)
        middle = (matrix.max() + matrix.min()) / 2.0
        for row in range(n):
            for column in range(n):
                value = matrix[row, column]
                axes.text(column, row, format(value, ".2g"), ha="center", va="center",
                          fontsize=min(8.0, 50.0 / n), color=dark if value < middle else light)
    names = [str(label) for label in labels]
    axes.set(xticks=np.arange(n), yticks=np.arange(n), xticklabels=names, yticklabels=names,
             xlabel="Predicted label", ylabel="True label", title="Normalized confusion matrix")
    axes.set_ylim(n - 0.5, -0.5)
    return _png(figure)


def roc_curve_png(y_true, scores, positive, sample_weight, name: str) -> bytes:
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(y_true, scores, pos_label=positive, sample_weight=sample_weight)
    figure, axes = _figure()
    axes.plot(fpr, tpr, label=f"{name} (AUC = {auc(fpr, tpr):0.2f})")
    axes.set(xlabel=f"False Positive Rate (Positive label: {positive})",
             ylabel=f"True Positive Rate (Positive label: {positive})", title="ROC curve",
             xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    axes.legend(loc="lower right")
    return _png(figure)


def precision_recall_curve_png(y_true, scores, positive, sample_weight, name: str) -> bytes:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y_true, scores, pos_label=positive,
                                                  sample_weight=sample_weight)
    average = average_precision_score(y_true, scores, pos_label=positive, sample_weight=sample_weight)
    figure, axes = _figure()
    axes.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AP = {average:0.2f})")
    axes.set(xlabel=f"Recall (Positive label: {positive})",
             ylabel=f"Precision (Positive label: {positive})", title="Precision recall curve",
             xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    axes.legend(loc="lower left")
    return _png(figure)


def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")  # no pyplot: see the docstring
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# -- searches and every estimator --------------------------------------------------------


def cv_results_csv(results: dict[str, Any]) -> bytes:
    """``cv_results_`` as MLflow writes it (``pandas.DataFrame(cv_results_).to_csv(index=
    False)``): a column per key, a masked value (a parameter a candidate lacks) empty."""
    columns = [values.tolist() if hasattr(values, "tolist") else list(values)
               for values in results.values()]  # numpy scalars as Python's; masked: None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(results)
    writer.writerows(zip(*columns))
    return out.getvalue().encode()


def estimator_html(snapshot: bytes) -> bytes:
    """scikit-learn's HTML view of the estimator, in MLflow's page (its charset, so the
    toggles' triangles show)."""
    import cloudpickle
    from sklearn.utils import estimator_html_repr

    body = estimator_html_repr(cloudpickle.loads(snapshot))
    return (f'<!DOCTYPE html>\n<html lang="en">\n  <head>\n    <meta charset="UTF-8"/>\n'
            f"  </head>\n  <body>\n    {body}\n  </body>\n</html>\n").encode()
