"""wrapt-based patching, the safety guard, and the re-entrancy owner of a fit.

* :class:`Patcher` records every attribute it wraps, as it was in the owner's own
  ``__dict__``, so ``restore()`` puts back the exact original object (or removes the
  attribute again where the owner only inherited it).
* :func:`guard` wraps autolog's own work inside a patched call: an exception there is one
  warning and the user's call goes on; ``AUTOLOG_STRICT=1`` re-raises it. Exceptions of the
  framework never pass through a guard, so they reach the user unchanged.
* :func:`outermost` tells whether a patched call is the outermost autologged call in this
  thread: a fit inside a fit (Pipeline, GridSearchCV, XGBClassifier → xgboost.train) is
  logged once, by the outermost integration that owns it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import wrapt

from autolog.config import strict, warn
from autolog.ledger import ParamConflictError
from autolog.stores.base import StoreError

_MISSING = object()


class Patcher:
    """The patches of one integration, restorable in one call."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, wrapper: Callable) -> None:
        """Wrap ``owner.name`` with a wrapt ``wrapper(wrapped, instance, args, kwargs)``;
        wrapping the same attribute twice is a no-op."""
        if self.is_patched(owner, name):
            return
        original = vars(owner).get(name, _MISSING)
        wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._saved.append((owner, name, original))

    def wrap_hot(self, owner: Any, name: str, wrapper: Callable) -> None:
        """Wrap a method that runs once per training step (``Tensor.backward``) with a plain
        function ``wrapper(original, instance, args, kwargs)``; wrapping twice is a no-op.
        Unlike wrapt's, ``original`` is the unbound function: call it as
        ``original(instance, *args, **kwargs)`` (binding it would cost an object per call).
        A method that is not a plain function in ``owner``'s own ``__dict__`` (inherited,
        or already wrapped by another library) is wrapped with wrapt, the same way to
        ``wrapper``.

        Not wrapt here: a wrapt wrapper on a method makes a bound wrapper object at every
        attribute access, and measured in a training loop it added 2-5 µs to each
        ``loss.backward()``, against under 1 µs for a plain function. Restored by
        :meth:`restore` like the rest."""
        if self.is_patched(owner, name):
            return
        original = vars(owner).get(name)
        if not isinstance(original, types.FunctionType):
            def unbound(wrapped, instance, args, kwargs):
                return wrapper(lambda _instance, *a, **k: wrapped(*a, **k), instance, args, kwargs)

            self.wrap(owner, name, unbound)
            return

        @functools.wraps(original)
        def hot(instance, *args, **kwargs):
            return wrapper(original, instance, args, kwargs)

        setattr(owner, name, hot)
        self._saved.append((owner, name, original))

    def is_patched(self, owner: Any, name: str) -> bool:
        return any(o is owner and n == name for o, n, _ in self._saved)

    def restore(self) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    def __len__(self) -> int:
        return len(self._saved)


_warned: set[tuple[str, str, str]] = set()


@contextlib.contextmanager
def guard(integration: str) -> Iterator[None]:
    """Run autolog's own code; turn its failure into one warning (strict mode: raise).

    ``ParamConflictError`` passes through: it only leaves the ledger when the user chose
    ``on_conflict="raise"``.
    """
    try:
        yield
    except ParamConflictError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point of the guard
        if strict():
            raise
        key = (integration, type(exc).__name__, str(exc))
        if key not in _warned:
            _warned.add(key)
            what = ("could not use the tracking store" if isinstance(exc, StoreError)
                    else "hit an internal error")
            warn(f"autolog ({integration}) {what} and skipped some logging; your call was "
                 f"not affected: {type(exc).__name__}: {exc}")


# The integration whose patched call each thread is inside, by thread ident; a thread that
# is inside none has no entry. A dict, not a threading.local: the torch hooks read it on
# every training step, and reading a threading.local attribute costs CPython 3.11 about
# 500 instructions, a dict lookup a tenth of that.
_owners: dict[int, str] = {}


def current_owner() -> str | None:
    """The integration whose patched call this thread is inside, if any."""
    return _owners.get(threading.get_ident())


@contextlib.contextmanager
def outermost(integration: str) -> Iterator[bool]:
    """Yield True when this is the outermost autologged call in the thread (and own it
    until the block ends), False when another autologged call is already running."""
    ident = threading.get_ident()
    if ident in _owners:
        yield False
        return
    _owners[ident] = integration
    try:
        yield True
    finally:
        _owners.pop(ident, None)  # the entry this block made, whichever thread closes it


def after_fork_in_child() -> None:
    """A forked child has only the forking thread: other threads' entries would outlive
    them, and silence a new thread of the child that got the same ident (called by
    :mod:`autolog.lifecycle`)."""
    ident = threading.get_ident()
    own = _owners.get(ident)
    _owners.clear()
    if own is not None:
        _owners[ident] = own

