"""Shared fixtures: every test gets its own embedded store, strict mode, clean state."""

from __future__ import annotations

import os
import subprocess

import pytest

os.environ.setdefault("AUTOLOG_STRICT", "1")  # autolog's own errors fail tests
pytest.register_assert_rewrite("mlflow_server", "databases", "browser", "s3_server")  # helpers tests import

import autolog  # noqa: E402
from autolog import run as run_module  # noqa: E402
from autolog import system_metrics  # noqa: E402
from autolog.artifacts import uploader as uploader_module  # noqa: E402
from autolog.config import settings  # noqa: E402
from autolog.integration import registry  # noqa: E402
from autolog.models.saver import get_saver  # noqa: E402
from autolog.stores import close_all  # noqa: E402
from autolog.writer import get_writer  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_autolog(tmp_path, monkeypatch):
    """A fresh store in a temp dir as the default tracking URI; autolog off afterwards."""
    for name in ("AUTOLOG_TRACKING_URI", "MLFLOW_TRACKING_URI", "AUTOLOG_EXPERIMENT",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
                 "AUTOLOG_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    # System metrics are on by default, and a sample every 10 s would land in any test
    # that runs that long and asserts a run's exact metrics: they are off for the suite
    # (and the scripts its tests start, which inherit this environment); the tests of
    # tests/test_system_metrics.py turn them on.
    monkeypatch.setenv("AUTOLOG_DISABLE", system_metrics.DISABLE_NAME)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOLOG_SPOOL_DIR", str(tmp_path / "spool"))  # never ~/.autolog/spool
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", uri)
    settings.tracking_uri = settings.experiment = None
    settings.on_conflict, settings.silent = "namespace", False
    yield uri
    while (run := run_module.active_run()) is not None:
        run.end()
    autolog.autolog(disable=True)
    system_metrics.configure({})  # on again, with its defaults (as a new process)
    for integration in registry.integrations().values():  # options stay until changed (the
        integration.options = dict(integration.default_options)  # core's rule): reset them
    saver = get_saver()  # the test's models are saved into its own store and staging area
    finished = saver.wait(300)
    failures = saver.take_failures()
    assert not failures, f"a model save failed during the test: {failures}"
    assert finished, f"a model save did not finish: {saver.describe_left()}"
    assert get_writer().flush(), "a write failed during the test"
    uploader = uploader_module.existing_uploader()
    if uploader is not None:  # each test stages into its own spool folder
        uploader.close()
        uploader_module.reset_uploader()
    close_all()


@pytest.fixture
def store_uri(isolated_autolog):
    return isolated_autolog


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs("1200k")``: a tmpfs of that size under the test's temp dir (a disk that
    fills), unmounted after the test; the test skips where mounting needs root it lacks."""
    mounted = []

    def mount(size: str):
        mount_point = tmp_path / f"tmpfs-{len(mounted)}"
        mount_point.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
