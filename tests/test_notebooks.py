"""Notebooks: the notebook as a run's source (and its git tags), a run per training loop,
and a run's HTML display; the last test runs a real notebook in a Jupyter kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import mlflow
import pytest

import autolog
from autolog import source
from autolog.run import HTML_METRICS

pytest_plugins = ("mlflow_server",)

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def git_repo(path: Path, *files: str) -> str:
    """A work tree at ``path`` on branch ``notebooks``, ``files`` committed; its HEAD."""
    path.mkdir(exist_ok=True)
    git(path, "init", "-q", "-b", "notebooks")
    for name in files:
        (path / name).touch(exist_ok=True)
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "notebooks")
    return git(path, "rev-parse", "HEAD")


# -- the source: which notebook, which shell -----------------------------------------------


class Shell:
    """Stands in for IPython's ``InteractiveShell`` singleton: a kernel's has ``kernel``."""

    running: Shell | None = None

    def __init__(self, user_ns: dict, kernel: object = None):
        self.user_ns, self.kernel = user_ns, kernel

    @classmethod
    def initialized(cls) -> bool:
        return cls.running is not None

    @classmethod
    def instance(cls) -> Shell:
        return cls.running


@pytest.fixture
def shell(monkeypatch):
    """``shell(user_ns, kernel)`` makes it the running IPython shell, as sys.modules shows it."""
    monkeypatch.setitem(sys.modules, "IPython.core.interactiveshell",
                        types.SimpleNamespace(InteractiveShell=Shell))
    monkeypatch.delenv(source.SESSION_NAME_ENV, raising=False)
    monkeypatch.setattr(Shell, "running", None)

    def start(user_ns: dict, kernel: object = None) -> Shell:
        Shell.running = Shell(user_ns, kernel)
        return Shell.running

    return start


def test_a_kernel_names_the_notebook_from_vscode_then_the_session_then_the_environment(
        shell, tmp_path, monkeypatch):
    commit = git_repo(tmp_path / "repo", "vscode.ipynb", "lab.ipynb", "env.ipynb")
    repo = (tmp_path / "repo").resolve()
    monkeypatch.setenv(source.SESSION_NAME_ENV, str(repo / "env.ipynb"))
    namespace = {"__vsc_ipynb_file__": str(repo / "vscode.ipynb"), "__session__": str(repo / "lab.ipynb")}
    shell(namespace, kernel=object())
    assert source.source() == (str(repo / "vscode.ipynb"), "NOTEBOOK", str(repo))
    del namespace["__vsc_ipynb_file__"]
    assert source.source()[0] == str(repo / "lab.ipynb")
    del namespace["__session__"]
    assert source.source()[0] == str(repo / "env.ipynb")
    source.system_tags.cache_clear()
    try:
        tags = source.system_tags()
    finally:
        source.system_tags.cache_clear()
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == (str(repo / "env.ipynb"), "NOTEBOOK")
    assert (tags["mlflow.source.git.commit"], tags["mlflow.source.git.branch"]) == (commit, "notebooks")


def test_a_session_path_relative_to_the_servers_root_is_found_from_the_kernels_directory(
        shell, tmp_path, monkeypatch):
    folder = tmp_path / "project" / "analysis"
    folder.mkdir(parents=True)
    (folder / "explore.ipynb").touch()
    monkeypatch.chdir(folder)  # jupyter_server starts the kernel in the notebook's folder
    shell({"__session__": "analysis/explore.ipynb"}, kernel=object())  # before jupyter_server 2.0.7
    assert source.source()[0] == str((folder / "explore.ipynb").resolve())
    shell({"__session__": "explore.ipynb"}, kernel=object())
    assert source.source()[0] == str((folder / "explore.ipynb").resolve())


def test_a_kernel_without_a_notebook_is_a_notebook_source_with_git_from_its_directory(
        shell, tmp_path, monkeypatch):
    git_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    shell({"__session__": "Console 1"}, kernel=object())  # jupyter console: no file
    assert source.source() == ("<notebook>", "NOTEBOOK", str(tmp_path / "repo"))


def test_ipythons_terminal_is_interactive_not_its_script(shell, monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # no __file__
    monkeypatch.setattr(sys, "argv", ["/usr/bin/ipython"])
    shell({})
    assert source.source() == ("<interactive>", "LOCAL", os.getcwd())
    monkeypatch.setenv(source.SESSION_NAME_ENV, "inherited.ipynb")  # `!python x.py` in a notebook
    assert source.source()[1] == "LOCAL"


def test_import_autolog_and_a_run_import_no_ipython(store_uri):
    script = ("import sys, autolog\n"
              "with autolog.start_run() as run: pass\n"
              "assert 'IPython' not in sys.modules, 'IPython imported'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "AUTOLOG_TRACKING_URI": store_uri})
    assert result.returncode == 0, result.stderr
    (run,) = autolog.search_runs()
    assert (run.tags["mlflow.source.name"], run.tags["mlflow.source.type"]) == ("<command>", "LOCAL")


# -- the HTML display ------------------------------------------------------------------------


def test_a_runs_html_escapes_its_name_shows_the_latest_metrics_and_the_mlflow_ui_command(store_uri):
    with autolog.start_run(run_name='<script>alert("x")</script> & co') as run:
        for step in range(3):
            autolog.log_metric("loss", 1.0 / (step + 1), step=step)
        autolog.log_metrics({f"m{index:02d}": index for index in range(HTML_METRICS + 2)}, step=7)
        assert "none written yet" in run._repr_html_()  # nothing written yet, nothing asked
        autolog.flush()
        page = run._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert f"<code>{run.id}</code>" in page and "RUNNING" in page
    assert "loss = 0.333333 <small>(step 2)</small>" in page  # the latest point, not the first
    assert "m00 = 0 <small>(step 7)</small>" in page and "and 3 more" in page  # loss + m00..m06
    assert f"<code>mlflow ui --backend-store-uri {store_uri}</code>" in page
    assert "FINISHED" in run._repr_html_() and repr(run).startswith("<autolog.Run id=")


def test_a_runs_html_shows_the_training_metrics_before_the_system_metrics(store_uri, monkeypatch):
    monkeypatch.delenv("AUTOLOG_DISABLE")  # conftest's default: system metrics off
    autolog.autolog(system_metrics={"interval": 0.1})
    with autolog.start_run() as run:
        deadline = time.monotonic() + 30
        while sum(key.startswith("system/") for key in run.latest_metrics) < HTML_METRICS:
            assert time.monotonic() < deadline, "no system metrics sampled"
            time.sleep(0.1)
            autolog.flush()
        autolog.log_metrics({"val_loss": 0.5, "train_loss": 0.25}, step=1)
        autolog.flush()
        page = run._repr_html_()
    shown = page.split("<th style=\"text-align:left\">Metrics</th>")[1].split("</td>")[0]
    assert shown.index("train_loss = 0.25") < shown.index("val_loss = 0.5") < shown.index("system/")
    assert "more" in shown


def test_a_server_runs_html_links_its_page_without_credentials(sqlite_server, monkeypatch):
    server = sqlite_server.uri
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", server.replace("//", "//alice:s3cret@"))
    with autolog.start_run(run_name="on-the-server") as run:
        autolog.log_metric("acc", 0.5)
        autolog.flush()
        page = run._repr_html_()
    link = f"{server}/#/experiments/{run.experiment_id}/runs/{run.id}"
    assert f'<a href="{link}" target="_blank">{link}</a>' in page
    assert "s3cret" not in page and "alice" not in page and "acc = 0.5" in page
    assert mlflow.MlflowClient(server).get_run(run.id).info.run_name == "on-the-server"


def test_a_run_started_offline_says_where_it_will_be(spool_dir, unused_uri, monkeypatch):
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", unused_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the server does not answer: one warning, expected
        with autolog.start_run() as run:
            page = run._repr_html_()
    assert run.id.startswith("offline-") and run.id in page
    assert f"on {unused_uri} once it answers" in page and "#/experiments" not in page


def test_the_html_display_never_raises(store_uri):
    with autolog.start_run(run_name="broken") as run:
        run.latest_metrics["loss"] = ("not a number", 1)  # what no writer would leave
        expected = f"&lt;autolog.Run id={run.id} name=&#x27;broken&#x27; status=RUNNING&gt;"
        assert run._repr_html_() == f"<pre>{expected}</pre>"


# -- a real notebook in a Jupyter kernel -------------------------------------------------------

SETUP = """\
import warnings
import autolog, torch
warnings.simplefilter("error", autolog.AutologWarning)
autolog.autolog()
torch.manual_seed(0)
x = torch.randn(32, 4)
y = x.sum(1, keepdim=True)

