"""On a CUDA GPU: does autolog make the training thread wait for the device? And what does
it add per step when the loop is launch-bound (the GPU case where a per-step cost shows)?

    python benchmarks/bench_gpu_sync.py           # rewrites its RESULTS.md section
    python benchmarks/bench_gpu_sync.py --quick   # fewer rounds, prints only

Needs a CUDA device; without one it says so and exits 0. Two witnesses, each for a plain
PyTorch loop (AMP ``GradScaler`` included) and for a Lightning fit, with and without
``autolog.autolog()``, counted during the training (ending a run writes its last points,
which reads them from the device once, in whichever thread ends it):

* ``torch.cuda.set_sync_debug_mode("warn")``: PyTorch warns at every synchronising CUDA
  call (``.item()``, ``.tolist()``, ``.cpu()``, ...). The warnings are counted per thread:
  the training thread must see no more with autolog than without; the writer thread's
  are its one copy per batch of points, by design.
* ``torch.profiler``: the CUDA runtime's synchronising calls (``cudaStreamSynchronize``,
  ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, ``cudaMemcpy``) in the training
  thread, with and without autolog.

Then the wall time per step, the modes back to back in each round (paired ratios).
MLflow's autolog joins that table when ``mlflow`` is installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, write_section  # noqa: E402
from bench_autolog_torch import BATCH, Modes, data, lightning_mlp, measure, mlp  # noqa: E402

STEPS = 3000
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cudaMemcpy")


def plain_loop(torch, amp: bool):
    """A pre-sliced loop on the GPU: the loss never leaves the device."""
    x, y = (tensor.cuda() for tensor in data())
    batches = list(zip(x.split(BATCH), y.split(BATCH)))
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits

    def train(steps: int, _root: str) -> None:
        model = mlp().cuda()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=500, gamma=0.5)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        for step in range(steps):
            batch_x, batch_y = batches[step % len(batches)]
            optimizer.zero_grad()
            with torch.autocast("cuda", enabled=amp):
                loss = loss_fn(model(batch_x), batch_y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        torch.cuda.synchronize()

    return train


def lightning_fit(torch):
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    MLP = lightning_mlp()  # noqa: N806 - a class

    def fit(steps: int, root: str) -> None:
        trainer = L.Trainer(max_steps=steps, accelerator="gpu", devices=1, logger=False,
                            enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False,
                            default_root_dir=root)
        trainer.fit(MLP(), loader)
        torch.cuda.synchronize()

    return fit


def timed(modes: Modes, mode: str, workload, steps: int) -> float:
    """Wall time of ``workload(steps, root)`` in ``mode`` (``root``: the modes' temp dir),
    inside a run that is ended and written."""
    return modes.run(mode, functools.partial(workload, steps), wrap_in_run=True)[0]


def sync_warnings_by_thread(torch, modes: Modes, mode: str, workload, steps: int) -> Counter:
    """Synchronising CUDA calls during the training (not the run's end, where the last
    points are written) per thread name, as ``set_sync_debug_mode`` reports them."""
    counts: Counter = Counter()
    previous = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            counts[threading.current_thread().name] += 1
        else:
            previous(message, category, filename, lineno, file, line)

    def watched(steps: int, root: str) -> None:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            workload(steps, root)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        timed(modes, mode, watched, steps)
    return counts


def profiled_sync_calls(torch, modes: Modes, mode: str, workload, steps: int) -> Counter:
    """CUDA runtime synchronising calls during the training, in the training thread and
    in others, from a torch.profiler trace. The profiler numbers threads its own way, so
    the training thread is the one that launched most kernels (the writer launches a few
    per batch of points, to stack and copy them)."""
    from torch.profiler import ProfilerActivity, profile

    traces = []

    def profiled(steps: int, root: str) -> None:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            workload(steps, root)
        traces.append(prof)

    timed(modes, mode, profiled, steps)
    events = traces[0].events()
    launches = Counter(event.thread for event in events if event.name.startswith("cudaLaunch"))
    if not launches:
        raise RuntimeError("the profile holds no kernel launch: no CUDA activity recorded")
    training = launches.most_common(1)[0][0]
    counts: Counter = Counter()
    for event in events:
        if event.name.startswith(SYNC_CALLS):
            counts["training thread" if event.thread == training else "other threads"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, print only")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_sync: no CUDA device here; nothing to measure")
        return 0
    import logging

    warnings.filterwarnings("ignore", message=".*(does not have many workers|GPU available).*")
    for name in ("lightning.pytorch", "lightning.fabric", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("AUTOLOG_FLUSH_INTERVAL", "0.2")

    workloads = [
        ("plain loop, fp32", plain_loop(torch, amp=False), STEPS),
        ("plain loop, AMP + GradScaler", plain_loop(torch, amp=True), STEPS),
        ("Lightning fit, `self.log` per step", lightning_fit(torch), 626),
    ]
    sync_rows, profile_rows, time_rows, failures = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        modes = Modes(Path(tmp))
        for name, workload, steps in workloads:
            for mode in modes.names:  # warm-up: CUDA context, kernels, imports
                timed(modes, mode, workload, 50)
            base = sync_warnings_by_thread(torch, modes, "none", workload, steps)
            ours = sync_warnings_by_thread(torch, modes, "autolog", workload, steps)
            added = ours["MainThread"] - base["MainThread"]
            others = sum(n for thread, n in ours.items() if thread != "MainThread")
            sync_rows.append(f"| {name} | {steps:,} | {base['MainThread']:,} | "
                             f"{ours['MainThread']:,} | **{added:+,}** | {others:,} |")
            if added > 0:
                failures.append(f"{name}: autolog added {added} synchronising calls")
            profile_steps = min(steps, 300)
            base_p = profiled_sync_calls(torch, modes, "none", workload, profile_steps)
            ours_p = profiled_sync_calls(torch, modes, "autolog", workload, profile_steps)
            p_added = ours_p["training thread"] - base_p["training thread"]
            profile_rows.append(
                f"| {name} | {profile_steps} | {base_p['training thread']} | "
                f"{ours_p['training thread']} | **{p_added:+}** | {ours_p['other threads']} |")
            if p_added > 0:
                failures.append(f"{name}: the profile shows {p_added} more sync calls")
            result = measure(modes, functools.partial(workload, steps), rounds, wrap_in_run=True)
            cells = [f"{result.median('none') / steps * 1e6:.0f}"]
            for mode in modes.names[1:]:
                cells.append(f"{result.added(mode):+.1%} ({result.per_step_us(mode, steps):+.0f} µs)")
            time_rows.append(f"| {name} | " + " | ".join(cells) + " |")
            print(sync_rows[-1], profile_rows[-1], time_rows[-1], sep="\n", flush=True)

    device = torch.cuda.get_device_name()
    mlflow_header = " | MLflow autolog adds" if modes.mlflow else ""
    mlflow_note = ("" if modes.mlflow else
                   " MLflow is not installed on this machine, so its column is left out.")
    report = (
        "## GPU: device synchronisation and per-step cost (`bench_gpu_sync.py`)\n\n"
        f"Machine: {machine()}; {device}; torch {torch.__version__}. A loss tensor logged per "
        f"step, converted by the writer thread every {os.environ['AUTOLOG_FLUSH_INTERVAL']} s."
        f"{mlflow_note}\n\n"
        "Synchronising CUDA calls reported by `torch.cuda.set_sync_debug_mode(\"warn\")`, one "
        "run each:\n\n"
        "| workload | steps | training thread, no autolog | training thread, autolog | "
        "added by autolog | autolog's writer thread |\n|---|---|---|---|---|---|\n"
        + "\n".join(sync_rows) +
        "\n\nCUDA runtime synchronising calls (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, "
        "`cudaEventSynchronize`, `cudaMemcpy*`) in a `torch.profiler` trace:\n\n"
        "| workload | steps | training thread, no autolog | training thread, autolog | "
        "added by autolog | other threads, autolog |\n|---|---|---|---|---|---|\n"
        + "\n".join(profile_rows) +
        f"\n\nWall time, median of {rounds} rounds, modes back to back in each; added: "
        "median of the paired ratios (and of the paired differences, per step):\n\n"
        f"| workload | µs/step, no autolog | autolog adds{mlflow_header} |\n"
        f"|---|---|---|{'---|' if modes.mlflow else ''}\n" + "\n".join(time_rows) + "\n\n"
        + ("Verdict: autolog added no synchronising call to the training thread.\n" if not failures
           else "Verdict: FAILED: " + "; ".join(failures) + "\n")
    )
    print(report)
    if not args.quick:
        write_section("bench_gpu_sync", report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
