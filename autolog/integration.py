"""The Integration base class and the registry of plugins.

Plugins are found only through the entry-point group ``autolog.integrations`` (the
built-in ones in ``integrations/`` register there too), so a third-party package adds its
own the same way::

    [project.entry-points."autolog.integrations"]
    catboost = "my_package.autolog_catboost:CatBoostIntegration"

An integration names the framework modules it patches; it is enabled by a wrapt
post-import hook, so ``autolog()`` works whether the framework was imported before or
after it.

Versions: ``supported`` is the range an integration supports, with an upper bound (the
next minor release after the newest one tested, excluded: ``<2.7`` when 2.6.x is).
A release older than it is skipped with one warning; a newer one is autologged, with one
notice (an :class:`AutologWarning`, not a log record: Python shows no info-level record
unless the user configured logging, and the notice is what tells them that what they
see was not tested).

Probes: every read of a framework's private internals sits behind a :class:`Probe`, run
once as the integration is enabled, against the installed release's classes and
functions (at most a tiny call, such as a one-tree XGBoost booster: milliseconds). A
release that lacks one turns off the one feature that needs it, with one
warning naming the feature and the release; the rest of the integration works, and at run
time the feature costs one bool read (see :meth:`Integration.feature_on`).
"""

from __future__ import annotations

import contextlib
import dis
import importlib.metadata
import inspect
import sys
import threading
from collections.abc import Callable
from types import FunctionType, ModuleType
from typing import Any, ClassVar, NamedTuple

import wrapt
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from autolog import lifecycle
from autolog.config import disabled_names, warn
from autolog.models.options import MODEL_OPTIONS, check_model_options
from autolog.patching import Patcher, guard
from autolog.run import Run
from autolog.system_metrics import DISABLE_NAME as SYSTEM_METRICS

ENTRY_POINT_GROUP = "autolog.integrations"


class Probe(NamedTuple):
    """A check that the installed framework still has a private internal a feature reads.

    ``check(module)`` gets the imported framework module (``module``, one of the
    integration's ``modules``; None: each of them) and returns whether the internal is
    there; an exception counts as absent.
    """

    feature: str  # what is not logged without it, as the warning names it
    internal: str  # what is read, e.g. "Trainer._logger_connector._callback_metrics"
    check: Callable[[ModuleType], bool]
    module: str | None = None


def assigns(owner: type | Callable, attribute: str) -> bool:
    """Whether ``owner`` sets ``self.<attribute>``: a function's code, or the code of a
    class's methods (its own or inherited, through decorators; ``__init__`` may leave it to
    a helper). A private instance attribute is probed so, without making an instance."""
    if isinstance(owner, type):
        functions = [value for klass in owner.__mro__ for value in vars(klass).values()]
    else:
        functions = [owner]
    for function in functions:
        function = inspect.unwrap(function) if callable(function) else function
        if isinstance(function, FunctionType) and any(
                instruction.opname == "STORE_ATTR" and instruction.argval == attribute
                for instruction in dis.get_instructions(function)):
            return True
    return False


