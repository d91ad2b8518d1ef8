"""Write ``autolog-v0.1.db`` beside this script: a store in autolog v0.1's own format.

Runnable only at v0.1 (the commit that added it, or any before the MLflow-schema store
replaced ``autolog.stores.sqlite.SQLiteStore``): it logs through autolog's public API
into ``sqlite:///autolog-v0.1.db``, which at v0.1 is that embedded store. After the
switch the same URI means an MLflow database, so the script would write one of those
instead, and it refuses to: the committed file is what ``tests/test_migrate.py`` reads.

What it holds: the experiment ``Default`` with one finished run, and ``vision/resnet``
with a parent run, its nested child, and a FAILED run; params, tags (autolog's mlflow.*
system tags included), a 50-step curve, two points at one step, NaN, +inf and -inf.

Once logged, the file is rewritten with 1 KiB pages (``VACUUM``; the rows and the
schema are untouched, and it is put back in WAL mode), so that it stays a few KB.

    cd tests/data && python make_v01_fixture.py
"""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import autolog
from autolog.stores import close_all

HERE = Path(__file__).resolve().parent
TARGET = HERE / "autolog-v0.1.db"
# The source as a user's script would name it: autolog's own tag is this script's absolute
# path, which has no place in a committed file.
SOURCE = {"mlflow.source.name": "train.py"}


def log_runs() -> None:
    with autolog.start_run(run_name="baseline", experiment="Default", tags={**SOURCE, "purpose": "smoke"}):
        autolog.log_params({"model": "logreg", "C": 1.0})
        autolog.log_metric("accuracy", 0.875)

    experiment = "vision/resnet"
    with autolog.start_run(run_name="sweep", experiment=experiment, tags={**SOURCE, "team": "vision"}):
        autolog.log_params({"lr": 0.01, "depth": 18, "optimizer": "sgd"})
        for step in range(50):
            autolog.log_metric("loss", 2.0 / (step + 1), step=step)
        autolog.log_metric("val_acc", 0.5, step=0)
        autolog.log_metric("val_acc", 0.55, step=0)  # a second point at the same step
        autolog.log_metrics({"odd": math.nan}, step=0)
        autolog.log_metrics({"odd": math.inf}, step=1)
        autolog.log_metrics({"odd": -math.inf}, step=2)
        with autolog.start_run(run_name="fold-1", experiment=experiment, nested=True,
                               tags=SOURCE):
            autolog.log_param("fold", 1)
            autolog.log_metric("fold_acc", 0.81, step=3)
    crashed = autolog.start_run(run_name="crashed", experiment=experiment, tags=SOURCE)
    autolog.log_param("lr", 10.0)
    autolog.log_metric("loss", math.nan, step=0)
    crashed.end("FAILED")


def shrink(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=1024")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def main() -> int:
    if TARGET.exists():
        sys.exit(f"{TARGET} exists; remove it first")
    autolog.set_tracking_uri(f"sqlite:///{TARGET}")
    log_runs()
    autolog.flush()
    close_all()
    conn = sqlite3.connect(TARGET)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    if version != 1 or "metric_chunks" not in tables:
        TARGET.unlink()
        sys.exit("this autolog no longer writes the v0.1 format: the fixture is made only at v0.1")
    shrink(TARGET)
    print(f"wrote {TARGET} ({TARGET.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
