"""Key and value rules are MLflow's, checked at the call site before anything is queued."""

import math

import numpy as np
import pytest

import autolog
from autolog import validation


@pytest.mark.parametrize("key", ["loss", "val/acc", "a.b-c_d", "with space", "epoch:1", "x" * 250])
def test_valid_keys(key):
    assert validation.check_metric_key(key) == key


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("", "empty"),
        ("x" * 251, "limit is 250"),
        ("bad!", "may only contain"),
        ("a//b", "resolve to the path"),
        ("/abs", "resolve to the path"),
        ("../up", "resolve to the path"),
        ("trailing/", "resolve to the path"),
        (".", "resolve to the path"),
        (3, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_invalid_keys(key, fragment):
    with pytest.raises(ValueError, match=fragment):
        validation.check_param_key(key)


@pytest.mark.parametrize("value", ["1", None, b"x", [1.0], np.array([1.0, 2.0]), object(),
                                   np.array(["a"])])
def test_metric_values_that_are_not_one_number(value):
    with pytest.raises(ValueError, match="metric value"):
        validation.metric_value_kind(value)


def test_metric_value_kinds():
    assert validation.metric_value_kind(1.5) == "native"
    assert validation.metric_value_kind(3) == "native"
    assert validation.metric_value_kind(np.float32(1.5)) == "lazy"
    assert validation.metric_value_kind(np.array(2.0)) == "lazy"
    assert validation.to_float(np.array([[2.5]])) == 2.5


@pytest.mark.parametrize("step", [1.5, "3", True, None, 2**64])
def test_bad_steps(step):
    with pytest.raises(ValueError, match="step"):
        validation.check_step(step)


def test_integral_steps_accepted():
    assert validation.check_step(np.int64(7)) == 7
    assert validation.check_step(4.0) == 4


@pytest.mark.parametrize("timestamp", [-1, "now", math.inf, True])
def test_bad_timestamps(timestamp):
    with pytest.raises(ValueError, match="timestamp"):
        validation.check_timestamp_ms(timestamp)


def test_errors_raise_at_the_call_site_and_lose_nothing(store_uri):
    with autolog.start_run() as run:
        autolog.log_metric("ok", 1.0)
        autolog.log_param("p", 1)
        autolog.set_tag("t", "v")
        for bad_call in (
            lambda: autolog.log_metric("bad key!", 1.0),
            lambda: autolog.log_metric("ok", "high"),
            lambda: autolog.log_metric("ok", 1.0, step=0.5),
            lambda: autolog.log_metric("ok", 1.0, timestamp=-5),
            lambda: autolog.log_metrics({"fine": 1.0, "bad": "x"}),
            lambda: autolog.log_param("v", "x" * 6001),
            lambda: autolog.set_tag("t2", "x" * 8001),
            lambda: autolog.log_param("", 1),
        ):
            with pytest.raises(ValueError):
                bad_call()
    record = autolog.get_run(run.id)
    assert record.metrics == {"ok": 1.0}  # log_metrics checked every value before queueing
    assert record.params == {"p": "1"}
    assert record.tags["t"] == "v"


def test_limits_are_mlflows():
    from mlflow.utils import validation as mlflow_validation

    assert validation.MAX_KEY_LENGTH == mlflow_validation.MAX_ENTITY_KEY_LENGTH
    assert validation.MAX_PARAM_VALUE_LENGTH == mlflow_validation.MAX_PARAM_VAL_LENGTH
    assert validation.MAX_TAG_VALUE_LENGTH == mlflow_validation.MAX_TAG_VAL_LENGTH
    assert validation.MAX_METRICS_PER_BATCH == mlflow_validation.MAX_METRICS_PER_BATCH
    assert validation.MAX_PARAMS_TAGS_PER_BATCH == mlflow_validation.MAX_PARAMS_TAGS_PER_BATCH
    for key in ("ok/key", "bad!", "a//b", "x" * 251):
        mlflow_ok = True
        try:
            mlflow_validation._validate_param_name(key)
            mlflow_validation._validate_length_limit("k", 250, key)
        except Exception:  # noqa: BLE001 - MlflowException
            mlflow_ok = False
        try:
            validation.check_param_key(key)
            ours_ok = True
        except ValueError:
            ours_ok = False
        assert ours_ok == mlflow_ok, key


def test_torch_scalars_are_converted_by_the_writer_thread_only(store_uri, monkeypatch):
    torch = pytest.importorskip("torch")
    import threading

    conversions = []
    for name in ("item", "tolist", "__float__", "cpu"):
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _original=original, **kwargs):
            conversions.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    weight = torch.tensor(2.0, requires_grad=True)
    with autolog.start_run() as run:
        for step in range(5):
            loss = weight * step
            autolog.log_metric("loss", loss.detach(), step=step)
            autolog.log_metric("count", torch.tensor(step), step=step)
        # nothing converted on the training thread (the writer may have run already)
        assert set(conversions) <= {"autolog-writer"}
        autolog.flush()
    assert [m.value for m in autolog.get_metric_history(run.id, "loss")] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert autolog.get_run(run.id).metrics == {"loss": 8.0, "count": 4.0}
    with pytest.raises(ValueError, match="scalar tensor"):
        autolog.log_metric("vector", torch.ones(3))


def test_to_floats_converts_exactly_whatever_the_batch_mixes():
    torch = pytest.importorskip("torch")
    from decimal import Decimal

    big = 2**40 + 1  # exact in float64, not in float32
    one_dtype = [torch.tensor(0.5), torch.tensor(1.25), torch.tensor(-2.0)]
    assert validation.to_floats(one_dtype) == [0.5, 1.25, -2.0]
    assert validation.to_floats([torch.tensor(big), torch.tensor(3)]) == [float(big), 3.0]
    mixed_dtypes = [torch.tensor(big), torch.tensor(0.1, dtype=torch.float32),
                    torch.tensor(0.1, dtype=torch.float64), torch.tensor(1.5, dtype=torch.bfloat16)]
    assert validation.to_floats(mixed_dtypes) == [float(big), float(np.float32(0.1)), 0.1, 1.5]
    shapes = [torch.tensor(1.0), torch.tensor([2.0]), torch.tensor([[3.0]])]
    assert validation.to_floats(shapes) == [1.0, 2.0, 3.0]
    kinds = [torch.tensor(1.0), 2.5, np.float32(0.25), Decimal("0.75"), torch.tensor(4)]
    assert validation.to_floats(kinds) == [1.0, 2.5, 0.25, 0.75, 4.0]
    assert validation.to_floats(kinds[1:] + kinds[:1]) == [2.5, 0.25, 0.75, 4.0, 1.0]
    graph = torch.tensor(2.0, requires_grad=True) * 3
    assert validation.to_floats([graph, torch.tensor(1.0)]) == [6.0, 1.0]


def test_a_run_that_has_ended_refuses_tensors_on_the_integrations_path(store_uri):
    torch = pytest.importorskip("torch")
    with autolog.start_run() as run:
        run.log_checked_tensor("loss", torch.tensor(0.5), 1)
    assert autolog.get_run(run.id).metrics == {"loss": 0.5}
    with pytest.raises(RuntimeError, match="has ended"):
        run.log_checked_tensor("loss", torch.tensor(0.25), 2)
    assert [m.value for m in autolog.get_metric_history(run.id, "loss")] == [0.5]