class Integration:
    """Base class of a plugin. Subclasses set the class attributes and implement
    :meth:`patch`, registering every patch through ``self.patcher`` so that
    ``autolog(disable=True)`` restores the exact originals."""

    name: ClassVar[str]  # the keyword flag of autolog(), e.g. "sklearn"
    modules: ClassVar[tuple[str, ...]]  # modules whose import enables the patches
    # PEP 440 range of the framework releases it supports, with an exclusive upper bound,
    # e.g. ">=2.0,<2.7" (2.6.x the newest tested): older is skipped, newer runs with a notice
    supported: ClassVar[str] = ""
    probes: ClassVar[tuple[Probe, ...]] = ()  # the private internals it reads, by feature
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.patcher = Patcher()
        self.options: dict[str, Any] = dict(self.default_options)
        self.enabled = False  # the user wants it on
        self.patched_modules: set[str] = set()
        self.features_off: dict[str, str] = {}  # feature -> the message that turned it off
        self._versions_told: set[str] = set()  # packages whose version was warned about

    # -- what a plugin implements -----------------------------------------------------------

    def patch(self, module: ModuleType) -> None:
        """Install the patches for ``module`` (one of :attr:`modules`), via ``self.patcher``."""
        raise NotImplementedError

    def unpatch(self) -> None:
        """Undo anything beyond ``self.patcher`` (e.g. a registered callback). Optional."""

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse options that could not work, before any setting changes (``autolog()``'s
        line). The base checks the model options (:data:`MODEL_OPTIONS`) it takes."""
        if any(key in MODEL_OPTIONS for key in self.default_options):
            check_model_options({**self.default_options, **options})

    # -- helpers for plugins ----------------------------------------------------------------

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return guard(self.name)

    def feature_on(self, feature: str) -> bool:
        """Whether every probe of ``feature`` passed. Read it once per fit (or at patch
        time) and keep the bool: nothing per step."""
        return feature not in self.features_off

    def fit_run(self) -> contextlib.AbstractContextManager[Run | None]:
        """The run a fit logs into: the active run, or one of its own (see
        :func:`autolog.lifecycle.fit_run`)."""
        return lifecycle.fit_run(self.name, self.guard)

    def lingering_run(self) -> Run:
        """A new run that stays active after the call that started it (see
        :func:`autolog.lifecycle.lingering_run`)."""
        return lifecycle.lingering_run(self.name)

    def is_own_lingering(self, run: Run | None) -> bool:
        """Whether ``run`` is this thread's lingering run (see
        :func:`autolog.lifecycle.is_own_lingering`)."""
        return lifecycle.is_own_lingering(run)

    def end_lingering_run(self) -> bool:
        """End this thread's lingering run, if that is the active run (see
        :func:`autolog.lifecycle.end_lingering_run`)."""
        return lifecycle.end_lingering_run()

    # -- lifecycle (the registry calls these) -------------------------------------------------

    def version_status(self, module: ModuleType) -> tuple[str, str]:
        """``("tested" | "newer" | "older", version)`` of the framework that ``module``
        belongs to; "tested" when it has no (readable) version or no range is declared."""
        top = sys.modules.get(module.__name__.partition(".")[0], module)
        raw = getattr(module, "__version__", None) or getattr(top, "__version__", None)
        if not self.supported or raw is None:
            return "tested", str(raw)
        try:
            version = Version(str(raw))
        except InvalidVersion:
            return "tested", str(raw)
        specifiers = SpecifierSet(self.supported)
        if specifiers.contains(version, prereleases=True):
            return "tested", str(raw)
        lower = [spec for spec in specifiers if spec.operator in (">", ">=")]
        newer = all(spec.contains(version, prereleases=True) for spec in lower)
        return ("newer" if newer else "older"), str(raw)

    def on_import(self, module: ModuleType) -> None:
        if not self.enabled or module.__name__ in self.patched_modules:
            return
        self.patched_modules.add(module.__name__)  # whatever follows, once per enabling
        status, version = self.version_status(module)
        package = module.__name__.partition(".")[0]
        tell = status != "tested" and package not in self._versions_told
        self._versions_told.add(package)
        if status == "older":
            if tell:
                warn(f"autolog: {package} {version} is older than the {self.name} integration "
                     f"supports ({self.supported}); not autologging it")
            return
        if tell:
            warn(f"autolog: {package} {version} is newer than the releases the "
                 f"{self.name} integration is tested on ({self.supported}); autologging it "
                 "all the same")
        self._run_probes(module, version)
        with self.guard():
            self.patch(module)

    def _run_probes(self, module: ModuleType, version: str) -> None:
        """Run this module's probes; one warning per feature turned off."""
        for probe in self.probes:
            if probe.feature in self.features_off or probe.module not in (None, module.__name__):
                continue
            present = False
            with contextlib.suppress(Exception):
                present = bool(probe.check(module))
            if not present:
                message = (f"autolog ({self.name}): {module.__name__} {version} has no "
                           f"{probe.internal}; {probe.feature} not logged (the rest is)")
                self.features_off[probe.feature] = message
                warn(message)

    def disable(self) -> None:
        self.enabled = False
        self.patcher.restore()
        self.unpatch()
        self.patched_modules.clear()
        self.features_off.clear()
        self._versions_told.clear()


