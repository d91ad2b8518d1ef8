"""The README's screenshot script (tests/ui_screenshot.py), on a store MLflow wrote."""

from __future__ import annotations

import pytest
import ui_screenshot
from browser import require_chromium


def test_the_script_writes_a_png_of_the_named_runs_page(tmp_path):
    from mlflow import MlflowClient

    require_chromium()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("shots")
    for name in ("wanted", "newer"):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        for step in range(10):
            client.log_metric(run_id, "loss", 1 / (step + 1), step=step)
        client.set_terminated(run_id)

    assert ui_screenshot.find_run(client, "wanted").info.run_name == "wanted"
    assert ui_screenshot.find_run(client, None).info.run_name == "newer"  # the newest with metrics
    out = ui_screenshot.main(["--store", uri, "--run", "wanted", "--out", str(tmp_path / "ui.png"),
                              "--size", "800x600"])
    assert out == tmp_path / "ui.png"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (800, 600)
    with pytest.raises(SystemExit, match="no run 'missing'"):
        ui_screenshot.main(["--store", uri, "--run", "missing"])
