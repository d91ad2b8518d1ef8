"""Autologging for plain PyTorch training loops (integration ``torch``).

A plain loop has no ``fit`` call to wrap, so the integration listens where every loop
passes:

* ``loss.backward()`` (``torch.Tensor.backward`` is wrapped): the scalar is kept as a
  *detached tensor*, with no ``.item()`` and no device sync; several backward calls
  before one step (gradient accumulation, LBFGS closures) are averaged with tensor ops,
  which are queued on the device like the rest of the step. Under ``GradScaler`` the
  unscaled loss is kept, not the scaled one.
* ``optimizer.step()`` (a global optimizer step hook, so no optimizer class is patched):
  each call advances the run's step counter, like Lightning's ``global_step``; the loss
  kept since the previous step is logged as ``train_loss`` at the new step (1, 2, ...),
  and the optimizer's ``lr`` (first param group) whenever it differs from the last one
  logged. The writer thread converts the tensors to floats.
* Optimizer construction (``torch.optim.Optimizer.__init__`` is wrapped) logs
  ``optimizer_name``, the optimizer's ``defaults`` (``lr``, ``momentum``, ``betas``,
  ``weight_decay``, ...: the names MLflow's Lightning autolog uses) and
  ``num_trainable_params``. A second optimizer with other settings in the same run (a
  GAN) gets the prefix ``optimizer_1.``, and so on.
* ``SummaryWriter.add_scalar``/``add_scalars``/``add_hparams`` become metrics (at the
  writer's ``global_step``, 0 when none) and params. ``add_scalars("loss", {"train": x})``
  is logged as ``loss/train``.

Which run: the active run; with none, the first optimizer step (or SummaryWriter call)
starts one tagged ``autolog.integration=torch`` (not the optimizer's construction, so
building an optimizer that never steps, to load a checkpoint say, starts no run). A
plain loop has no end that autolog could see, so that run stays the active run, as
MLflow's implicit runs do, and ends when the process exits: FINISHED, or FAILED after an
uncaught exception (the core's exit handler); ``autolog.end_run()`` ends it sooner, and
so do the next autologged fit and the next ``autolog.start_run()`` in the same thread
(see :func:`autolog.lifecycle.end_lingering_run`), which get a run of their own. Open a
run with ``autolog.start_run()`` to bound it yourself. An optimizer created outside any
run logs its params into the run it first steps in.

A new loop, a new run: the first step of an optimizer new to the run a plain loop
started ends that run FINISHED and starts a new one (where the new optimizer's ``lr`` is
``lr``), when that run is this thread's, has stepped, and either every optimizer it
stepped before is gone (garbage: a script's next experiment, a notebook cell that
rebinds ``optimizer``) or it began in an earlier notebook cell (IPython's
``execution_count``). So a notebook's second training cell, or a script's second
training function, is a run of its own rather than ``optimizer_1.`` keys in the first.
The conditions keep the rest as it was: optimizers built before the first step (a GAN's
generator and discriminator) share the run that step starts; an optimizer built and
stepped while the loop's own optimizer lives, in the same cell (an inner optimizer per
batch: adversarial perturbations, MAML, test-time adaptation), joins the run as
``optimizer_1.``; an optimizer of another thread leaves the run alone; a run of the
user's, or of a fit, is never ended here. Hold several loops in one run with
``autolog.start_run()``. Building an optimizer decides nothing: the loop it belongs to is
known at its first step (an optimizer built only to load a checkpoint changes nothing).

The per-step logging rests on torch's global optimizer step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``), checked by a probe once as
the integration is enabled: a torch without it loses ``train_loss`` and ``lr`` (one
warning), and keeps the optimizer params (into an active run) and SummaryWriter.

Option ``log_every_n_step`` (MLflow's name; default 1): ``train_loss`` and ``lr`` at
optimizer steps n, 2n, ... only, and SummaryWriter scalars at global steps 0, n, 2n, ...
(as MLflow's patch of SummaryWriter); None logs neither. The value at that step, not an
average: a skipped step costs a modulo. A plain loop has no epochs that autolog could
see, so ``log_every_n_epoch`` is Lightning's alone.

Silence: inside any other autologged call (a Lightning ``fit``) this integration logs
nothing, so nothing is logged twice; under ``torch.distributed`` (or ``torchrun``'s
``RANK``) only rank 0 logs.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import weakref
from types import ModuleType
from typing import Any

from autolog.integration import Integration, Probe
from autolog.patching import current_owner
from autolog.run import Run, active_run
from autolog.source import ipython_shell

TRAIN_LOSS = "train_loss"
LR = "lr"
STEP_METRICS = "train_loss and lr at each optimizer step"


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (or not distributed at all)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK before init_process_group


def optimizer_params(optimizer: Any) -> dict[str, Any]:
    """``optimizer_name``, the optimizer's defaults and its number of trainable params."""
    params: dict[str, Any] = {"optimizer_name": type(optimizer).__name__}
    params.update(getattr(optimizer, "defaults", {}))
    params["num_trainable_params"] = sum(
        p.numel() for group in optimizer.param_groups for p in group["params"] if p.requires_grad
    )
    return params