class Registry:
    """Every installed integration, by name."""

    def __init__(self) -> None:
        self._integrations: dict[str, Integration] | None = None
        self._pending_hooks: set[tuple[str, str]] = set()  # registered, module not yet imported
        self._lock = threading.RLock()

    def integrations(self) -> dict[str, Integration]:
        if self._integrations is None:
            found: dict[str, Integration] = {}
            for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                with guard(f"plugin {entry.name}"):
                    cls = entry.load()
                    if entry.name not in found:
                        found[entry.name] = cls()
            self._integrations = found
        return self._integrations

    def configure(self, flags: dict[str, bool | dict | None], disable: bool = False) -> None:
        with self._lock:
            integrations = self.integrations()
            unknown = sorted(set(flags) - set(integrations))
            if unknown:
                raise TypeError(
                    f"autolog() got unknown integration(s) {', '.join(unknown)}; installed: "
                    f"{', '.join(sorted(integrations)) or 'none'}"
                )
            wanted = {name: self._options(integrations[name], flag) for name, flag in flags.items()}
            for name, options in wanted.items():
                if options is not None:
                    integrations[name].check_options(options)
            for name in _env_disabled(integrations):
                wanted[name] = None
            for name, integration in integrations.items():
                options = wanted.get(name, {})
                if disable or options is None:
                    if integration.enabled or integration.patched_modules:
                        integration.disable()
                    continue
                integration.options = {**integration.default_options, **options}  # per call, as MLflow
                integration.enabled = True
                for module in integration.modules:
                    if module in sys.modules:
                        integration.on_import(sys.modules[module])
                    elif (name, module) not in self._pending_hooks:
                        self._pending_hooks.add((name, module))
                        wrapt.register_post_import_hook(self._hook(integration), module)

    def _hook(self, integration: Integration):
        def on_import(module: ModuleType) -> None:
            self._pending_hooks.discard((integration.name, module.__name__))
            integration.on_import(module)

        return on_import

    @staticmethod
    def _options(integration: Integration, flag: bool | dict | None) -> dict | None:
        if flag is False:
            return None
        if flag is True or flag is None:
            return {}
        if not isinstance(flag, dict):
            raise TypeError(
                f"autolog({integration.name}=...) takes True, False or a dict of options, "
                f"got {flag!r}"
            )
        unknown = sorted(set(flag) - set(integration.default_options))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} for the {integration.name} integration; "
                f"it takes: {', '.join(sorted(integration.default_options)) or 'none'}"
            )
        return dict(flag)


def _env_disabled(integrations: dict[str, Integration]) -> list[str]:
    """Names in ``AUTOLOG_DISABLE`` (comma separated; ``all``: every integration); an
    unknown name is one warning (``system`` is known: :mod:`autolog.system_metrics` reads
    it, and ``all`` too)."""
    names = disabled_names()
    if "all" in names:
        return list(integrations)
    unknown = [n for n in names if n not in integrations and n != SYSTEM_METRICS]  # its own
    if unknown:
        warn(f"AUTOLOG_DISABLE names unknown integration(s): {', '.join(unknown)}")
    return [n for n in names if n in integrations]


registry = Registry()


def configure(flags: dict[str, bool | dict | None], disable: bool = False) -> None:
    registry.configure(flags, disable=disable)


def get(name: str) -> Integration | None:
    return registry.integrations().get(name)
