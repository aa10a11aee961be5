"""Curves over training: train and validation loss, the learning-rate schedule, and the live loss
plot that redraws while a model trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lal.viz.inputs import _vector
from lal.viz.notebook import _in_kernel, _show_in
from lal.viz.theme import REFERENCE_COLOR, TRAIN_COLOR, VAL_COLOR, _styled


_HISTORY_FIELDS = ("step", "train_loss", "val_loss", "lr", "tokens", "elapsed_s")
_X_AXIS_LABELS = {"step": "training step", "tokens": "tokens seen", "elapsed_s": "wall-clock time (s)"}


def history_columns(history: Any) -> dict[str, np.ndarray]:
    """Columns of a training history as float arrays of equal length (missing values are NaN).

    Accepts the three shapes a history takes in the course: an object with list attributes
    (``lal.train.History``), a dict of lists (``History.to_dict()``), or a list of row dicts
    (the lines of ``metrics.jsonl``, where evaluation rows carry ``val_loss`` and others do not).
    """
    if isinstance(history, Mapping):
        raw = {name: list(history[name]) for name in _HISTORY_FIELDS if name in history}
    elif isinstance(history, Sequence) and not isinstance(history, str):
        if not all(isinstance(row, Mapping) for row in history):
            raise ValueError("A history given as a list must be a list of dicts (rows of metrics.jsonl).")
        present = [name for name in _HISTORY_FIELDS if any(name in row for row in history)]
        raw = {name: [row.get(name) for row in history] for name in present}
    else:
        raw = {name: list(getattr(history, name)) for name in _HISTORY_FIELDS if hasattr(history, name)}
    if "step" not in raw:
        raise ValueError("The history has no 'step' column; pass a History, a dict of lists or a list of "
                         "metrics rows, each with 'step', 'train_loss' and 'val_loss'.")
    lengths = {name: len(values) for name, values in raw.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"History columns differ in length: {lengths}. Record every column at every "
                         f"step (None where there was no evaluation).")
    return {name: np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            for name, values in raw.items()}


def _finite_pairs(xs: np.ndarray, ys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) points where both are finite: evaluation rows only have a val_loss, and so on."""
    if ys is None:
        return np.array([]), np.array([])
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def _ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing slider)."""
    smoothed = np.empty_like(values)
    running = 0.0
    for index, value in enumerate(values):
        running = smoothing * running + (1 - smoothing) * value
        smoothed[index] = running / (1 - smoothing ** (index + 1))
    return smoothed


def _densify(points: np.ndarray, per_segment: int = 16) -> np.ndarray:
    """Points along the polyline through ``points`` (N, 2), so a segment between two sparse
    evaluations counts as crossing what it crosses."""
    if len(points) < 2:
        return points
    fractions = np.linspace(0, 1, per_segment, endpoint=False)[:, None, None]  # (S, 1, 1)
    along = points[:-1] + fractions * (points[1:] - points[:-1])  # (S, N - 1, 2)
    return np.concatenate([along.reshape(-1, 2), points[-1:]])


def _draw_reference_lines(ax: Axes, reference: Mapping[str, float],
                          curves: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> None:
    """Dashed horizontal lines, each named at whichever end (and side) of it no curve crosses.

    A line such as "ln(V)" or a published result is named by a short label at one end. The
    curves of a run often pass through one of those spots (a loss that starts at ln V, a
    validation curve that ends on the reference), so each label goes to the first of right-above,
    right-below, left-above, left-below that the fewest points of ``curves`` fall into.
    """
    for value in reference.values():
        ax.axhline(value, color=REFERENCE_COLOR, linestyle="--", linewidth=1, zorder=1)
    ax.autoscale_view()  # the limits with every line in, so the fractions below are final
    to_axes = ax.transData + ax.transAxes.inverted()  # data → axes fraction (0..1 on both axes)
    points = [_densify(to_axes.transform(np.column_stack([xs, ys]))) for xs, ys in curves if len(xs)]
    curve_points = np.concatenate(points) if points else np.empty((0, 2))
    for name, value in reference.items():
        text = f"{name} = {value:.3g}"
        line_y = to_axes.transform((0.0, value))[1]
        width = min(0.9, 0.0125 * len(text) + 0.02)  # the label's width as a fraction of the axes
        height = 0.065
        candidates = [("right", 1), ("right", -1), ("left", 1), ("left", -1)]

        def crossings(candidate: tuple[str, int]) -> int:
            end, side = candidate
            x_low, x_high = (1 - width, 1.0) if end == "right" else (0.0, width)
            y_low, y_high = sorted((line_y, line_y + side * height))
            inside = ((curve_points[:, 0] >= x_low) & (curve_points[:, 0] <= x_high)
                      & (curve_points[:, 1] >= y_low) & (curve_points[:, 1] <= y_high))
            return int(inside.sum())

        end, side = min(candidates, key=crossings)  # min keeps the first of equally good spots
        ax.annotate(text, xy=(1 if end == "right" else 0, value), xycoords=ax.get_yaxis_transform(),
                    xytext=(-3 if end == "right" else 3, 3 * side), textcoords="offset points",
                    ha=end, va="bottom" if side > 0 else "top", fontsize=8.5, color=REFERENCE_COLOR)


@_styled
def plot_loss(
    history: Any,
    *,
    ax: Axes | None = None,
    x: str = "step",
    log_y: bool = False,
    reference: Mapping[str, float] | None = None,
    smoothing: float = 0.0,
    title: str = "Training and validation loss",
) -> Figure:
    """Train and validation loss against ``x`` ("step", "tokens" or "elapsed_s"), best val starred.

    ``reference`` draws named horizontal lines, e.g. ``{"ln(V)": math.log(65), "nanoGPT CPU":
    1.88}``: the loss of a uniform guess and a published result tell you how far a run got.
    ``smoothing`` in [0, 1) overlays an exponential moving average on a noisy per-step train loss.
    Pass ``ax`` to draw into an existing subplot.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
    columns = history_columns(history)
    if x not in columns:
        raise ValueError(f"The history has no {x!r} column; choose x from {sorted(columns)}.")
    train_x, train_y = _finite_pairs(columns[x], columns.get("train_loss"))
    val_x, val_y = _finite_pairs(columns[x], columns.get("val_loss"))
    if train_y.size == 0 and val_y.size == 0:
        raise ValueError("The history holds no finite train_loss or val_loss yet: nothing to plot.")

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4.2))
    if train_y.size and smoothing > 0:
        ax.plot(train_x, train_y, color=TRAIN_COLOR, linewidth=1, alpha=0.3, label="train (raw)")
        ax.plot(train_x, _ema(train_y, smoothing), color=TRAIN_COLOR, linewidth=2,
                label=f"train (smoothed {smoothing:g})")
    elif train_y.size:
        ax.plot(train_x, train_y, color=TRAIN_COLOR, linewidth=1.8, label="train")
    if val_y.size:
        ax.plot(val_x, val_y, color=VAL_COLOR, linewidth=1.8, marker="o", markersize=4, label="validation")
        best = int(np.argmin(val_y))
        ax.scatter([val_x[best]], [val_y[best]], marker="*", s=220, color=VAL_COLOR, edgecolor="black",
                   linewidth=0.8, zorder=5, label=f"best val {val_y[best]:.3f} ({x} {val_x[best]:.6g})")
    if log_y:
        ax.set_yscale("log")
    if reference:
        _draw_reference_lines(ax, reference, [(train_x, train_y), (val_x, val_y)])
    ax.set_xlabel(_X_AXIS_LABELS.get(x, x))
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


