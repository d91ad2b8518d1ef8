"""Where the time autolog adds to a PyTorch step goes, and so how much of it could be saved.

    python benchmarks/bench_torch_breakdown.py           # rewrites its RESULTS.md section
    python benchmarks/bench_torch_breakdown.py --quick   # fewer rounds, prints only

``bench_autolog_torch.py`` says how much autolog adds to a step; this splits that up. The
pre-sliced loop of ``bench_autolog_torch.py`` (the cheapest step there is) runs in one
process, in chunks of ``CHUNK_STEPS`` steps, one autolog run open throughout; every round
runs one chunk of each variant, in rotating order:

* none: no autologging;
* hooks that only call through: the torch integration's patches in place, with hooks that
  do nothing but call the original (what any Python hook on ``backward`` and
  ``optimizer.step`` costs);
* hooks, no points queued: the real hooks (the loss detached and kept until the step, the
  step counted, the lr checked) with a run that queues nothing;
* points queued as floats: the real hooks, each loss queued as a constant float instead of
  its detached tensor (what the points would cost if no tensor were kept for the writer);
* autolog: everything, the writer thread writing the points every flush interval.

A variant's cost is the median over rounds of (its chunk - the same round's chunk without
autologging) per step. The variants replace, for their chunks, the hooks
(``TorchIntegration._on_backward`` and ``_on_step``, before the patches bind them) and
``Run.log_checked_tensor``: this reaches into autolog's internals on purpose, and fails
with an AttributeError if they are renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_autolog_torch as bench  # noqa: E402
from _results import machine, publish  # noqa: E402

SECTION = "bench_torch_breakdown"
CHUNK_STEPS = 1_000
VARIANTS = ("hooks that only call through", "hooks, no points queued",
            "points queued as floats", "autolog")


def _call_through(self, original, instance, args, kwargs):
    return original(instance, *args, **kwargs)


def _skip_step(self, optimizer, args, kwargs) -> None:
    return None


def _queue_nothing(self, key, tensor, step) -> None:
    return None


def _queue_a_float(log_checked_tensor):
    def queue_a_float(self, key, tensor, step) -> None:
        log_checked_tensor(self, key, 1.0, step)

    return queue_a_float


@contextlib.contextmanager
def variant(name: str, modes: bench.Modes) -> Iterator[None]:
    """Autologging as ``name`` says (none: off) for the block."""
    from autolog_integrations.torch_autolog import TorchIntegration

    from autolog.run import Run

    replaced = {
        "hooks that only call through": [(TorchIntegration, "_on_backward", _call_through),
                                         (TorchIntegration, "_on_step", _skip_step)],
        "hooks, no points queued": [(Run, "log_checked_tensor", _queue_nothing)],
        "points queued as floats": [(Run, "log_checked_tensor",
                                     _queue_a_float(Run.log_checked_tensor))],
    }.get(name, [])
    originals = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in replaced]
    for owner, attribute, replacement in replaced:
        setattr(owner, attribute, replacement)
    try:
        if name != "none":
            modes.enable("autolog")
        yield
    finally:
        modes.disable()
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def measure(rounds: int) -> tuple[dict[str, list[float]], float]:
    """Per variant, the µs per step it added in each round; and the median step without."""
    import torch

    import autolog

    torch.set_num_threads(1)
    train = bench.presliced_training()
    names = ("none", *VARIANTS)
    added: dict[str, list[float]] = {name: [] for name in VARIANTS}
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        modes = bench.Modes(Path(tmp))
        with autolog.start_run():
            for name in names:  # warm-up: every variant's first-call costs
                with variant(name, modes):
                    train(CHUNK_STEPS)
            for round_ in range(rounds):
                turn = round_ % len(names)  # no variant always runs first
                seconds = {}
                for name in names[turn:] + names[:turn]:
                    with variant(name, modes):
                        started = time.perf_counter()
                        train(CHUNK_STEPS)
                        seconds[name] = time.perf_counter() - started
                plain.append(seconds["none"] / CHUNK_STEPS * 1e6)
                for name in VARIANTS:
                    added[name].append((seconds[name] - seconds["none"]) / CHUNK_STEPS * 1e6)
    return added, statistics.median(plain)


def report(rounds: int) -> str:
    import torch

    added, step_us = measure(rounds)
    median = {name: statistics.median(values) for name, values in added.items()}
    rows = []
    for name in VARIANTS:
        low, _, high = statistics.quantiles(added[name], n=4)
        rows.append(f"| {name} | {median[name]:.1f} ({low:.1f}..{high:.1f}) | "
                    f"{median[name] / step_us:+.1%} |")
    hooks, own, floats, total = (median[name] for name in VARIANTS)
    return "\n".join([
        "## Where autolog's time in a PyTorch step goes (`bench_torch_breakdown.py`)",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, CPU, 1 intra-op thread. The "
        f"pre-sliced loop of `bench_autolog_torch.py`, {rounds} rounds of one "
        f"{CHUNK_STEPS:,}-step chunk per variant (rotating order) in one process; a step "
        f"without autologging took {step_us:.0f} µs (median). *adds*: median over rounds of "
        "the variant's chunk minus the same round's chunk without autologging, per step (in "
        "brackets: quartiles over the rounds).",
        "",
        "| variant | adds, µs per step | of a step |",
        "|---|---|---|",
        *rows,
        "",
        f"Of autolog's {total:.1f} µs: calling a Python hook on `backward` and "
        f"`optimizer.step` at all, {hooks:.1f} µs; the hooks' own work, {own - hooks:.1f} µs; "
        f"queueing the points and writing them, {floats - own:.1f} µs; keeping each "
        f"detached loss until the writer converts it, {total - floats:.1f} µs.",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 rounds, print only")
    args = parser.parse_args()
    markdown = report(rounds=10 if args.quick else 100)
    publish(SECTION, markdown, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
