"""XGBoost feature importance as artifacts, under MLflow's names and in MLflow's plot.

For each importance type: ``feature_importance_<type>.json`` (what
``Booster.get_score(importance_type=<type>)`` returned, as MLflow's autolog writes it) and
``feature_importance_<type>.png`` (MLflow's horizontal bar chart, least important at the
bottom, one bar per class where the scores are per class, as gblinear's are). The scores
are read on the training thread (a C call over the trees, the booster may change after
the fit); the JSON and the plot are made and uploaded on the model saver's thread
(``get_saver().run_later``), drawn with matplotlib's object API (no pyplot, no GUI
backend). Without matplotlib (the ``plot`` extra) only the JSON files are logged, with
one warning per process.
"""

from __future__ import annotations

import io
import json
from typing import Any

from autolog.artifacts.logged import log_bytes
from autolog.config import warn_from_thread
from autolog.models.saver import get_saver
from autolog.run import Run

_told_no_matplotlib: list[bool] = []


def scores(booster: Any, kind: str) -> dict[str, Any] | None:
    """``booster.get_score(importance_type=kind)``, or None for a type this booster has not
    (gblinear has no "gain") or none to show."""
    try:
        found = booster.get_score(importance_type=kind)
    except Exception:  # noqa: BLE001 - XGBoost refuses the type for this booster
        return None
    return found or None


def log_later(run: Run, by_kind: dict[str, dict[str, Any]]) -> None:
    """Queue the JSON and PNG of every importance type in ``by_kind`` for ``run``."""
    target = run.artifact_target()

    def log() -> None:
        for kind, found in by_kind.items():
            log_bytes(target, json.dumps(found).encode(), f"feature_importance_{kind}.json")
        png = _renderer()
        if png is not None:
            for kind, found in by_kind.items():
                log_bytes(target, png(found, kind), f"feature_importance_{kind}.png")

    get_saver().run_later(f"the feature importance artifacts of run {run.id}", log)


def _renderer():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _told_no_matplotlib:
            _told_no_matplotlib.append(True)
            warn_from_thread('XGBoost feature importance plots need matplotlib (pip install '
                             '"autolog-ml[plot]"); only their JSON files are logged')
        return None
    return plot


def plot(found: dict[str, Any], kind: str) -> bytes:
    """MLflow's feature importance chart of ``found`` (feature -> importance, or feature ->
    one importance per class), as PNG bytes."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    features = np.array(list(found), dtype=object)
    values = np.array(list(found.values()), dtype=float)
    per_class = values.ndim > 1
    if not per_class:
        values = values[:, None]
    order = np.argsort(np.abs(values).sum(axis=1) if per_class else values[:, 0], kind="stable")
    features, values = features[order], values[order]
    classes = values.shape[1]

    width, height = 6.4, 4.8  # matplotlib's default figure size, taller for many bars
    height += 0.1 * len(features) if len(features) > 10 else 0
    height += 0.1 * classes if classes > 1 else 0
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.5, 0.5, classes) / 2 if classes > 1 else [0.0]
    bar_height = 0.5 / max(classes - 1, 1)
    rows = np.arange(len(features))
    for index, offset in enumerate(offsets):
        axes.barh(rows + offset, values[:, index], height=bar_height, align="center",
                  color=colors[index % len(colors)], label=f"Class {index}" if per_class else None)
    axes.set_yticks(rows)
    axes.set_yticklabels(features)
    axes.set_xlabel("Importance")
    axes.set_title(f"Feature Importance ({kind})")
    if per_class:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
