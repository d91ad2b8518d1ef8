"""A PNG of MLflow's UI on a tracking store, for the README: starts MLflow's server (the
app ``mlflow ui`` runs) on the store, opens a run's page in headless Chromium, saves it.

    .venv/bin/python examples/demo.py
    .venv/bin/python tests/ui_screenshot.py --run xgboost --out docs/mlflow-ui-run.png

``--store`` defaults to MLflow's own default, ``sqlite:///mlflow.db`` in this directory;
``--run`` takes a run name or id (default: the newest run that has metrics); ``--view``
picks the page: the run's metric charts (default), its overview, or its experiment's runs
as a table or as charts. Needs MLflow's UI (``pip install mlflow``) and Chromium.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from browser import chromium_path, run_page_url, screenshot
from mlflow_server import MlflowServer

VIEWS = {
    "metrics": lambda uri, run: run_page_url(uri, run.info.experiment_id, run.info.run_id, "model-metrics"),
    "overview": lambda uri, run: run_page_url(uri, run.info.experiment_id, run.info.run_id),
    "runs": lambda uri, run: f"{uri}/#/experiments/{run.info.experiment_id}/runs",
    "charts": lambda uri, run: f"{uri}/#/experiments/{run.info.experiment_id}/runs?compareRunsMode=CHART",
}


def absolute_store(uri: str) -> str:
    """A relative ``sqlite:///`` path made absolute here: the server runs elsewhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not os.path.isabs(uri[len(prefix):]):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def find_run(client, wanted: str | None):
    """The run named (or with the id) ``wanted``, else the newest run that has metrics."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=5000)
    for run in runs:
        if (wanted in (run.info.run_name, run.info.run_id)) if wanted else run.data.metrics:
            return run
    raise SystemExit(f"no run {wanted!r} in the store" if wanted else "no run with metrics in the store")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="tracking URI (default: %(default)s)")
    parser.add_argument("--run", help="run name or id (default: the newest run with metrics)")
    parser.add_argument("--view", choices=sorted(VIEWS), default="metrics")
    parser.add_argument("--out", type=Path, default=Path("mlflow-ui.png"))
    parser.add_argument("--size", default="1400x900", help="window WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--wait-ms", type=int, default=10_000,
                        help="time the page gets to render (default: %(default)s)")
    args = parser.parse_args(argv)
    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    if chromium_path() is None:
        raise SystemExit("Chromium is not installed (Debian: apt-get install -y chromium)")

    from mlflow import MlflowClient

    store = absolute_store(args.store)
    run = find_run(MlflowClient(tracking_uri=store), args.run)
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as workdir:
        server = MlflowServer(store, Path(workdir)).start()
        try:
            return screenshot(VIEWS[args.view](server.uri, run), args.out, int(width), int(height),
                              budget_ms=args.wait_ms)
        finally:
            server.stop()


if __name__ == "__main__":
    print(main())