def notebook_cell() -> int | None:
    """The number of the notebook cell running now (IPython's ``execution_count``), or
    None outside IPython."""
    shell = ipython_shell()
    return None if shell is None else shell.execution_count


def check_every(options: dict[str, Any], name: str, none_allowed: bool) -> None:
    """``log_every_n_step``/``log_every_n_epoch``: a positive int (None: never, where
    ``none_allowed``), refused at ``autolog()``'s line."""
    value = options.get(name, 1)
    if value is None and none_allowed:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive int or None" if none_allowed else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def prefixed(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{key}": value for key, value in params.items()} if prefix else params


_INVALID_KEY_CHARACTERS = re.compile(r"[^/\w.\- :]")
_metric_keys: dict[str, str] = {}


def metric_key(tag: object) -> str:
    """A TensorBoard tag as a valid metric key (other characters become ``_``)."""
    text = str(tag)
    key = _metric_keys.get(text)
    if key is None:
        parts = _INVALID_KEY_CHARACTERS.sub("_", text).split("/")
        parts = [("_" if part in (".", "..") else part) for part in parts if part]
        key = "/".join(parts) or "_"
        if len(_metric_keys) < 10_000:
            _metric_keys[text] = key
    return key


class _Pending:
    """What one thread holds between backward and step."""

    __slots__ = ("loss", "count", "scaled")

    def __init__(self) -> None:
        self.loss: Any = None  # the detached loss (or the sum of several) since the last step
        self.count = 0  # how many backward calls that sum holds
        self.scaled: tuple[int, Any] | None = None  # (id of GradScaler's output, unscaled loss)


class _PerThread(threading.local):
    """Each thread's :class:`_Pending`, read once per hook: an attribute of a
    threading.local costs about ten times one of a slotted object, so the hooks hold it in a
    local variable. ``None`` (a class default, so no AttributeError) until the thread's
    first backward or step."""

    pending: _Pending | None = None


class _OptimizerState:
    __slots__ = ("lr_key", "last_lr")

    def __init__(self, lr_key: str):
        self.lr_key = lr_key
        self.last_lr: object = None


class _Loop:
    """What the integration knows about one run: its step counter and its optimizers."""

    def __init__(self, run: Run | None, log: bool, every_n_step: int | None = 1):
        self.run = run
        self.log = log  # False on ranks other than 0: everything is skipped
        self.step = 0
        # log_every_n_step, read once per run: train_loss and lr at steps n, 2n, ...;
        # None: not at all (the step counter still advances)
        self.every = every_n_step or 0
        self.cell = notebook_cell()  # the notebook cell it began in (None outside Jupyter)
        self.optimizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.configs: list[dict[str, str]] = []  # distinct optimizer settings, by index
        # the optimizer stepped last, weakly: its state may be as big as the model
        self.last: tuple[weakref.ref, _OptimizerState] | None = None

    def state(self, optimizer: Any) -> _OptimizerState:
        state = self.optimizers.get(optimizer)
        if state is None:
            state = self.register(optimizer)
        self.last = (weakref.ref(optimizer), state)
        return state

    def register(self, optimizer: Any) -> _OptimizerState:
        """Log the optimizer's params (prefixed when it is not the run's first setting)."""
        params = optimizer_params(optimizer)
        config = {key: str(value) for key, value in params.items()}
        if config in self.configs:
            index = self.configs.index(config)
        else:
            index = len(self.configs)
            self.configs.append(config)
        prefix = f"optimizer_{index}." if index else ""
        state = _OptimizerState(prefix + LR)
        self.optimizers[optimizer] = state
        self.run.log_autolog_params(prefixed(prefix, params), TorchIntegration.name)
        return state


STEP_HOOK = "torch.optim.optimizer.register_optimizer_step_post_hook"


def has_step_hook(_module: ModuleType | None = None) -> bool:
    """The probe of torch's global optimizer step hook (this integration's and Lightning's)."""
    return callable(importlib.import_module("torch.optim.optimizer")
                    .register_optimizer_step_post_hook)


