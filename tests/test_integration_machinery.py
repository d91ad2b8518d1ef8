"""Plugin machinery with a fake framework: import hooks, versions, guard, re-entrancy."""

import inspect
import sys
import textwrap
import threading

import pytest

import autolog
from autolog import integration as integration_module
from autolog import patching
from autolog.integration import Integration, Probe
from autolog.patching import current_owner, outermost


class FakeIntegration(Integration):
    name = "fakefw"
    modules = ("fakefw",)
    supported = ">=1.0,<2"
    default_options = {"log_inputs": True}

    def __init__(self):
        super().__init__()
        self.fail_in_autolog = False

    def patch(self, module):
        self.patcher.wrap(module.Model, "fit", self._fit)

    def _fit(self, wrapped, instance, args, kwargs):
        with outermost(self.name) as owner:
            if not owner:
                return wrapped(*args, **kwargs)
            with self.fit_run() as run:
                with self.guard():
                    if self.fail_in_autolog:
                        raise KeyError("bug in autolog")
                    run.log_autolog_params({"depth": instance.depth}, self.name)
                result = wrapped(*args, **kwargs)
                with self.guard():
                    run.log_metric("fitted", 1.0)
                return result


@pytest.fixture
def fake(tmp_path, monkeypatch):
    (tmp_path / "fakefw.py").write_text(textwrap.dedent(
        """
        __version__ = "1.4.0"
        class Model:
            depth = 3
            def fit(self, fail=False, inner=None):
                if fail:
                    raise ArithmeticError("framework says no")
                if inner is not None:
                    inner.fit()
                return "fitted-result"
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fakefw", None)
    plugin = FakeIntegration()
    registry = integration_module.registry
    monkeypatch.setattr(registry, "_integrations", {**registry.integrations(), "fakefw": plugin})
    yield plugin
    plugin.disable()
    sys.modules.pop("fakefw", None)


def test_framework_imported_after_autolog_is_patched(fake):
    autolog.autolog()
    import fakefw

    original = fakefw.Model.__dict__["fit"].__wrapped__
    assert fakefw.Model().fit() == "fitted-result"
    runs = autolog.search_runs()
    assert len(runs) == 1 and runs[0].params == {"depth": "3"}
    assert runs[0].tags["autolog.integration"] == "fakefw" and runs[0].status == "FINISHED"
    autolog.autolog(disable=True)
    assert fakefw.Model.__dict__["fit"] is original


def test_framework_imported_before_autolog_is_patched_once(fake):
    import fakefw

    original = fakefw.Model.__dict__["fit"]
    autolog.autolog()
    autolog.autolog(fakefw={"log_inputs": False})
    assert fake.options == {"log_inputs": False}
    assert len(fake.patcher) == 1
    assert fakefw.Model.__dict__["fit"].__wrapped__ is original
    autolog.autolog(fakefw=False)
    assert fakefw.Model.__dict__["fit"] is original


def test_fit_inside_a_user_run_logs_there_and_leaves_it_open(fake):
    autolog.autolog()
    import fakefw

    with autolog.start_run() as run:
        autolog.log_param("manual", 1)
        fakefw.Model().fit()
        assert autolog.active_run() is run
    record = autolog.get_run(run.id)
    assert record.params == {"manual": "1", "depth": "3"} and record.metrics == {"fitted": 1.0}
    assert "autolog.integration" not in record.tags


def test_framework_error_reaches_the_user_unchanged_and_fails_the_run(fake):
    autolog.autolog()
    import fakefw

    with pytest.raises(ArithmeticError, match="framework says no"):
        fakefw.Model().fit(fail=True)
    assert autolog.search_runs()[0].status == "FAILED"


def test_autolog_error_is_one_warning_and_the_fit_goes_on(fake, monkeypatch):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    autolog.autolog()
    import fakefw

    fake.fail_in_autolog = True
    with pytest.warns(autolog.AutologWarning, match="bug in autolog") as warned:
        assert fakefw.Model().fit() == "fitted-result"
        assert fakefw.Model().fit() == "fitted-result"
    assert len(warned) == 1


def test_autolog_error_raises_in_strict_mode(fake):
    autolog.autolog()
    import fakefw

    fake.fail_in_autolog = True
    with pytest.raises(KeyError, match="bug in autolog"):
        fakefw.Model().fit()


def test_a_fit_inside_a_fit_is_logged_once(fake):
    autolog.autolog()
    import fakefw

    assert current_owner() is None
    fakefw.Model().fit(inner=fakefw.Model())
    assert len(autolog.search_runs()) == 1
    assert current_owner() is None


def test_ownership_is_per_thread_and_a_forked_child_keeps_only_its_own(monkeypatch):
    seen_in_other_thread = []
    with outermost("sklearn") as outer:
        assert outer and current_owner() == "sklearn"
        other = threading.Thread(target=lambda: seen_in_other_thread.append(current_owner()))
        other.start()
        other.join()
        monkeypatch.setitem(patching._owners, -1, "xgboost")  # a thread the child won't have
        patching.after_fork_in_child()  # what a forked child runs
        assert patching._owners == {threading.get_ident(): "sklearn"}
    assert seen_in_other_thread == [None]
    assert current_owner() is None and patching._owners == {}


def test_an_older_version_is_skipped_with_one_warning(fake, monkeypatch):
    import fakefw

    monkeypatch.setattr(fakefw, "__version__", "0.9.2")
    original = fakefw.Model.__dict__["fit"]
    with pytest.warns(autolog.AutologWarning, match=r"fakefw 0\.9\.2 is older than the fakefw "
                      r"integration supports \(>=1\.0,<2\); not autologging it"):
        autolog.autolog()
    autolog.autolog()  # no second warning (pytest turns one into an error)
    assert fakefw.Model.__dict__["fit"] is original
    fakefw.Model().fit()
    assert autolog.search_runs() == []


def test_a_newer_version_is_autologged_with_one_notice(fake, monkeypatch):
    import fakefw

    monkeypatch.setattr(fakefw, "__version__", "2.1.0")
    with pytest.warns(autolog.AutologWarning, match=r"fakefw 2\.1\.0 is newer than the releases "
                      r"the fakefw integration is tested on \(>=1\.0,<2\); autologging it"):
        autolog.autolog()
    autolog.autolog()
    assert fakefw.Model().fit() == fakefw.Model().fit() == "fitted-result"
    runs = autolog.search_runs()
    assert [run.params for run in runs] == [{"depth": "3"}] * 2
    assert [run.metrics for run in runs] == [{"fitted": 1.0}] * 2


class ProbedIntegration(FakeIntegration):
    """Logs ``depth`` only where the framework still has ``Model._depth_of``."""

    probes = (Probe("the depth param", "Model._depth_of()", lambda fw: callable(fw.Model._depth_of)),
              Probe("the depth param", "Model.depth", lambda fw: fw.Model.depth is not None),
              Probe("the speed metric", "Model._speed", lambda fw: fw.Model._speed))

    def _fit(self, wrapped, instance, args, kwargs):
        with self.fit_run() as run:
            result = wrapped(*args, **kwargs)
            if self.feature_on("the depth param"):
                run.log_autolog_params({"depth": instance._depth_of()}, self.name)
            run.log_metric("other", 2.0)
            return result


def test_a_failed_probe_turns_off_its_feature_alone_with_one_warning(fake, monkeypatch):
    import fakefw

    plugin = ProbedIntegration()
    registry = integration_module.registry
    monkeypatch.setitem(registry._integrations, "fakefw", plugin)
    monkeypatch.setattr(fakefw.Model, "_depth_of", lambda self: self.depth, raising=False)
    with pytest.warns(autolog.AutologWarning) as told:
        autolog.autolog()
    assert [str(w.message) for w in told] == [
        "autolog (fakefw): fakefw 1.4.0 has no Model._speed; the speed metric not logged (the rest is)"]
    assert plugin.feature_on("the depth param") and not plugin.feature_on("the speed metric")
    autolog.autolog(disable=True)

    monkeypatch.delattr(fakefw.Model, "_depth_of")  # a release without the internal
    with pytest.warns(autolog.AutologWarning) as told:
        autolog.autolog()
    assert sorted(str(w.message) for w in told) == [
        "autolog (fakefw): fakefw 1.4.0 has no Model._depth_of(); the depth param not logged "
        "(the rest is)",
        "autolog (fakefw): fakefw 1.4.0 has no Model._speed; the speed metric not logged (the rest is)"]
    autolog.autolog()  # no second warning
    for _ in range(2):
        assert fakefw.Model().fit() == "fitted-result"
    runs = autolog.search_runs()
    assert [(run.params, run.metrics, run.status) for run in runs] == [({}, {"other": 2.0}, "FINISHED")] * 2
    plugin.disable()


def test_opt_outs_and_bad_options(fake, monkeypatch):
    import fakefw

    original = fakefw.Model.__dict__["fit"]
    monkeypatch.setenv("AUTOLOG_DISABLE", "fakefw")
    autolog.autolog()
    assert fakefw.Model.__dict__["fit"] is original
    monkeypatch.delenv("AUTOLOG_DISABLE")
    with pytest.raises(TypeError, match="unknown option"):
        autolog.autolog(fakefw={"colour": "red"})
    with pytest.raises(TypeError, match="True, False or a dict"):
        autolog.autolog(fakefw="yes")


def test_silent_hides_autolog_warnings(fake, monkeypatch, recwarn):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    autolog.autolog(silent=True)
    import fakefw

    fake.fail_in_autolog = True
    fakefw.Model().fit()
    assert not [w for w in recwarn if issubclass(w.category, autolog.AutologWarning)]


class Widget:
    def step(self, amount: int, *, scale: int = 1) -> int:
        """Advance by ``amount``."""
        return amount * scale


class Gadget(Widget):
    pass


def through(calls):
    """A ``Patcher.wrap_hot`` wrapper recording what it was given."""

    def wrapper(original, instance, args, kwargs):
        calls.append((instance, args, kwargs))
        return original(instance, *args, **kwargs) + 1

    return wrapper


def test_wrap_hot_patches_a_plain_method_and_restores_the_exact_original():
    from autolog.patching import Patcher

    original, calls = Widget.step, []
    patcher = Patcher()
    patcher.wrap_hot(Widget, "step", through(calls))
    patcher.wrap_hot(Widget, "step", through(calls))  # a second wrap is a no-op
    widget = Widget()
    assert widget.step(2, scale=3) == 7
    assert calls == [(widget, (2,), {"scale": 3})]
    patched = Widget.step
    assert patched.__wrapped__ is original and patched.__doc__ == original.__doc__
    assert inspect.signature(patched) == inspect.signature(original)
    patcher.restore()
    assert vars(Widget)["step"] is original and widget.step(2) == 2


def test_wrap_hot_falls_back_to_wrapt_for_an_inherited_method():
    from autolog.patching import Patcher

    calls = []
    patcher = Patcher()
    patcher.wrap_hot(Gadget, "step", through(calls))
    gadget = Gadget()
    assert gadget.step(2, scale=3) == 7 and Widget().step(2) == 2  # the base class untouched
    assert calls == [(gadget, (2,), {"scale": 3})]
    patcher.restore()
    assert "step" not in vars(Gadget) and gadget.step(2) == 2