def _lr_values(schedule: Any, max_steps: int | None) -> tuple[np.ndarray, int | None]:
    """LR per step from a callable, a list of values, or a training config; plus its warmup length."""
    if callable(schedule):
        if max_steps is None:
            raise ValueError("Pass max_steps with a schedule function: plot_lr_schedule(lr_fn, max_steps=2000).")
        return np.array([float(schedule(step)) for step in range(max_steps)]), None
    if hasattr(schedule, "max_steps") and hasattr(schedule, "lr"):  # a lal.train.TrainConfig
        from lal.train import lr_at  # imported here so plotting never depends on the trainer

        steps = schedule.max_steps if max_steps is None else max_steps
        values = np.array([float(lr_at(step, schedule)) for step in range(steps)])
        return values, getattr(schedule, "warmup_steps", None)
    values = _vector(schedule, "The learning-rate values")
    return (values if max_steps is None else values[:max_steps]), None


@_styled
def plot_lr_schedule(
    schedule: Callable[[int], float] | Sequence[float] | Any,
    max_steps: int | None = None,
    *,
    warmup_steps: int | None = None,
    title: str = "Learning-rate schedule",
) -> Figure:
    """Learning rate against step, from a function ``step -> lr``, a list of values or a TrainConfig.

    Warmup keeps the first, noisiest updates small; the cosine decay then anneals towards
    ``min_lr`` so the last steps refine rather than jump. A dotted line marks the end of warmup.
    """
    values, config_warmup = _lr_values(schedule, max_steps)
    warmup_steps = config_warmup if warmup_steps is None else warmup_steps
    steps = np.arange(values.size)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, values, color=TRAIN_COLOR, linewidth=2)
    peak = int(np.argmax(values))
    ax.annotate(f"peak {values[peak]:.2e}", xy=(peak, values[peak]), xytext=(8, -12),
                textcoords="offset points", va="top", fontsize=9)
    # Above the end of the curve: below it the label would sit on the x-axis tick labels.
    ax.annotate(f"final {values[-1]:.2e}", xy=(steps[-1], values[-1]), xytext=(0, 8),
                textcoords="offset points", ha="right", va="bottom", fontsize=9)
    if warmup_steps:
        ax.axvline(warmup_steps, color=REFERENCE_COLOR, linestyle=":", linewidth=1.2)
        ax.annotate(f"end of warmup (step {warmup_steps})", xy=(warmup_steps, 0.02),
                    xycoords=ax.get_xaxis_transform(), xytext=(4, 0), textcoords="offset points",
                    fontsize=8.5, color=REFERENCE_COLOR)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}" if value else "0"))
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    return fig