class TorchIntegration(Integration):
    name = "torch"
    modules = ("torch", "torch.utils.tensorboard.writer")
    # CI runs 2.13.0 alone (the CPU build of constraints.txt: another release would be a CUDA
    # build of several GB); 2.2 (the lowest the extras allow) to 2.12 ran this code untested.
    supported = ">=2.2,<2.14"
    probes = (
        Probe(STEP_METRICS, STEP_HOOK, has_step_hook, module="torch"),
    )
    default_options = {"log_every_n_step": 1}

    def check_options(self, options: dict[str, Any]) -> None:
        super().check_options(options)
        check_every(options, "log_every_n_step", none_allowed=True)

    def __init__(self) -> None:
        super().__init__()
        self._local = _PerThread()
        self._loops: weakref.WeakKeyDictionary[Run, _Loop] = weakref.WeakKeyDictionary()
        self._cached: _Loop | None = None  # the loop of the run last seen active
        self._step_hook = None

    # -- patches ------------------------------------------------------------------------------

    def patch(self, module: ModuleType) -> None:
        if module.__name__ == "torch":
            self._patch_torch(module)
        else:
            self._patch_tensorboard(module)

    def _patch_torch(self, torch: ModuleType) -> None:
        from torch.amp.grad_scaler import GradScaler
        from torch.optim import optimizer

        self.patcher.wrap(optimizer.Optimizer, "__init__", self._on_optimizer_init)
        if not self.feature_on(STEP_METRICS):  # the loss would never be logged: not kept
            return
        self.patcher.wrap_hot(torch.Tensor, "backward", self._on_backward)
        self.patcher.wrap_hot(GradScaler, "scale", self._on_scale)
        if self._step_hook is None:
            self._step_hook = optimizer.register_optimizer_step_post_hook(self._on_step)

    def _patch_tensorboard(self, writer_module: ModuleType) -> None:
        writer = writer_module.SummaryWriter
        self.patcher.wrap(writer, "add_scalar", self._on_add_scalar)
        self.patcher.wrap(writer, "add_scalars", self._on_add_scalars)
        self.patcher.wrap(writer, "add_hparams", self._on_add_hparams)

    def unpatch(self) -> None:
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        self._loops = weakref.WeakKeyDictionary()
        self._cached = None
        self._local = _PerThread()

    # -- which run ----------------------------------------------------------------------------

    def _loop(self, create: bool) -> _Loop | None:
        """The loop of the active run; with no active run, a new run's when ``create`` (on
        rank 0), else None."""
        run = active_run()
        cached = self._cached
        if cached is not None and cached.run is run:
            return cached
        if run is None:
            if not create:
                return None
            if not is_rank_zero():
                loop = self._cached = _Loop(None, log=False)
                return loop
            run = self.lingering_run()
        loop = self._loops.get(run)
        if loop is None:
            loop = self._loops[run] = _Loop(run, is_rank_zero(), self.options["log_every_n_step"])
        self._cached = loop
        return loop

    def _failed(self, exc: Exception) -> None:
        """Report an error of autolog's own code the way the guard does (warning; strict:
        raise). Used where a ``with`` block would cost too much per step."""
        with self.guard():
            raise exc

    # -- the hot path: backward and step ------------------------------------------------------

    # Both hooks run once per step, so they are kept flat: no helper of our own, no ``with``.

    def _pending(self) -> _Pending:
        """This thread's :class:`_Pending` (the hooks read ``self._local.pending`` first)."""
        pending = self._local.pending = _Pending()
        return pending

    def _on_backward(self, original, instance, args, kwargs):  # Patcher.wrap_hot's wrapper
        # The loss is kept after the backward: detaching is cheaper once the graph is freed,
        # and a backward that raised has no loss to record.
        result = original(instance, *args, **kwargs)
        if current_owner() is None:
            try:
                # A plain backward() succeeds only on a real scalar; with arguments, it may
                # have been a non-scalar or complex tensor given its gradient: no loss.
                if (args or kwargs) and (instance.numel() != 1 or instance.is_complex()):
                    return result
                local = self._local.pending or self._pending()
                scaled = local.scaled
                if scaled is not None and scaled[0] == id(instance):
                    value = scaled[1]  # GradScaler: keep the unscaled loss
                    local.scaled = None
                else:
                    value = instance.detach()
                pending = local.loss
                if pending is None:
                    local.loss, local.count = value, 1
                else:
                    local.loss, local.count = pending + value, local.count + 1
            except Exception as exc:  # noqa: BLE001 - reported by _failed
                self._failed(exc)
        return result

    def _on_scale(self, original, instance, args, kwargs):  # Patcher.wrap_hot's wrapper
        scaled = original(instance, *args, **kwargs)
        if current_owner() is None:
            try:
                outputs = args[0] if args else kwargs["outputs"]
                if getattr(outputs, "numel", None) is not None and outputs.numel() == 1:
                    local = self._local.pending or self._pending()
                    local.scaled = (id(scaled), outputs.detach())
            except Exception as exc:  # noqa: BLE001 - reported by _failed
                self._failed(exc)
        return scaled

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if current_owner() is not None:
            return
        try:
            local = self._local.pending or self._pending()
            loss, local.loss = local.loss, None
            loop = self._cached
            if loop is None or loop.run is not active_run():  # else: the fast path of _loop
                loop = self._loop(create=True)
            if loop is None or not loop.log:
                return
            last = loop.last
            if last is not None and last[0]() is optimizer:
                state = last[1]
            else:  # another optimizer than the last step's: a new one may start a new loop
                if optimizer not in loop.optimizers:
                    loop = self._next_loop(loop, optimizer)
                state = loop.state(optimizer)
            run = loop.run
            loop.step = step = loop.step + 1
            every = loop.every
            if every != 1 and (not every or step % every):
                return
            if loss is not None:  # a real scalar without a graph: _on_backward checked it
                count = local.count
                run.log_checked_tensor(TRAIN_LOSS, loss if count == 1 else loss / count, step)
            lr = optimizer.param_groups[0]["lr"]
            if type(lr) in (float, int) and lr != state.last_lr:  # comparing a tensor lr syncs
                state.last_lr = lr
                run.log_metric(state.lr_key, lr, step)
        except Exception as exc:  # noqa: BLE001 - reported by _failed
            self._failed(exc)

    def _on_optimizer_init(self, wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        if current_owner() is None:
            with self.guard():
                loop = self._loop(create=False)  # with no run yet: at its first step
                if loop is not None and loop.step and self.is_own_lingering(loop.run):
                    return result  # at its first step, which may start a new run (module doc)
                if loop is not None and loop.log and instance not in loop.optimizers:
                    loop.register(instance)
        return result

    def _next_loop(self, loop: _Loop, optimizer: Any) -> _Loop:
        """At the first step of an optimizer new to ``loop``: a new loop (and run) when
        this one is this thread's lingering run and its own optimizers are all gone, or it
        began in an earlier notebook cell; else ``loop`` (module doc)."""
        if (loop.step and self.is_own_lingering(loop.run)
                and (not loop.optimizers or loop.cell != notebook_cell())
                and self.end_lingering_run()):
            return self._loop(create=True)
        return loop

    # -- TensorBoard --------------------------------------------------------------------------

    def _writer_loop(self) -> _Loop | None:
        if current_owner() is not None:  # e.g. Lightning's TensorBoardLogger inside a fit
            return None
        loop = self._loop(create=True)
        return loop if loop is not None and loop.log else None

    def _on_add_scalar(self, wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        with self.guard():
            loop = self._writer_loop()
            if loop is not None:
                call = _bind(("tag", "scalar_value", "global_step", "walltime"), args, kwargs)
                self._log_scalar(loop, metric_key(call["tag"]), call)
        return result

    def _on_add_scalars(self, wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        with self.guard():
            loop = self._writer_loop()
            if loop is not None:
                call = _bind(("main_tag", "tag_scalar_dict", "global_step", "walltime"), args, kwargs)
                for tag, value in call["tag_scalar_dict"].items():
                    key = metric_key(f"{call['main_tag']}/{tag}")
                    self._log_scalar(loop, key, {**call, "scalar_value": value})
        return result

    @staticmethod
    def _log_scalar(loop: _Loop, key: str, call: dict[str, Any]) -> None:
        """One scalar at the writer's global step: at steps 0, n, 2n, ... with
        ``log_every_n_step=n`` (as MLflow's ``SummaryWriter`` patch), none with None."""
        step = call.get("global_step")
        step = 0 if step is None else int(step)
        every = loop.every
        if every != 1 and (not every or step % every):
            return
        walltime = call.get("walltime")
        timestamp = None if walltime is None else int(walltime * 1000)
        loop.run.log_metric(key, call["scalar_value"], step, timestamp)

    def _on_add_hparams(self, wrapped, instance, args, kwargs):
        # the metric_dict reaches add_scalar inside add_hparams, so only params are left
        result = wrapped(*args, **kwargs)
        with self.guard():
            loop = self._writer_loop()
            if loop is not None:
                hparams = _bind(("hparam_dict",), args, kwargs)["hparam_dict"]
                loop.run.log_autolog_params(dict(hparams), self.name)
        return result


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """The leading arguments of a call by name (SummaryWriter's own parameter names)."""
    bound = dict(zip(names, args))
    bound.update((name, kwargs[name]) for name in names if name in kwargs)
    return bound
