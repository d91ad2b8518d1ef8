"""A metric's curve for ``autolog runs history``: a line chart in the terminal, drawn
by asciichartpy (one small module, no dependencies), or a PNG drawn by matplotlib (the
``plot`` extra). NaN and ±inf points are gaps in both; the summary counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from autolog.stores.base import Metric

LABEL_FORMAT = "{:>10.5g} "
LABEL_COLUMNS = 13  # the y-axis labels as LABEL_FORMAT writes them, then the axis itself
PLOT_EXTRA = 'pip install "autolog-ml[plot]"'


def terminal_chart(points: Sequence[Metric], width: int, height: int) -> str:
    """The points' values, in order, as a chart of at most ``width`` columns (labels
    included) and ``height`` rows, with the first and last step under it. Past one point
    per column, each column is the mean of the finite values it covers (a line under the
    chart says so). Empty when no value is finite."""
    import asciichartpy

    values = [_finite_or_nan(point.value) for point in points]
    columns = max(width - LABEL_COLUMNS, 2)
    note = ""
    if len(values) > columns:
        note = f"\n{' ' * LABEL_COLUMNS}(each column: the mean of about {len(values) / columns:.0f} points)"
        values = [_mean(values[i * len(values) // columns:(i + 1) * len(values) // columns])
                  for i in range(columns)]
    if all(math.isnan(value) for value in values):
        return ""
    chart = asciichartpy.plot(values, {"height": height, "format": LABEL_FORMAT})
    first, last = f"step {points[0].step}", f"step {points[-1].step}"
    steps = first if first == last else first + last.rjust(max(len(values) - len(first), len(last) + 1))
    return f"{chart}\n{' ' * LABEL_COLUMNS}{steps}{note}"


def summary(points: Sequence[Metric]) -> str:
    """min, max and last value, each with its step; how many points are not finite."""
    finite = [point for point in points if math.isfinite(point.value)]
    parts = []
    if finite:
        low = min(finite, key=lambda point: point.value)
        high = max(finite, key=lambda point: point.value)
        parts += [f"min {low.value:.6g} (step {low.step})", f"max {high.value:.6g} (step {high.step})"]
    parts.append(f"last {points[-1].value:.6g} (step {points[-1].step})")
    if len(finite) < len(points):
        parts.append(f"{len(points) - len(finite)} not finite (NaN or inf), not drawn")
    return "  ".join(parts)


def write_png(points: Sequence[Metric], path: Path, title: str, key: str) -> None:
    """The curve, value against step, as a PNG at ``path``. Without matplotlib: an
    :class:`ImportError` that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"--png needs matplotlib: {PLOT_EXTRA}") from None
    figure = Figure(figsize=(8, 4.5), layout="constrained")  # no pyplot: no GUI backend
    axes = figure.add_subplot()
    axes.plot([point.step for point in points], [_finite_or_nan(point.value) for point in points],
              linewidth=1.2, marker="." if len(points) < 50 else None)
    axes.set(title=title, xlabel="step", ylabel=key)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan
