"""What scikit-learn's ``training_*`` metrics cost, and whether autolog's own copy of the
classification metrics earns its keep, in one run.

    python benchmarks/bench_sklearn_metrics.py            # full run, rewrites its RESULTS.md section
    python benchmarks/bench_sklearn_metrics.py --quick    # fewer rounds and sizes, prints only

Table 1, the copy against scikit-learn: MLflow's six classification metrics (precision,
recall and F1 weighted, accuracy, log loss, ROC AUC) of one LogisticRegression's
predictions, computed from the same ``y``, ``y_pred`` and ``predict_proba`` output three
ways, interleaved in each round: autolog's numpy copy
(:func:`classification_metrics`), scikit-learn's own functions under
``sklearn.config_context(skip_parameter_validation=True, assume_finite=True)``, and the
same functions in the default configuration (MLflow's calls). The fit and the
``predict_proba`` of the same model are timed beside them, since what matters is the
difference relative to the fit it is added to. Each way's values are checked to agree.

Table 2, the option ``log_training_metrics``: fits of SVC and LogisticRegression timed
with no autolog, with ``autolog.autolog()`` and with
``autolog.autolog(sklearn={"log_training_metrics": False})``, interleaved, each fit
starting and ending its own run in a SQLite store in a temp dir; what autolog adds is the
median of the differences within each round. The training metrics predict over the whole
training set, which for SVC costs about as much as the fit.

Times are CPU time of the calling thread (``time.thread_time``), with numpy's BLAS held
to one thread, so that everything measured runs in that thread and other processes on
the cores disturb the figures less than wall time. Less, not nothing: on a shared 2-core
machine a LogisticRegression fit still varied by tens of percent from round to round,
so its cases get more rounds. autolog's writer thread, which stores the run's data in the
background, is not counted.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

SECTION = "bench_sklearn_metrics"
WAYS = ("copy", "configured", "default")


def _seconds(function) -> float:
    """CPU seconds of this thread spent in ``function()``."""
    started = time.thread_time()
    function()
    return time.thread_time() - started


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.2f} ms"


def metric_ways(rows: int, classes: int, rounds: int) -> dict[str, float]:
    """Median seconds of the fit, ``predict_proba`` and each way of computing the metrics."""
    import numpy as np
    import sklearn
    from autolog_integrations._sklearn_metrics import (
        classification_metrics,
        sklearn_classification_metrics,
    )
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(rows, 20, n_informative=10, n_classes=classes, random_state=0)
    model = LogisticRegression().fit(X, y)
    proba = model.predict_proba(X)
    y_pred = model.classes_.take(np.argmax(proba, axis=1))

    def configured():
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            return sklearn_classification_metrics(y, y_pred, proba, None, None)

    ways = {
        "copy": lambda: classification_metrics(model, y, y_pred, proba, None),
        "configured": configured,
        "default": lambda: sklearn_classification_metrics(y, y_pred, proba, None, None),
    }
    values = {name: way() for name, way in ways.items()}
    for name in WAYS[1:]:
        assert values[name].keys() == values["copy"].keys(), (name, values)
        for key, value in values["copy"].items():
            assert abs(values[name][key] - value) <= 1e-9 * abs(value), (name, key, values)

    samples: dict[str, list[float]] = {name: [] for name in ("fit", "predict_proba", *WAYS)}
    for _ in range(rounds):
        samples["fit"].append(_seconds(lambda: LogisticRegression().fit(X, y)))
        samples["predict_proba"].append(_seconds(lambda: model.predict_proba(X)))
        for name, way in ways.items():
            samples[name].append(_seconds(way))
    return {name: statistics.median(times) for name, times in samples.items()}


def metrics_table(sizes: list[int], rounds: int) -> str:
    lines = ["| LogisticRegression, 20 features | fit | predict_proba | autolog's copy "
             "| scikit-learn, `config_context` | scikit-learn, default config | the copy saves, "
             "share of the fit |", "|---|---|---|---|---|---|---|"]
    for classes in (2, 3):
        for rows in sizes:
            m = metric_ways(rows, classes, rounds)
            saved = m["configured"] - m["copy"]
            kind = "binary" if classes == 2 else f"{classes} classes"
            lines.append(f"| {rows:,} rows, {kind} | {_ms(m['fit'])} | {_ms(m['predict_proba'])} "
                         f"| {_ms(m['copy'])} | {_ms(m['configured'])} | {_ms(m['default'])} "
                         f"| {_ms(saved)} ({saved / m['fit']:.0%}) |")
    return "\n".join(lines)


def option_cases(quick: bool):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    def data(rows):
        return make_classification(rows, 20, n_informative=10, random_state=0)

    svc_sizes = (5_000,) if quick else (5_000, 10_000)
    # (name, estimator, data, rounds relative to the SVC's): a LogisticRegression fit is
    # short and moves by more than the metrics cost from one round to the next
    cases = [(f"SVC, {rows:,}×20", SVC, data(rows), 1) for rows in svc_sizes]
    cases += [(f"LogisticRegression, {rows:,}×20", LogisticRegression, data(rows), 4)
              for rows in (5_000, 20_000)]
    return cases


def _fit(estimator: type, X, y) -> None:
    estimator().fit(X, y)


def option_table(quick: bool, rounds: int) -> str:
    import autolog

    modes = {
        "none": lambda: autolog.autolog(disable=True),
        "metrics": lambda: autolog.autolog(),
        "no_metrics": lambda: autolog.autolog(sklearn={"log_training_metrics": False}),
    }
    lines = ["| fit | no autolog | autolog (default) | added | autolog, "
             "`log_training_metrics=False` | added |", "|---|---|---|---|---|---|"]
    for name, estimator, (X, y), times in option_cases(quick):
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds * times):
            for mode, switch in modes.items():
                switch()
                samples[mode].append(_seconds(functools.partial(_fit, estimator, X, y)))
        autolog.autolog(disable=True)
        m = {mode: statistics.median(times) for mode, times in samples.items()}
        added = {mode: statistics.median(b - a for a, b in zip(samples["none"], samples[mode]))
                 for mode in ("metrics", "no_metrics")}  # paired: the fits of one round
        lines.append(f"| {name} | {_ms(m['none'])} | {_ms(m['metrics'])} "
                     f"| {_ms(added['metrics'])} ({added['metrics'] / m['none']:+.0%}) "
                     f"| {_ms(m['no_metrics'])} "
                     f"| {_ms(added['no_metrics'])} ({added['no_metrics'] / m['none']:+.0%}) |")
    stored = {len(run.metrics) for run in autolog.search_runs()}
    assert 0 in stored and max(stored) >= 5, f"metrics per run: {stored}"
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes; print only")
    args = parser.parse_args()
    rounds, option_rounds = (3, 3) if args.quick else (7, 5)
    sizes = [2_000, 20_000] if args.quick else [2_000, 20_000, 100_000]
    workdir = tempfile.mkdtemp(prefix="autolog-bench-")
    os.environ["AUTOLOG_TRACKING_URI"] = f"sqlite:///{workdir}/autolog.db"

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        metrics = metrics_table(sizes, rounds)
        option = option_table(args.quick, option_rounds)
    markdown = (
        "## scikit-learn training metrics: their cost, and autolog's copy against scikit-learn's "
        "functions (`bench_sklearn_metrics.py`)\n\n"
        f"Machine: {machine()}. CPU time of the calling thread, BLAS on one thread; "
        f"medians of {rounds} interleaved rounds.\n\n"
        "MLflow's six classification metrics of the same predictions, computed three ways "
        "(values checked equal), beside the fit and `predict_proba` they come with:\n\n"
        f"{metrics}\n\n"
        f"What the training metrics add to a fit, and the option that skips them (medians of "
        f"{option_rounds} interleaved rounds for SVC, {option_rounds * 4} for "
        f"LogisticRegression; each fit its own run in a SQLite store):\n\n"
        f"{option}\n")
    publish(SECTION, markdown, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
