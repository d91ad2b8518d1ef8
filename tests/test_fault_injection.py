"""Every integration contains its own faults: each way an autologged call reaches the run
fails in turn, inside a real fit of each framework.

Each hook of an integration hands what it logs to the run (params, tags, metrics, the
per-step tensors), so making each of those calls raise reaches every hook that logs: the
user's fit must end with the same result as without autolog and one warning per
distinct fault (strict mode: the fault is raised). Lightning's callback is also faulted
hook by hook in ``test_lightning.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lightning import loader, regressor, trainer

import autolog
from autolog.run import Run


class Fault(Exception):
    pass


def features(n: int = 200):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def sklearn_search(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import GridSearchCV

    X, y = features()
    search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    return search.best_estimator_.coef_.tolist(), accuracy_score(y, search.predict(X))


def xgboost_train(tmp_path):
    import xgboost as xgb

    X, y = features()
    matrix = xgb.DMatrix(X, label=y)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, matrix,
                        num_boost_round=5, evals=[(matrix, "train")], verbose_eval=False)
    return booster.predict(matrix).tolist()


def torch_loop(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        for step in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
            loss.backward()
            optimizer.step()
            writer.add_scalar("loss", loss.item(), step)
    return [p.detach().tolist() for p in model.parameters()]


def lightning_fit(tmp_path):
    import lightning.pytorch as pl

    model = regressor(pl)()
    trainer(pl, tmp_path).fit(model, loader(), loader(32, seed=1))
    return [p.detach().tolist() for p in model.parameters()]


WORKLOADS = {"sklearn": sklearn_search, "xgboost": xgboost_train, "torch": torch_loop,
             "lightning": lightning_fit}
# The run's methods each workload's hooks call (a call no longer made fails its case: the
# fault would not be met, and no warning given).
CALLS = {
    "sklearn": ("log_autolog_params", "set_tags", "log_metric"),
    "xgboost": ("log_autolog_params", "set_tags", "log_metric"),
    "torch": ("log_autolog_params", "log_metric", "log_checked_tensor"),
    "lightning": ("log_autolog_params", "log_metric", "log_checked_tensor"),
}


def inject(monkeypatch, call: str) -> Fault:
    fault = Fault(f"injected into Run.{call}")

    def broken(*args, **kwargs):
        raise fault

    monkeypatch.setattr(Run, call, broken)
    return fault


@pytest.mark.parametrize(("framework", "call"),
                         [(framework, call) for framework, calls in CALLS.items() for call in calls])
def test_a_fault_on_the_way_to_the_run_is_a_warning_and_the_fit_is_unchanged(
        framework, call, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    workload = WORKLOADS[framework]
    expected = workload(tmp_path)
    fault = inject(monkeypatch, call)
    autolog.autolog()
    with pytest.warns(autolog.AutologWarning) as warned:
        got = workload(tmp_path)
        autolog.end_run()  # the torch integration's run has no end of its own
    assert got == expected
    ours = [str(w.message) for w in warned if issubclass(w.category, autolog.AutologWarning)]
    assert ours and all(str(fault) in message for message in ours), "\n".join(ours)
    assert len(set(ours)) == len(ours)  # one warning per distinct fault, not one per step
    assert all(run.status == "FINISHED" for run in autolog.search_runs())


@pytest.mark.parametrize("framework", sorted(WORKLOADS))
def test_in_strict_mode_the_first_fault_is_raised(framework, monkeypatch, tmp_path):
    fault = inject(monkeypatch, "log_autolog_params")
    autolog.autolog()
    with pytest.raises(Fault) as raised:
        WORKLOADS[framework](tmp_path)
    assert raised.value is fault
    autolog.end_run()