def _event_field(event: Any, name: str) -> Any:
    """A field of an event given as a dict or as an object with attributes."""
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


class LiveLossPlot:
    """A training callback that redraws the loss curve in a notebook as training runs.

    Use it as ``train(..., callbacks=[LiveLossPlot()])``, or call ``on_eval(step, train_loss,
    val_loss)`` yourself. Every ``every``-th evaluation redraws the plot inside an
    ``ipywidgets.Output`` shown under the cell. Outside a notebook nothing is drawn and the
    data are only kept. Widget outputs are not saved with the notebook, so end the cell with
    ``live.figure()`` to store the final curve as a static picture.
    """

    def __init__(self, every: int = 1, *, log_y: bool = False,
                 reference: Mapping[str, float] | None = None,
                 title: str = "Training and validation loss (live)") -> None:
        if every < 1:
            raise ValueError(f"every must be ≥ 1 (redraw every n-th evaluation), got {every}.")
        self.every = every
        self.log_y = log_y
        self.reference = dict(reference or {})
        self.title = title
        self.history: dict[str, list[float | None]] = {"step": [], "train_loss": [], "val_loss": []}
        self.output = widgets.Output()
        self.redraws = 0
        self._displayed = False

    def __call__(self, event: Any) -> None:
        """Record an event: a dict or an object with ``step``, ``train_loss`` and ``val_loss``."""
        step = _event_field(event, "step")
        if step is None:
            raise ValueError("A LiveLossPlot event needs a 'step' (and 'train_loss' / 'val_loss').")
        self.on_eval(step, _event_field(event, "train_loss"), _event_field(event, "val_loss"))

    def on_eval(self, step: int, train_loss: float | None, val_loss: float | None = None) -> None:
        """Record one evaluation; redraw every ``every``-th one when a notebook is there to show it."""
        self.history["step"].append(int(step))
        self.history["train_loss"].append(None if train_loss is None else float(train_loss))
        self.history["val_loss"].append(None if val_loss is None else float(val_loss))
        if len(self.history["step"]) % self.every == 0 and _in_kernel():
            self._redraw()

    def _redraw(self) -> None:
        if not self._displayed:
            display(self.output)
            self._displayed = True
        _show_in(self.output, self.figure())
        self.redraws += 1

    def figure(self) -> Figure:
        """The loss curve of everything recorded so far, as a static figure."""
        return plot_loss(self.history, log_y=self.log_y, reference=self.reference, title=self.title)
