"""What autolog adds to a PyTorch training step, counted by callgrind instead of timed.

    python benchmarks/bench_torch_instructions.py           # rewrites its RESULTS.md section
    python benchmarks/bench_torch_instructions.py --quick   # fewer steps, prints only

``bench_autolog_torch.py`` times whole training runs, and on a shared 2-core VM one
7-round run of the same code has moved a row by ±1.5 points (on a bad day, its quartiles
spanned ±15 %). Valgrind's callgrind counts executed instructions and simulates the
caches, so it gives the same figure whatever else the machine is doing: this is the
witness that an optimisation of the hot path did something, or did not.

The pre-sliced loop of ``bench_autolog_torch.py`` (the cheapest step there is) runs in
one process under callgrind, with no autologging, with ``autolog.autolog()``, with
``mlflow.pytorch.autolog()`` and with none again, ``--steps`` steps each; imports and 500
warm-up steps run uninstrumented. One process, so every phase has the same imports and the
same heap: in separate processes, merely importing MLflow moved the step's count by 0.5 %.
The writer is kept idle during the loop (a long flush interval) so a phase's counts are the
training thread's own; ``autolog.flush()`` then writes the autolog phase's points on the
same thread, counted apart. The phases are marked with callgrind's client requests, from a
four-line C helper this script compiles with ``gcc``; ``PYTHONHASHSEED=0`` keeps dict
layouts equal between runs.

Instructions are not time: an instruction-cache miss costs about ten cycles, and the
hooks' few hundred extra misses per step weigh about as much as their instructions.
Needs valgrind (with its headers), gcc and MLflow (the test extra); without valgrind or gcc
the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

SECTION = "bench_torch_instructions"
# the order the modes run in, one process; "none" twice shows how far the counts drift
PHASES = ("none", "autolog", "mlflow", "none again")
WARMUP_STEPS = 500
HELPER = """#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_START_INSTRUMENTATION; }
void zero(void) { CALLGRIND_ZERO_STATS; }
void dump(const char *phase) { CALLGRIND_DUMP_STATS_AT(phase); }
"""
# callgrind's event names, as printed in its dumps, and how the table names them
EVENTS = {"Ir": "instructions", "I1mr": "L1 instruction misses", "D1mr": "L1 data read misses",
          "D1mw": "L1 data write misses", "DLmr": "last-level data read misses"}


def child(steps: int, helper: str) -> None:
    """Under callgrind: the loop with each mode in turn, in one process, one dump per phase."""
    import bench_autolog_torch as bench
    import torch

    import autolog

    torch.set_num_threads(1)
    control = ctypes.CDLL(helper)
    # every mode's imports, whichever runs; the stores go in the parent's temp dir, beside
    # the helper, which the parent removes
    modes = bench.Modes(Path(helper).parent)
    train = bench.presliced_training()
    autolog.start_run()  # one run throughout, so the difference is the autologging
    train(WARMUP_STEPS)
    control.start()
    for phase in PHASES:
        mode = phase.split()[0]
        modes.enable(mode)
        train(10)  # the first steps of a mode pay callgrind's translation of its code
        control.zero()
        train(steps)
        control.dump(phase.encode())
        if mode == "autolog":
            autolog.flush()  # the points of the phase, in one batch on this thread
            control.dump(b"autolog writes")
        modes.disable()


def counts(dump: Path) -> dict[str, int]:
    """The event totals of one callgrind dump file."""
    names, totals = [], []
    for line in dump.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:"):
            totals = [int(value) for value in line.split()[1:]]
    return dict(zip(names, totals))


def measure(steps: int, helper: Path, out: Path) -> dict[str, dict[str, int]]:
    """Run the phases under callgrind; the training thread's counts per phase."""
    prefix = out / "callgrind"
    # The system-metrics sampler is off: under callgrind a 10 s interval is a few steps,
    # not hundreds, so its samples would be counted as the steps' cost
    # (bench_system_metrics.py measures it: well under 0.1% of a core).
    env = {**os.environ, "PYTHONHASHSEED": "0", "AUTOLOG_FLUSH_INTERVAL": "3600",
           "AUTOLOG_DISABLE": "system"}
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
         "--separate-threads=yes", f"--callgrind-out-file={prefix}",
         sys.executable, __file__, "--child", str(steps), str(helper)],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # dumps are named <prefix>.<dump number>-<thread>; thread 01 is the training thread
    phases = [*PHASES[:2], "autolog writes", *PHASES[2:]]
    return {phase: counts(Path(f"{prefix}.{number}-01"))
            for number, phase in enumerate(phases, start=1)}


def missing_tools() -> str | None:
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["gcc", "-fsyntax-only", "-x", "c", "-"], input=HELPER, text=True,
                           capture_output=True)
    return "valgrind's headers are not installed" if probe.returncode else None


def report(steps: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        helper = out / "libcallgrind_phases.so"
        source = out / "callgrind_phases.c"
        source.write_text(HELPER)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(helper), str(source)], check=True)
        results = measure(steps, helper, out)
    rows = []
    for event, name in EVENTS.items():
        per_step = {phase: results[phase].get(event, 0) / steps for phase in PHASES}
        base = (per_step["none"] + per_step["none again"]) / 2
        cells = [f"{per_step[phase]:,.0f}" for phase in PHASES]
        for phase in ("autolog", "mlflow", "none again"):
            added = per_step[phase] - (base if phase != "none again" else per_step["none"])
            cells.append(f"{added:+,.0f} ({added / base:+.2%})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    header = ["per training step", *PHASES, "autolog adds", "MLflow adds", "drift (none again - none)"]
    step_instructions = (results["none"]["Ir"] + results["none again"]["Ir"]) / 2 / steps
    writer = results["autolog writes"]["Ir"] / steps
    return "\n".join([
        "## Instructions autolog adds per PyTorch step, counted by callgrind "
        "(`bench_torch_instructions.py`)",
        "",
        f"Machine: {machine()}; {steps:,} steps of the pre-sliced loop of "
        "`bench_autolog_torch.py` (the MLP, batch 64, Adam, 1 thread) per mode, the modes in "
        "turn in one process under `valgrind --tool=callgrind --cache-sim=yes`; counts of the "
        f"training thread only, after {WARMUP_STEPS} warm-up steps. *adds*: against the mean "
        "of the two phases without autologging; their difference is the drift between phases "
        "of the same code. The simulated caches are callgrind's model, not this CPU's.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
        "",
        f"Writing the points: `autolog.flush()` after the autolog phase writes its {steps:,} "
        f"losses in one batch (tensor conversion and the SQLite write) in {writer:,.0f} "
        f"instructions per point, {writer / step_instructions:.2%} of a step; during training "
        "the writer thread does this work, in one batch per flush interval.",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, print only")
    parser.add_argument("--steps", type=int, default=200, help="instrumented steps per mode")
    parser.add_argument("--child", nargs=2, metavar=("STEPS", "HELPER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        steps, helper = args.child
        child(int(steps), helper)
        return 0
    reason = missing_tools()
    if reason:
        print(f"skipped: {reason}; callgrind counts need valgrind (with its headers) and gcc")
        return 0
    markdown = report(100 if args.quick else args.steps)
    publish(SECTION, markdown, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
