"""What autologging adds to a fit, beside MLflow's autolog, in one run.

    python benchmarks/bench_autolog.py            # full run, rewrites its RESULTS.md section(s)
    python benchmarks/bench_autolog.py --quick    # fewer rounds, prints only

Each case is one fit, timed in this process with no autolog, with ``autolog.autolog()`` and
with ``mlflow.autolog(log_models=False, log_datasets=False)``, each against a SQLite file
in a temp dir; no run is active, so every fit starts and ends its own run inside the
timing (MLflow's too). The median of each mode is kept; autolog's cost is the median
difference over back-to-back pairs of fits without and with it (see :func:`measure`), and
the same in CPU time of the fitting thread, which moves less than wall time when other
processes compete for the cores (every case fits in the calling thread: XGBoost is given
``nthread=1`` for that reason).

Target: autolog adds at most 5 ms or 5 % to a fit, whichever is larger.

The section ``bench_autolog_models`` ("with models") runs both tools with their defaults,
models on: what autolog adds to the fit (target: at most 50 ms or 10 %, whichever is
larger) beside what MLflow's autolog adds, and the time autolog's ``flush()`` then takes
to save and upload the model in the background. The other tables turn models off on
both sides (``log_models=False``).

PyTorch and Lightning (a Lightning MLP, plain loops of 10,000 steps; target ≤ 3 %) are
the section ``bench_autolog_torch``, measured by ``bench_autolog_torch.py``: whole training
runs, the three modes back to back, rather than many short fits.

To add fit cases: write a function returning a list of :class:`Case` and add it to
``SECTIONS`` under its own RESULTS.md section name.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_autolog_torch  # noqa: E402
from _results import machine, write_section  # noqa: E402

MODES = ("none", "autolog", "mlflow")
TARGET_MS, TARGET_FRACTION = 5.0, 0.05


@dataclass
class Case:
    """One fit to time. ``setup`` makes the data once and returns the fit to call."""

    name: str
    setup: Callable[[], Callable[[], object]]
    fits_per_round: int = 3  # pairs of fits without and with autolog per round


def data(rows: int):
    from sklearn.datasets import make_classification

    return make_classification(rows, 20, n_informative=10, random_state=0)


def logistic_regression():
    from sklearn.linear_model import LogisticRegression

    X, y = data(20_000)
    return lambda: LogisticRegression().fit(X, y)


def random_forest():
    from sklearn.ensemble import RandomForestClassifier

    X, y = data(5_000)
    return lambda: RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)


def grid_search():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = data(20_000)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    return lambda: GridSearchCV(LogisticRegression(), grid, cv=3).fit(X, y)


def xgboost_train():
    import xgboost

    X, y = data(20_000)
    train, val = xgboost.DMatrix(X[:16_000], y[:16_000]), xgboost.DMatrix(X[16_000:], y[16_000:])
    params = {"objective": "binary:logistic", "max_depth": 4, "eval_metric": "logloss",
              "nthread": 1}
    return lambda: xgboost.train(params, train, 200, evals=[(val, "val")], verbose_eval=False)


def lightning_fit():
    fit, root = bench_autolog_torch.lightning_workload(), tempfile.mkdtemp(prefix="bench-lightning-")
    return lambda: fit(root)


LOGISTIC = "LogisticRegression, 20,000×20"
FOREST = "RandomForestClassifier, 50 trees, 5,000×20"
GRID = "GridSearchCV(LogisticRegression), 4 candidates × 3 folds, 20,000×20"
XGBOOST = "`xgboost.train`, 200 rounds, eval set, 16,000×20, 1 thread"


def sklearn_xgboost_cases() -> list[Case]:
    return [
        Case(LOGISTIC, logistic_regression, fits_per_round=10),
        Case(FOREST, random_forest),
        Case(GRID, grid_search),
        Case(XGBOOST, xgboost_train),
    ]


def model_cases() -> list[Case]:
    return [
        Case(LOGISTIC, logistic_regression),
        Case(FOREST, random_forest),
        Case(GRID, grid_search),
        Case(XGBOOST, xgboost_train),
        Case("Lightning MLP, 20,000×20, batch 64, 2 epochs", lightning_fit),
    ]


SECTIONS: dict[str, tuple[str, Callable[[], list[Case]]]] = {
    "bench_autolog_sklearn_xgboost": ("scikit-learn and XGBoost", sklearn_xgboost_cases),
}


class Modes:
    """Switches between no autolog, autolog and MLflow's autolog in this process."""

    def __init__(self, root: Path):
        import mlflow

        import autolog

        self.autolog, self.mlflow, self.mode = autolog, mlflow, "none"
        self.models = False
        autolog.set_tracking_uri(f"sqlite:///{root / 'autolog.db'}")
        autolog.set_experiment("bench")
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_experiment("bench")

    def enable(self, mode: str) -> None:
        """The fit tables turn models and datasets off on both sides, to compare the logging
        of params and metrics alone; the models table leaves both tools' defaults."""
        self.mode = mode
        if mode == "autolog" and self.models:
            self.autolog.autolog()
        elif mode == "autolog":
            self.autolog.autolog(sklearn={"log_models": False, "log_datasets": False},
                                 xgboost={"log_models": False, "log_datasets": False},
                                 lightning={"log_models": False})
        elif mode == "mlflow" and self.models:
            self.mlflow.autolog(silent=True)  # its defaults: models, signatures, datasets
        elif mode == "mlflow":
            self.mlflow.autolog(log_models=False, log_datasets=False, silent=True)

    def disable(self) -> None:
        """Turn off what :meth:`enable` turned on (and nothing else, to disturb no cache)."""
        if self.mode == "autolog":
            self.autolog.autolog(disable=True)
        elif self.mode == "mlflow":
            self.mlflow.autolog(disable=True, silent=True)
        self.mode = "none"

    def runs(self, mode: str) -> int:
        if mode == "autolog":
            return len(self.autolog.search_runs("bench", max_results=100_000))
        if mode == "mlflow":
            return len(self.mlflow.search_runs(experiment_names=["bench"], output_format="list",
                                               max_results=50_000))
        return 0