def train(optimizer_class, lr, steps):
    model = torch.nn.Linear(4, 1)
    optimizer = optimizer_class(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
"""
CELL_A = "train(torch.optim.SGD, 0.1, 5)\nautolog.flush()\nprint(autolog.active_run().id)"
CELL_B = "train(torch.optim.Adam, 0.01, 3)\nautolog.flush()\nprint(autolog.active_run().id)"
CELL_C = """\
with autolog.start_run(run_name="mine") as mine:
    train(torch.optim.SGD, 0.5, 4)
    assert autolog.active_run() is mine and mine.status == "RUNNING", "the loop ended mine"
    autolog.flush()
print(mine.id)
"""
CELL_SHOW = "mine"


@pytest.mark.timeout(300)  # a kernel starts in seconds, and imports torch in a few more
def test_a_notebook_logs_a_run_per_loop_under_its_path_and_commit(store_uri, tmp_path, monkeypatch):
    import ipykernel.kernelspec
    import nbformat
    from nbclient import NotebookClient

    # this interpreter's kernel, whatever kernelspecs the machine has (JUPYTER_PATH comes first)
    prefix = tmp_path / "jupyter"
    ipykernel.kernelspec.install(prefix=str(prefix), kernel_name="python3")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("AUTOLOG_STRICT", "1")
    repo = tmp_path / "project"
    repo.mkdir()
    path = repo / "train.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(cell) for cell in (SETUP, CELL_A, CELL_B, CELL_C, CELL_SHOW)])
    nbformat.write(notebook, path)
    commit = git_repo(repo)
    client = mlflow.MlflowClient(store_uri)

    def run_cell(index: int) -> str:
        cell = executor.execute_cell(notebook.cells[index], index)
        return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream").strip()

    executor = NotebookClient(notebook, timeout=240, kernel_name="python3",
                              resources={"metadata": {"path": str(repo)}})
    # jupyter_server starts a notebook's kernel with JPY_SESSION_NAME, the notebook's path
    with executor.setup_kernel(env={**os.environ, "JPY_SESSION_NAME": str(path)}):
        run_cell(0)
        run_a = run_cell(1)
        assert client.get_run(run_a).info.status == "RUNNING"
        run_b = run_cell(2)
        # the new optimizer ended the first loop's run before its first step started the next
        assert client.get_run(run_a).info.status == "FINISHED"
        assert client.get_run(run_b).info.status == "RUNNING"
        mine = run_cell(3)
        assert client.get_run(run_b).info.status == "FINISHED"  # start_run ended it
        run_cell(4)
    shown = notebook.cells[4].outputs[0]["data"]
    assert "<b>mine</b>" in shown["text/html"] and f"<code>{mine}</code>" in shown["text/html"]
    assert "train_loss = " in shown["text/html"] and "mlflow ui --backend-store-uri" in shown["text/html"]

    runs = {run.info.run_id: run for run in client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()])}
    assert set(runs) == {run_a, run_b, mine}
    for run_id, lr, points in ((run_a, 0.1, 5), (run_b, 0.01, 3), (mine, 0.5, 4)):
        run = runs[run_id]
        assert run.info.status == "FINISHED"
        assert run.data.params["lr"] == str(lr) and run.data.metrics["lr"] == lr
        assert not any(key.startswith("optimizer_1.") for key in [*run.data.params, *run.data.metrics])
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, points + 1))
        tags = run.data.tags
        assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == (str(path.resolve()), "NOTEBOOK")
        assert (tags["mlflow.source.git.commit"], tags["mlflow.source.git.branch"]) == (commit, "notebooks")
    assert runs[mine].info.run_name == "mine" and "autolog.integration" not in runs[mine].data.tags
    assert runs[run_a].data.tags["autolog.integration"] == "torch"
