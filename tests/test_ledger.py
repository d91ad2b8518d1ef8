"""The param ledger: canonical equality, provenance, conflict policies, resume seeding."""

from decimal import Decimal

import numpy as np
import pytest

import autolog
from autolog.ledger import ParamConflictError, ParamLedger, canonical, equivalent

SAME_AS_ONE = [1, 1.0, "1", "1.0", " 1 ", np.int64(1), np.int32(1), np.float64(1.0),
               np.float32(1.0), Decimal("1.00"), "1e0"]


@pytest.mark.parametrize("a", SAME_AS_ONE)
@pytest.mark.parametrize("b", SAME_AS_ONE)
def test_values_that_mean_one_are_equal(a, b):
    assert equivalent(canonical(a), canonical(b))


@pytest.mark.parametrize(
    "a, b",
    [
        (np.float32(0.1), 0.1),  # a float32 and the float64 it came from
        (np.float32(0.1), float(np.float32(0.1))),  # and the float64 made from it
        (np.float32(1 / 3), 1 / 3),
        (0.1, "0.1"),
        (True, "True"),
        (False, "false"),
        (np.bool_(True), True),
        (None, "None"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (2**70, str(2**70)),
        ("adam", "adam"),
        ([1, 2], "[1, 2]"),
    ],
)
def test_canonically_equal(a, b):
    assert equivalent(canonical(a), canonical(b))
    assert equivalent(canonical(b), canonical(a))


@pytest.mark.parametrize(
    "a, b",
    [
        (1, 2),
        (0.1, 0.2),
        (0.1, 0.1000001),
        (True, 1),  # MLflow stores "True" and "1": different strings, different meaning
        (True, False),
        ("adam", "Adam"),
        (np.float32(0.1), 0.10001),
        (None, "none-value"),
        (1, "1a"),
    ],
)
def test_canonically_different(a, b):
    assert not equivalent(canonical(a), canonical(b))


def test_repeat_that_means_the_same_is_not_sent_again():
    ledger = ParamLedger()
    assert ledger.record_manual({"lr": 0.1}, "here:1") == {"lr": "0.1"}
    assert ledger.record_manual({"lr": "0.1"}, "here:2") == {}
    assert ledger.record_autolog({"lr": np.float32(0.1)}, "torch", "fit:3") == {}
    assert ledger.get("lr").source == "manual"


def test_manual_conflict_names_key_values_sources_and_first_call_site():
    ledger = ParamLedger()
    ledger.record_manual({"C": 1.0}, "train.py:10")
    with pytest.raises(ParamConflictError) as caught:
        ledger.record_manual({"C": 2.0}, "train.py:20")
    message = str(caught.value)
    for fragment in ("'C'", "'1.0'", "'2.0'", "manual", "train.py:10"):
        assert fragment in message
    assert isinstance(caught.value, ValueError)


def test_manual_batch_with_one_conflict_admits_nothing():
    ledger = ParamLedger()
    ledger.record_manual({"a": 1}, "x:1")
    with pytest.raises(ParamConflictError):
        ledger.record_manual({"b": 2, "a": 3}, "x:2")
    assert "b" not in ledger


def test_autolog_conflict_default_namespaces_with_a_warning():
    ledger = ParamLedger()
    ledger.record_manual({"C": 0.5}, "train.py:3")
    with pytest.warns(autolog.AutologWarning, match="sklearn.C"):
        sent = ledger.record_autolog({"C": 1.0, "max_iter": 100}, "sklearn", "train.py:4")
    assert sent == {"sklearn.C": "1.0", "max_iter": "100"}
    assert ledger.get("sklearn.C").source == "autolog:sklearn"


def test_autolog_conflict_skip_and_raise():
    skip = ParamLedger("skip")
    skip.record_manual({"C": 0.5}, "t:1")
    with pytest.warns(autolog.AutologWarning, match="skipped"):
        assert skip.record_autolog({"C": 1.0}, "sklearn", "t:2") == {}
    strict = ParamLedger("raise")
    strict.record_manual({"C": 0.5}, "t:1")
    with pytest.raises(ParamConflictError, match="autolog:sklearn"):
        strict.record_autolog({"C": 1.0}, "sklearn", "t:2")


def test_bad_autolog_key_is_skipped_and_long_value_truncated():
    ledger = ParamLedger()
    with pytest.warns(autolog.AutologWarning) as warned:
        sent = ledger.record_autolog({"bad key!": 1, "long": "x" * 7000, "ok": 2}, "x", "t:1")
    assert sent["ok"] == "2" and "bad key!" not in sent
    assert sent["long"] == "x" * 5997 + "..."  # as MLflow's autolog cuts it: it looks cut
    assert len(warned) == 2


def test_seeded_params_conflict_like_logged_ones():
    ledger = ParamLedger()
    ledger.seed({"epochs": "10"})
    assert ledger.record_manual({"epochs": 10}, "t:1") == {}
    with pytest.raises(ParamConflictError, match="earlier run"):
        ledger.record_manual({"epochs": 11}, "t:2")


def test_invalid_policy_rejected():
    with pytest.raises(ValueError, match="on_conflict"):
        ParamLedger("overwrite")
    with pytest.raises(ValueError, match="on_conflict"):
        autolog.autolog(on_conflict="overwrite")


def test_manual_conflict_raises_at_the_callers_line_and_stores_nothing(store_uri):
    with autolog.start_run() as run:
        autolog.log_param("C", 1.0)
        autolog.log_metric("m", 1.0)
        with pytest.raises(autolog.ParamConflictError) as caught:
            autolog.log_param("C", 2)
        assert caught.traceback[-1].path.name == "ledger.py"
        assert any(entry.path.name == "test_ledger.py" for entry in caught.traceback)
        assert "test_ledger.py" in str(caught.value)  # the first call site
    record = autolog.get_run(run.id)
    assert record.params == {"C": "1.0"}
    assert record.metrics == {"m": 1.0}  # nothing logged before was lost


def test_resume_seeds_the_ledger_from_the_store(store_uri):
    with autolog.start_run() as run:
        autolog.log_params({"lr": 0.01, "opt": "adam"})
    with autolog.start_run(run_id=run.id) as resumed:
        assert resumed.param_sources() == {"lr": "store", "opt": "store"}
        autolog.log_param("lr", "0.01")  # same meaning: fine, not resent
        with pytest.raises(autolog.ParamConflictError, match="earlier run"):
            autolog.log_param("opt", "sgd")
        autolog.log_param("epochs", 3)
    assert autolog.get_run(run.id).params == {"lr": "0.01", "opt": "adam", "epochs": "3"}


def test_float32_origin_is_kept_for_later_comparisons():
    ledger = ParamLedger()
    ledger.record_manual({"lr": np.float32(0.1)}, "t:1")
    assert ledger.record_manual({"lr": float(np.float32(0.1))}, "t:2") == {}
    assert ledger.record_manual({"lr": 0.1}, "t:3") == {}