@dataclass
class Result:
    """Medians for one case: seconds per fit in each mode, and autolog's paired cost."""

    wall: dict[str, float]
    added: float  # median of (autolog - none) over back-to-back pairs of fits
    added_cpu: float  # the same, in CPU time of the fitting thread
    base_cpu: float


def timed(fit: Callable) -> tuple[float, float]:
    gc.collect()
    started, started_cpu = time.perf_counter(), time.thread_time()
    fit()
    return time.perf_counter() - started, time.thread_time() - started_cpu


def measure(modes: Modes, fits: list[tuple[Case, Callable]], rounds: int) -> dict[str, Result]:
    """Each round: every fit under MLflow's autolog (switching it is slow, so in a block),
    then pairs of fits without and with autolog back to back, in alternating order, so
    that a neighbour's burst of load hits both fits of a pair alike. After autolog's fit,
    outside its timing, ``flush()`` waits for what it queued for the background (a
    scikit-learn classifier's diagnostic plots), which would otherwise land on the next
    fit's timing; what that background work costs is the models table's *then saved*."""
    wall = {(case.name, mode): [] for case, _ in fits for mode in MODES}
    cpu = {key: [] for key in wall}
    pairs = {case.name: ([], []) for case, _ in fits}  # wall, cpu differences
    for round_ in range(rounds + 1):  # round 0 warms up: imports, schemas, first calls
        keep = round_ > 0
        modes.enable("mlflow")
        try:
            for case, fit in fits:
                for _ in range(case.fits_per_round):
                    elapsed, elapsed_cpu = timed(fit)
                    if keep:
                        wall[(case.name, "mlflow")].append(elapsed)
        finally:
            modes.disable()
        for case, fit in fits:
            for index in range(case.fits_per_round):
                pair = {}
                for mode in ("none", "autolog") if (round_ + index) % 2 else ("autolog", "none"):
                    modes.enable(mode)
                    try:
                        pair[mode] = timed(fit)
                        if mode == "autolog":  # its diagnostics, drawn in the background, are
                            modes.autolog.flush(timeout=None)  # done before the next fit starts
                    finally:
                        modes.disable()
                if keep:
                    for mode in ("none", "autolog"):
                        wall[(case.name, mode)].append(pair[mode][0])
                        cpu[(case.name, mode)].append(pair[mode][1])
                    pairs[case.name][0].append(pair["autolog"][0] - pair["none"][0])
                    pairs[case.name][1].append(pair["autolog"][1] - pair["none"][1])
    median = statistics.median
    return {case.name: Result(wall={mode: median(wall[(case.name, mode)]) for mode in MODES},
                              added=median(pairs[case.name][0]),
                              added_cpu=median(pairs[case.name][1]),
                              base_cpu=median(cpu[(case.name, "none")]))
            for case, _ in fits}


def compared(wall: dict[str, float], added: float) -> list[str]:
    """The cells both tables give a fit: no autolog, autolog, what autolog added, MLflow's
    autolog, what it added, and how many times autolog's that is."""
    base, ours, theirs = (wall[mode] for mode in MODES)
    mlflow_added = theirs - base
    return [f"{base * 1e3:,.1f} ms", f"{ours * 1e3:,.1f} ms", f"{added * 1e3:+,.1f} ms ({added / base:+.1%})",
            f"{theirs * 1e3:,.1f} ms", f"{mlflow_added * 1e3:+,.1f} ms ({mlflow_added / base:+.1%})",
            f"{mlflow_added / added:,.0f}×" if added > 0 else "—"]


def table(title: str, results: dict[str, Result], rounds: int, per_round: str) -> tuple[str, bool]:
    lines = [
        f"## Autologging overhead per fit: {title} (`bench_autolog.py`)",
        "",
        f"Machine: {machine()}. Medians over {rounds} rounds of {per_round} fits per mode; "
        "each fit starts and ends its own run in a SQLite store (MLflow's too). autolog's "
        "*added* is the median difference over back-to-back pairs of fits without and with "
        "it; the last column is that difference in CPU time of the fitting thread. Models and "
        "datasets are off on both sides (their cost: the models table); a scikit-learn "
        "classifier's diagnostic plots are on on both sides: MLflow draws them in the fit, "
        "autolog on a background thread, which `flush()` waits for after each fit, outside "
        "its timing.",
        "",
        "| fit | no autolog | autolog | added | MLflow autolog | added | MLflow adds × autolog's "
        "| autolog adds, thread CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts, all_met = [], True
    for name, result in results.items():
        base, added = result.wall["none"], result.added
        cells = compared(result.wall, added)
        lines.append(f"| {name} | {' | '.join(cells)} | "
                     f"{result.added_cpu * 1e3:+,.1f} ms ({result.added_cpu / result.base_cpu:+.1%}) |")
        allowed = max(TARGET_MS / 1e3, TARGET_FRACTION * base)
        met = added <= allowed
        all_met &= met
        verdicts.append(f"- {'met' if met else 'MISSED'}: {name}: autolog adds "
                        f"{added * 1e3:+.1f} ms wall ({result.added_cpu * 1e3:+.1f} ms thread "
                        f"CPU), allowed {allowed * 1e3:.1f} ms")
    lines += ["", f"Target: autolog adds ≤ {TARGET_MS:.0f} ms or ≤ {TARGET_FRACTION:.0%} of the "
              "fit (wall), whichever is larger.", *verdicts]
    return "\n".join(lines), all_met


def fit_section(modes: Modes, section: str, rounds: int) -> tuple[str, bool]:
    """Measure one section of :data:`SECTIONS`: its table and whether every target was met."""
    title, cases = SECTIONS[section]
    fits = [(case, case.setup()) for case in cases()]
    before = {mode: modes.runs(mode) for mode in MODES}
    results = measure(modes, fits, rounds)
    made = {mode: modes.runs(mode) - before[mode] for mode in MODES}
    expected = sum(case.fits_per_round for case, _ in fits) * (rounds + 1)
    assert made["autolog"] >= expected and made["mlflow"] >= expected, made  # fits logged
    counts = sorted({case.fits_per_round for case, _ in fits})
    per_round = "–".join(str(count) for count in (counts[0], counts[-1])[:len(counts)])
    return table(title, results, rounds, per_round)


MODELS_SECTION = "bench_autolog_models"
MODELS_TARGET_MS, MODELS_TARGET_FRACTION = 50.0, 0.10


@dataclass
class ModelResult:
    """Medians for one case with models: seconds per fit in each mode; autolog's paired
    cost on the training thread, and the time ``flush()`` then took (the saver's and the
    uploader's background work, waited for)."""

    wall: dict[str, float]
    added: float
    saved: float


def measure_models(modes: Modes, fits: list[tuple[Case, Callable]], rounds: int
                   ) -> dict[str, ModelResult]:
    """Each round, each case: one fit per mode, the order rotating between rounds. After
    autolog's fit, outside its timing, ``flush()`` waits for the model to be saved and
    uploaded, so that no background work spills into the next fit."""
    samples = {case.name: {mode: [] for mode in (*MODES, "saved")} for case, _ in fits}
    for round_ in range(rounds + 1):  # round 0 warms up: imports (MLflow's, on both sides)
        order = MODES[round_ % 3:] + MODES[:round_ % 3]
        for case, fit in fits:
            for mode in order:
                modes.enable(mode)
                try:
                    elapsed, _ = timed(fit)
                    started = time.perf_counter()
                    if mode == "autolog":
                        assert modes.autolog.flush(timeout=None), "a model was not saved"
                    saved = time.perf_counter() - started
                finally:
                    modes.disable()
                if round_:
                    samples[case.name][mode].append(elapsed)
                    if mode == "autolog":
                        samples[case.name]["saved"].append(saved)
    median = statistics.median
    return {name: ModelResult(
        wall={mode: median(values[mode]) for mode in MODES},
        added=median(a - b for a, b in zip(values["autolog"], values["none"])),
        saved=median(values["saved"])) for name, values in samples.items()}


def models_section(modes: Modes, rounds: int) -> tuple[str, bool]:
    fits = [(case, case.setup()) for case in model_cases()]
    modes.models = True
    try:
        results = measure_models(modes, fits, rounds)
    finally:
        modes.models = False
    logged = modes.autolog.search_runs(
        "bench", "tags.`mlflow.log-model.history` LIKE '%artifact_path%'", max_results=100_000)
    assert len(logged) >= len(fits) * (rounds + 1), f"only {len(logged)} runs have a model"
    lines = [
        "## Autologging with models (`bench_autolog.py`)",
        "",
        f"Machine: {machine()}. Medians over {rounds} rounds of one fit per mode (the order "
        "rotating), each fit starting and ending its own run in a SQLite store, with both "
        "tools' defaults: models (and signatures) on; MLflow's also logs datasets. *added*: "
        "the median over rounds of autolog's fit minus the same round's fit without "
        "autologging: what the training thread waited for. *then saved*: the `autolog.flush()` "
        "that followed, outside the timing: the model saved with MLflow's `save_model` and "
        "uploaded, in the background.",
        "",
        "| fit | no autolog | autolog | added | then saved (background) | MLflow autolog "
        "| added | MLflow adds × autolog's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts, all_met = [], True
    for name, result in results.items():
        base, added = result.wall["none"], result.added
        mlflow_added = result.wall["mlflow"] - base
        cells = compared(result.wall, added)
        lines.append(f"| {name} | {' | '.join(cells[:3])} | {result.saved * 1e3:,.0f} ms | "
                     f"{' | '.join(cells[3:])} |")
        allowed = max(MODELS_TARGET_MS / 1e3, MODELS_TARGET_FRACTION * base)
        met = added <= allowed
        all_met &= met
        verdicts.append(f"- {'met' if met else 'MISSED'}: {name}: autolog adds {added * 1e3:+.1f} ms "
                        f"to the fit, allowed {allowed * 1e3:.1f} ms; MLflow adds "
                        f"{mlflow_added:+.2f} s")
    lines += ["", f"Target: what autolog adds to the fit with models is ≤ {MODELS_TARGET_MS:.0f} ms "
              f"or ≤ {MODELS_TARGET_FRACTION:.0%} of the fit, whichever is larger.", *verdicts]
    return "\n".join(lines), all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, print only")
    parser.add_argument("--section", choices=sorted([*SECTIONS, bench_autolog_torch.SECTION,
                                                     MODELS_SECTION]),
                        action="append", help="only these sections (default: all)")
    args = parser.parse_args()
    rounds = 2 if args.quick else 7
    warnings.filterwarnings("ignore")

    all_met = True
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow  # noqa: F401 - its import sets its loggers' levels: quiet them after

        logging.getLogger("mlflow").setLevel(logging.ERROR)
        modes = Modes(Path(tmp))
        for section in args.section or [*SECTIONS, MODELS_SECTION, bench_autolog_torch.SECTION]:
            if section == bench_autolog_torch.SECTION:
                markdown, met = bench_autolog_torch.report(rounds)
            elif section == MODELS_SECTION:
                markdown, met = models_section(modes, 2 if args.quick else 5)
            else:
                markdown, met = fit_section(modes, section, rounds)
            all_met &= met
            print(markdown, end="\n\n")
            if not args.quick:
                write_section(section, markdown)
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
