"""Pictures for the course: loss curves, schedules, attention maps, token boundaries, embeddings,
next-token distributions, and two small interactive explorers.

A picture is often the fastest way to see whether a model learned something (a loss that falls
below ln(V), attention that looks at the right tokens, embeddings where vowels sit together), so
every chapter draws a few. Each function here draws one kind of picture, labels its axes, gives it
a title, and returns the matplotlib ``Figure`` (or ``IPython.display.HTML`` for token spans):
notebooks keep the picture in their stored outputs and tests can inspect what was drawn.

The functions read plain data (lists, NumPy arrays, torch tensors) and depend on the rest of the
package only by duck typing (except the sampling pictures, which use ``lal.sample``'s filters so
they show exactly what the sampler does): a *tokenizer* is anything with ``encode(str) -> list[int]`` and
``decode(list[int]) -> str``; a *history* is anything that holds the columns ``step``,
``train_loss``, ``val_loss`` (and optionally ``lr``, ``tokens``, ``elapsed_s``).

In Jupyter, figures made with pyplot are also shown by the inline backend at the end of the cell,
so a bare ``plot_loss(history)`` as the last line shows the picture twice: write
``fig = plot_loss(history)``, end the line with ``;``, or follow it with ``plt.show()``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython import get_ipython
from IPython.display import HTML, clear_output, display
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lal.sample import next_token_distribution

__all__ = [
    "PALETTE",
    "style",
    "visible_token",
    "char_classes",
    "history_columns",
    "pca_2d",
    "plot_loss",
    "plot_lr_schedule",
    "plot_attention",
    "plot_bigram_counts",
    "token_spans_html",
    "plot_embeddings_2d",
    "plot_next_token_distribution",
    "plot_sampling_filters",
    "plot_sampling_settings",
    "plot_parameter_counts",
    "plot_grad_norms",
    "LiveLossPlot",
    "SamplingExplorer",
    "sampling_explorer",
    "AttentionExplorer",
    "attention_explorer",
]

# --------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------

#: Okabe & Ito's palette: distinguishable with every common form of colour blindness.
PALETTE: dict[str, str] = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
_CYCLE = [PALETTE[name] for name in ("blue", "vermillion", "green", "orange", "purple", "sky", "black")]
TRAIN_COLOR = PALETTE["blue"]
VAL_COLOR = PALETTE["vermillion"]
REFERENCE_COLOR = "0.4"
BAR_COLOR = PALETTE["sky"]
HIGHLIGHT_COLOR = PALETTE["vermillion"]
HEATMAP_CMAP = "viridis"  # perceptually uniform and readable in grey scale
EMPTY_CELL_COLOR = "white"  # masked cells (future positions, bigrams never seen) are left blank

#: Pastel backgrounds for token spans; neighbours always differ in hue *and* lightness.
_SPAN_COLORS = ("#cfe6ff", "#ffd9a8", "#c9efd9", "#f6cde3", "#e3dcff", "#fff1a6")

_RC: dict[str, Any] = {
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "figure.constrained_layout.use": True,  # keeps long token labels from overlapping the title
    "font.size": 10,
    "axes.titlesize": 11.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.prop_cycle": plt.cycler(color=_CYCLE),
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "image.cmap": HEATMAP_CMAP,
}

_WHITESPACE_SYMBOLS = {"\n": "⏎", " ": "␣", "\t": "⇥"}


@contextmanager
def style() -> Iterator[None]:
    """Draw inside this block to get the course's look (use it for your own plots in notebooks).

    A context manager rather than a global ``rcParams`` change, so importing ``lal`` never
    restyles a learner's other plots.
    """
    with plt.rc_context(_RC):
        try:
            yield
        finally:
            # The inline backend may switch interactive mode on while drawing inside the block;
            # leaving rc_context would switch it off again and later figures would not be shown.
            interactive = matplotlib.is_interactive()
    matplotlib.interactive(interactive)


def _styled(plot_function: Callable[..., Any]) -> Callable[..., Any]:
    """Run a plotting function inside :func:`style`."""

    @functools.wraps(plot_function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return plot_function(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------


class TokenizerLike(Protocol):
    """What the plots need from a tokenizer (every ``lal`` tokenizer has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def _is_tokenizer(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None))


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """A float64 NumPy copy of a list, array or torch tensor (any device, any dtype, with grad)."""
    if hasattr(values, "detach"):  # a torch tensor; bf16 has no NumPy dtype, hence .float()
        values = values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers (a list, NumPy array or torch tensor): {error}") from error


def _vector(values: Any, name: str) -> np.ndarray:
    array = _to_numpy(values, name)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {array.shape}; "
                         f"from a batch, pass one row (e.g. logits[0, -1] for the last position).")
    return array


def visible_token(token: str) -> str:
    """A token as a label you can read: whitespace drawn as symbols, control characters escaped.

    ``"\\n"`` becomes ``⏎``, a space ``␣`` and a tab ``⇥``, so ``" the"`` (GPT-2's token with its
    leading space) reads ``␣the``. Other invisible characters are shown as their Python escape.
    """
    if token == "":
        return "∅"
    parts = []
    for char in token:
        if char in _WHITESPACE_SYMBOLS:
            parts.append(_WHITESPACE_SYMBOLS[char])
        elif not char.isprintable():
            parts.append(char.encode("unicode_escape").decode("ascii"))
        else:
            parts.append(char)
    return "".join(parts)


def _tick_label(token: str) -> str:
    """:func:`visible_token`, with ``$`` escaped so matplotlib does not read a token as math."""
    return visible_token(token).replace("$", r"\$")


def _labels_for(labels: Sequence[str] | TokenizerLike, ids: Sequence[int]) -> list[str]:
    """The label of each id: from a list of strings, or by decoding one id at a time."""
    if _is_tokenizer(labels):
        return [labels.decode([int(i)]) for i in ids]  # type: ignore[union-attr]
    return [str(labels[int(i)]) for i in ids]  # type: ignore[index]


def _check_label_count(labels: Sequence[str] | TokenizerLike, size: int, what: str) -> None:
    if not _is_tokenizer(labels) and len(labels) != size:  # type: ignore[arg-type]
        raise ValueError(f"Got {len(labels)} labels for {size} {what}; "  # type: ignore[arg-type]
                         f"pass one label per {what.rstrip('s')} (or a tokenizer).")


def _rotation_for(labels: Sequence[str]) -> int:
    """Single characters read best upright; longer tokens need to stand up to fit."""
    return 0 if max((len(label) for label in labels), default=0) <= 2 else 90


def _human_count(value: float, _position: Any = None) -> str:
    """1234 -> '1.2K', 3_400_000 -> '3.4M' (axis ticks and bar annotations)."""
    for divisor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return f"{value:.0f}"


# --------------------------------------------------------------------------------------------
# Loss curves and learning-rate schedules
# --------------------------------------------------------------------------------------------

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
    ax.annotate(f"final {values[-1]:.2e}", xy=(steps[-1], values[-1]), xytext=(0, -6),
                textcoords="offset points", ha="right", va="top", fontsize=9)
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


# --------------------------------------------------------------------------------------------
# Heatmaps: attention and bigram counts
# --------------------------------------------------------------------------------------------


def _attention_array(weights: Any) -> np.ndarray:
    """Attention weights as (H, T, T): accepts (T, T), (H, T, T) or one batch element (1, H, T, T)."""
    array = _to_numpy(weights, "Attention weights")
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"Got a batch of {array.shape[0]} attention maps {array.shape}; "
                             f"pick one sequence first, e.g. weights[0].")
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise ValueError(f"Attention weights must be (T, T) or (H, T, T) with T queries and T keys, "
                         f"got shape {array.shape}.")
    return array


def _head_grid(n_heads: int) -> tuple[int, int]:
    """Rows and columns for a grid of heads: at most 4 columns, as few empty cells as possible."""
    if n_heads <= 4:
        return 1, n_heads
    n_cols = min((4, 3), key=lambda cols: (math.ceil(n_heads / cols) * cols - n_heads, -cols))
    return math.ceil(n_heads / n_cols), n_cols


def _token_tick_layout(n_tokens: int, side_inches: float) -> tuple[int, float]:
    """Label step and font size for token labels along a heatmap side of ``side_inches``.

    The font grows with the room each row gets (up to 9 pt); when even 6 pt does not fit, only
    every n-th token is labelled, so labels never overlap.
    """
    points_per_token = side_inches * 72 * 0.85 / n_tokens  # the heatmap fills ~85 % of its cell
    fontsize = float(np.clip(0.85 * points_per_token, 6.0, 9.0))
    return max(1, math.ceil(fontsize / points_per_token - 0.05)), fontsize


def _label_extent_inches(labels: Sequence[str], fontsize: float) -> float:
    """Roughly how far the longest label reaches (to leave room for it in the figure size)."""
    longest = max((len(visible_token(label)) for label in labels), default=1)
    return longest * fontsize * 0.62 / 72


def _set_token_ticks(ax: Axes, labels: Sequence[str], side_inches: float, *, x: bool, y: bool) -> None:
    """Token labels on the heatmap's columns (x) and rows (y); hidden where ``x``/``y`` is False."""
    step, fontsize = _token_tick_layout(len(labels), side_inches)
    positions = list(range(0, len(labels), step))
    shown = [_tick_label(labels[i]) for i in positions]
    ax.set_xticks(positions, shown if x else [], rotation=_rotation_for(shown), fontsize=fontsize)
    ax.set_yticks(positions, shown if y else [], fontsize=fontsize)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _blank_cmap(name: str) -> mcolors.Colormap:
    """A copy of a colormap that leaves masked cells blank."""
    return plt.get_cmap(name).with_extremes(bad=EMPTY_CELL_COLOR)


@_styled
def plot_attention(
    weights: Any,
    tokens: Sequence[str],
    *,
    head: int | None = None,
    title: str | None = None,
) -> Figure:
    """Attention weights as a heatmap: one row per query token, one column per key token.

    ``weights`` is (T, T), (H, T, T) or (1, H, T, T), NumPy or torch. With several heads and
    ``head=None`` the figure is a grid with one heatmap per head (H heatmap axes, then one shared
    colorbar axes) on a common colour scale, so heads can be compared. When the map is causal
    (nothing above the diagonal) the upper triangle is left blank: those keys are in the future.
    """
    maps = _attention_array(weights)  # (H, T, T)
    n_heads, n_tokens = maps.shape[0], maps.shape[-1]
    if len(tokens) != n_tokens:
        raise ValueError(f"Got {len(tokens)} tokens for attention over {n_tokens} positions; "
                         f"pass the tokens of the sequence the weights came from.")
    if head is not None:
        if not 0 <= head < n_heads:
            raise ValueError(f"head must be in 0..{n_heads - 1} for weights with {n_heads} heads, got {head}.")
        maps, head_names = maps[head:head + 1], [f"head {head}"]
    else:
        head_names = [f"head {h}" for h in range(n_heads)] if n_heads > 1 else [""]

    future = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    is_causal = bool(np.all(maps[:, future] == 0))
    n_rows, n_cols = _head_grid(len(maps))
    cell = float(np.clip(0.24 * n_tokens + 1.0, 2.8, 8.0)) if len(maps) == 1 else \
        float(np.clip(0.15 * n_tokens + 1.0, 2.4, 4.5))
    label_room = _label_extent_inches(tokens, _token_tick_layout(n_tokens, cell)[1]) + 0.4
    x_label_room = label_room if _rotation_for([visible_token(t) for t in tokens]) else 0.4
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(n_cols * cell + label_room + 1.3, n_rows * (cell + 0.3) + x_label_room + 0.6))
    flat_axes = list(axes.flat)
    for unused in flat_axes[len(maps):]:
        fig.delaxes(unused)
    cmap, vmax = _blank_cmap(HEATMAP_CMAP), max(float(maps.max()), 1e-12)
    image = None
    for index, (ax, weights_h, name) in enumerate(zip(flat_axes, maps, head_names)):
        shown = np.ma.masked_where(future, weights_h) if is_causal else weights_h
        image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        is_bottom = index + n_cols >= len(maps)  # no heatmap below this one
        is_left = index % n_cols == 0
        _set_token_ticks(ax, tokens, cell, x=is_bottom, y=is_left)
        if name:
            ax.set_title(name, fontsize=10)
        if is_bottom:
            ax.set_xlabel("key (attended to)")
        if is_left:
            ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=flat_axes[:len(maps)], shrink=0.85, label="attention weight")
    default_title = "Attention weights" + (" per head" if len(maps) > 1 else "")
    fig.suptitle(title or default_title, fontweight="bold")
    return fig


def _format_count(count: float) -> str:
    return f"{count:.0f}" if count < 1000 else f"{count / 1000:.1f}k" if count < 10_000 else f"{count / 1000:.0f}k"


@_styled
def plot_bigram_counts(
    counts: Any,
    labels: Sequence[str],
    *,
    annotate: bool | None = None,
    title: str = "Bigram counts: how often the column token follows the row token",
) -> Figure:
    """Heatmap of a (V, V) count matrix, row = current token, column = next token (chapter 1).

    Counts span orders of magnitude (``e`` follows ``h`` thousands of times, ``q`` almost never
    follows anything), so the colour scale is logarithmic and pairs never seen stay blank.
    ``annotate`` writes the count in each cell (default: when V ≤ 30, where it stays legible).
    """
    matrix = _to_numpy(counts, "counts")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"counts must be a square (V, V) matrix, got shape {matrix.shape}.")
    if np.any(matrix < 0):
        raise ValueError("counts must be non-negative.")
    size = matrix.shape[0]
    _check_label_count(labels, size, "tokens")
    annotate = size <= 30 if annotate is None else annotate
    side = float(np.clip(0.17 * size + 2.0, 4.5, 13.0))
    label_room = _label_extent_inches(labels, _token_tick_layout(size, side)[1]) + 0.4
    fig, ax = plt.subplots(figsize=(side + label_room + 1.5, side + label_room + 0.5))
    norm = mcolors.LogNorm(vmin=1, vmax=max(float(matrix.max()), 1.0))
    image = ax.imshow(np.ma.masked_equal(matrix, 0), cmap=_blank_cmap(HEATMAP_CMAP), norm=norm,
                      interpolation="nearest")
    _set_token_ticks(ax, labels, side, x=True, y=True)
    if annotate:
        for row, column in zip(*np.nonzero(matrix)):
            value = matrix[row, column]
            light_cell = norm(value) > 0.6  # viridis turns light (yellow) at the top of the scale
            ax.text(column, row, _format_count(value), ha="center", va="center",
                    fontsize=6.5, color="black" if light_cell else "white")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count (log scale; blank = never seen)")
    ax.set_xlabel("next token")
    ax.set_ylabel("current token")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Token boundaries
# --------------------------------------------------------------------------------------------


#: A faint symbol standing for invisible characters; inline styles, because notebook viewers
#: (GitHub, Colab previews) drop <style> blocks.
_WS_MARKER = '<i class="lal-ws" style="font-style:normal;opacity:0.45">{}</i>'


def _span_content(token: str) -> str:
    """A token's text as HTML: escaped, whitespace shown as faint symbols, newlines kept."""
    if token == "":
        return _WS_MARKER.format("∅")
    parts = []
    for char in token:
        if char in _WHITESPACE_SYMBOLS or not char.isprintable():
            parts.append(_WS_MARKER.format(html.escape(visible_token(char))))
            if char == "\n":
                parts.append("\n")  # the container keeps line breaks, so the text keeps its shape
        else:
            parts.append(html.escape(char))
    return "".join(parts)


def token_spans_html(
    tokenizer_or_tokens: TokenizerLike | Sequence[str],
    text: str | None = None,
    *,
    show_stats: bool = True,
) -> HTML:
    """Text cut into its tokens, one coloured span per token, the id in each span's tooltip.

    Pass a tokenizer and the text (hover a span to see its id), or a list of token strings.
    Seeing where a tokenizer cuts (``␣the`` as one token, a rare word in four pieces) explains
    sequence lengths, and why a model can struggle to spell. A token that holds only part of a
    multi-byte character (byte-level BPE) shows as ``�``, which is what it decodes to alone.
    """
    if _is_tokenizer(tokenizer_or_tokens):
        if not isinstance(text, str):
            raise ValueError("Pass the text to tokenize: token_spans_html(tokenizer, 'some text').")
        ids: list[int] | None = list(tokenizer_or_tokens.encode(text))  # type: ignore[union-attr]
        tokens = [tokenizer_or_tokens.decode([i]) for i in ids]  # type: ignore[union-attr]
    elif isinstance(tokenizer_or_tokens, Sequence) and not isinstance(tokenizer_or_tokens, str):
        if text is not None:
            raise ValueError("Pass either a tokenizer and a text, or a list of token strings, not both.")
        if not all(isinstance(token, str) for token in tokenizer_or_tokens):
            raise ValueError("A list of tokens must hold strings; for ids, pass the tokenizer and the text.")
        ids, tokens = None, list(tokenizer_or_tokens)
    else:
        raise ValueError("token_spans_html needs a tokenizer (with encode/decode) and a text, "
                         "or a list of token strings.")

    spans = []
    for position, token in enumerate(tokens):
        what = f"id {ids[position]}" if ids is not None else f"token {position}"
        tooltip = html.escape(f"{what}: {token!r}", quote=True)
        color = _SPAN_COLORS[position % len(_SPAN_COLORS)]
        spans.append(f'<span class="lal-tok" title="{tooltip}" style="background:{color};'
                     f'border-radius:3px;padding:1px 0;margin-right:1px">{_span_content(token)}</span>')
    stats = ""
    if show_stats:
        n_chars = len(text) if ids is not None else sum(len(token) for token in tokens)
        ratio = f" · {n_chars / len(tokens):.2f} characters per token" if tokens else ""
        stats = (f'<div style="font-family:sans-serif;font-size:0.85em;color:#555;margin-bottom:4px">'
                 f"{len(tokens)} tokens · {n_chars} characters{ratio}</div>")
    body = ('<div style="font-family:monospace;white-space:pre-wrap;line-height:1.9;color:#111;'
            'background:white;padding:6px">' + "".join(spans) + "</div>")
    return HTML(stats + body)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def pca_2d(weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``weights`` (N, D) onto their two main directions: (coords (N, 2), ratios (2,)).

    ``ratios`` is the fraction of the variance each direction explains. The eigenvectors of the
    covariance are only defined up to sign, so each is flipped to make its largest entry
    positive: the same weights always give the same picture, not a mirror image.
    """
    matrix = _to_numpy(weights, "weights")
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 2:
        raise ValueError(f"weights must be (N, D) with N ≥ 2 rows and D ≥ 2 dimensions, got {matrix.shape}.")
    centered = matrix - matrix.mean(axis=0)  # (N, D)
    covariance = centered.T @ centered  # (D, D): cheaper than an SVD of (N, D) when N is a vocabulary
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending order
    top = np.argsort(eigenvalues)[::-1][:2]
    components = eigenvectors[:, top]  # (D, 2)
    largest = np.argmax(np.abs(components), axis=0)
    components = components * np.sign(components[largest, [0, 1]])
    total = float(np.clip(eigenvalues, 0, None).sum())
    ratios = np.clip(eigenvalues[top], 0, None) / total if total > 0 else np.zeros(2)
    return centered @ components, ratios


def char_classes(labels: Sequence[str]) -> list[str]:
    """A class per character label (lowercase, uppercase, digit, whitespace, punctuation, other).

    Pass it as ``groups`` to :func:`plot_embeddings_2d` to see whether a character model put
    similar characters together.
    """
    classes = []
    for label in labels:
        if label.isspace():
            classes.append("whitespace")
        elif label.isdigit():
            classes.append("digit")
        elif label.islower():
            classes.append("lowercase")
        elif label.isupper():
            classes.append("uppercase")
        elif len(label) == 1 and not label.isalnum() and label.isprintable():
            classes.append("punctuation")
        else:
            classes.append("other")
    return classes


#: Groups in a scatter differ in colour *and* marker, so no two are told apart by hue alone
#: (vermillion and orange, side by side, are hard to tell apart at the size of a point).
_GROUP_COLORS = [PALETTE[name] for name in ("blue", "vermillion", "green", "black", "purple", "orange", "sky")]
_GROUP_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]

#: Where a point's label may go, in points from the point: right, left, above, below, the diagonals.
_LABEL_OFFSETS = [(4, 0, "left", "center"), (-4, 0, "right", "center"), (0, 5, "center", "bottom"),
                  (0, -5, "center", "top"), (4, 4, "left", "bottom"), (-4, 4, "right", "bottom"),
                  (4, -4, "left", "top"), (-4, -4, "right", "top")]


def _place_point_labels(ax: Axes, coords: np.ndarray, labels: Sequence[str], fontsize: float) -> None:
    """Label each point beside it, in the first of eight spots that overlaps no label placed yet.

    A greedy placement in display space (estimated text boxes): crowded clusters of short labels,
    such as the letters of a character model, stay readable. When every spot is taken the label
    goes to the least crowded one.
    """
    ax.autoscale_view()
    to_pixels = ax.transData.transform
    pixels_per_point = ax.figure.dpi / 72
    char_width, height = 0.62 * fontsize * pixels_per_point, 1.2 * fontsize * pixels_per_point
    centres = to_pixels(coords) if len(coords) else np.empty((0, 2))
    placed: list[tuple[float, float, float, float]] = []  # (x0, y0, x1, y1) in pixels
    dot = 3.0 * pixels_per_point  # the marker's half size: labels keep off every point
    for (x_pixel, y_pixel), (x_value, y_value), label in zip(centres, coords, labels):
        width = char_width * max(len(label), 1)
        best, best_overlap = _LABEL_OFFSETS[0], math.inf
        for offset in _LABEL_OFFSETS:
            dx, dy, ha, va = offset
            x0 = x_pixel + dx * pixels_per_point - {"left": 0, "center": width / 2, "right": width}[ha]
            y0 = y_pixel + dy * pixels_per_point - {"bottom": 0, "center": height / 2, "top": height}[va]
            box = (x0, y0, x0 + width, y0 + height)
            overlap = sum(_overlap(box, other) for other in placed)
            overlap += sum(_overlap(box, (cx - dot, cy - dot, cx + dot, cy + dot)) for cx, cy in centres)
            if overlap < best_overlap:
                best, best_overlap, best_box = offset, overlap, box
            if overlap == 0:
                break
        placed.append(best_box)
        dx, dy, ha, va = best
        ax.annotate(label, (x_value, y_value), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                    fontsize=fontsize)


def _overlap(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> float:
    """The area two boxes (x0, y0, x1, y1) share."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    return max(width, 0.0) * max(height, 0.0)


@_styled
def plot_embeddings_2d(
    weights: Any,
    labels: Sequence[str],
    *,
    method: str = "pca",
    groups: Sequence[str] | None = None,
    max_labels: int = 300,
    title: str = "Embeddings projected to 2-D (PCA)",
) -> Figure:
    """Scatter of embedding rows (N, D) projected to 2-D, each point labelled with its token.

    Tokens the model uses alike end up with similar vectors, so look for clusters. ``groups``
    (one name per row, e.g. :func:`char_classes`) colours points by group. Only the first
    ``max_labels`` points get a text label, so put the rows you care about first.
    """
    if method != "pca":
        raise ValueError(f"Unknown method {method!r}: only 'pca' is available.")
    coords, ratios = pca_2d(weights)
    _check_label_count(labels, coords.shape[0], "rows")
    if groups is not None and len(groups) != coords.shape[0]:
        raise ValueError(f"Got {len(groups)} groups for {coords.shape[0]} rows; pass one group name per row.")
    fig, ax = plt.subplots(figsize=(8, 7))
    if groups is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=18, color=TRAIN_COLOR, alpha=0.7)
    else:
        for name, color, marker in zip(dict.fromkeys(groups), _GROUP_COLORS * len(groups), _GROUP_MARKERS * len(groups)):
            chosen = np.array([group == name for group in groups])
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=24, color=color, marker=marker, label=name,
                       edgecolor="white", linewidth=0.4)
        ax.legend(loc="best", markerscale=1.4)
    _place_point_labels(ax, coords[:max_labels], [_tick_label(label) for label in labels[:max_labels]], fontsize=9)
    ax.set_xlabel(f"principal component 1 ({ratios[0]:.0%} of variance)")
    ax.set_ylabel(f"principal component 2 ({ratios[1]:.0%} of variance)")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Next-token distributions and sampling filters
# --------------------------------------------------------------------------------------------


def _sampling_stages(logits: np.ndarray, temperature: float, top_k: int | None,
                     top_p: float | None) -> list[tuple[str, np.ndarray]]:
    """The distribution after each step of the usual order: softmax, temperature, top-k, top-p.

    Each stage is :func:`lal.sample.next_token_distribution` with one more filter switched on,
    so the picture shows exactly what the sampler draws from.
    """
    logits_tensor = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    n_tokens = logits.size
    temperature_name = "temperature 0: greedy (argmax)" if temperature == 0 else f"temperature {temperature:g}"
    stages = [
        ("softmax(logits)", next_token_distribution(logits_tensor)),
        (temperature_name, next_token_distribution(logits_tensor, temperature)),
        ("top-k: off" if top_k is None else f"top-k, k = {top_k}",
         next_token_distribution(logits_tensor, temperature, top_k)),
        ("top-p: off" if top_p is None else f"top-p, p = {top_p:g}",
         next_token_distribution(logits_tensor, temperature, top_k, top_p)),
    ]
    return [(f"{name}  ({int(torch.count_nonzero(probs))} of {n_tokens} tokens possible)", probs.numpy())
            for name, probs in stages]


def _set_bar_labels(ax: Axes, labels: Sequence[str]) -> None:
    shown = [_tick_label(label) for label in labels]
    if _rotation_for(shown):  # slanted, anchored at the bar: words stay readable and aligned
        ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    else:
        ax.set_xticks(range(len(shown)), shown, fontsize=9)
    ax.grid(False, axis="x")


def _highlight_id(highlight: int | str | None, labels: Sequence[str] | TokenizerLike) -> int | None:
    """The id to highlight, given an id, or a label (a single token) to look up."""
    if highlight is None or isinstance(highlight, (int, np.integer)):
        return None if highlight is None else int(highlight)
    if _is_tokenizer(labels):
        ids = labels.encode(highlight)  # type: ignore[union-attr]
        if len(ids) != 1:
            raise ValueError(f"highlight {highlight!r} is {len(ids)} tokens; pass one token or its id.")
        return int(ids[0])
    if highlight not in labels:  # type: ignore[operator]
        raise ValueError(f"highlight {highlight!r} is not one of the labels; pass a label or an id.")
    return list(labels).index(highlight)  # type: ignore[arg-type]


@_styled
def plot_next_token_distribution(
    probs: Any,
    labels: Sequence[str] | TokenizerLike,
    *,
    k: int = 20,
    title: str | None = None,
    highlight: int | str | None = None,
    log_y: bool = False,
) -> Figure:
    """The k most likely next tokens as bars, most likely first.

    ``labels`` is one string per id, or a tokenizer (only the k shown ids are decoded, so a
    50k-token vocabulary is fine). ``highlight`` (an id or a label, e.g. the true next token) is
    drawn in a contrasting colour; when it is not among the k shown, a note gives its rank.
    ``log_y=True`` shows a distribution where one token takes almost everything: on a linear axis
    the others would be invisible, on a log axis each bar shows its order of magnitude.
    """
    probs = _vector(probs, "probs")
    if np.any(probs < 0):
        raise ValueError("probs must be non-negative; pass softmax(logits), not logits.")
    _check_label_count(labels, probs.size, "tokens")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    order = np.argsort(-probs, kind="stable")
    top = order[:k]
    highlight_id = _highlight_id(highlight, labels)
    colors = [HIGHLIGHT_COLOR if i == highlight_id else BAR_COLOR for i in top]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.36 * len(top) + 2.0), 3.9))
    ax.bar(range(len(top)), probs[top], color=colors, edgecolor="white", linewidth=0.5)
    _set_bar_labels(ax, _labels_for(labels, top))
    notes = [f"top {len(top)} hold {probs[top].sum() / probs.sum():.1%} of the probability"]
    if highlight_id is not None and highlight_id not in top:
        rank = int(np.nonzero(order == highlight_id)[0][0]) + 1
        label = _labels_for(labels, [highlight_id])[0]
        notes.append(f"{visible_token(label)!r} is not shown: p = {probs[highlight_id]:.2g}, rank {rank}")
    ax.text(0.99, 0.97, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=9)
    if log_y:
        shown = probs[top][probs[top] > 0]
        ax.set_yscale("log")
        if shown.size:  # from below the shortest bar to a little above the tallest
            ax.set_ylim(shown.min() / 3, shown.max() * 3)
    ax.set_xlabel("next token (most likely first)")
    ax.set_ylabel("probability" + (" (log scale)" if log_y else ""))
    ax.set_title(title or "Next-token distribution")
    return fig


@_styled
def plot_sampling_filters(
    logits: Any,
    labels: Sequence[str] | TokenizerLike,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    k: int = 20,
    title: str | None = None,
) -> Figure:
    """The next-token distribution after each sampling step: softmax, temperature, top-k, top-p.

    Four panels share one x axis (the ``k`` most likely tokens before any filter, so a token
    keeps its place) and one y axis. Each panel draws the previous panel's distribution as grey
    outlines behind its own bars: you see temperature move mass between tokens, top-k and top-p
    remove the tail and the renormalisation lift what is left. ``top_k=None`` / ``top_p=None``
    switch a filter off; ``temperature=0`` is greedy decoding.
    """
    logits = _vector(logits, "logits")
    _check_label_count(labels, logits.size, "tokens")
    stages = _sampling_stages(logits, temperature, top_k, top_p)
    shown = np.argsort(-stages[0][1], kind="stable")[:k]
    positions = np.arange(len(shown))
    fig, axes = plt.subplots(len(stages), 1, sharex=True, sharey=True,
                             figsize=(max(7.0, 0.38 * len(shown) + 2.5), 2.1 * len(stages) + 0.8))
    previous = None
    for ax, (name, probs) in zip(axes, stages):
        if previous is not None:
            ax.bar(positions, previous[shown], facecolor="none", edgecolor="0.35", linestyle="--",
                   linewidth=0.9, zorder=3, label="before this step")  # on top: a lift stays visible
        ax.bar(positions, probs[shown], color=BAR_COLOR, label="after this step")
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylabel("probability")
        ax.grid(False, axis="x")
        previous = probs
    axes[1].legend(loc="upper right")
    _set_bar_labels(axes[-1], _labels_for(labels, shown))
    axes[-1].set_xlabel(f"token (the {len(shown)} most likely before filtering)")
    fig.suptitle(title or "Sampling filters, step by step", fontweight="bold")
    return fig


@_styled
def plot_sampling_settings(
    logits: Any,
    labels: Sequence[str] | TokenizerLike,
    settings: Sequence[Mapping[str, Any]],
    *,
    k: int = 20,
    title: str | None = None,
) -> Figure:
    """What the sampler draws from under each of several ``settings``, one panel per setting.

    Each setting is a dict of :func:`lal.sample.next_token_distribution`'s knobs
    (``temperature``, ``top_k``, ``top_p``). The panels share the x axis of
    :func:`plot_sampling_filters` (the ``k`` most likely tokens before any filter) and draw the
    model's own distribution as grey outlines, so each shows how far its setting moves it.
    """
    logits = _vector(logits, "logits")
    _check_label_count(labels, logits.size, "tokens")
    if not settings:
        raise ValueError("settings is empty; pass a list of dicts such as [dict(temperature=0.5), dict(top_k=5)].")
    logits_tensor = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    model_probs = next_token_distribution(logits_tensor).numpy()
    shown = np.argsort(-model_probs, kind="stable")[:k]
    positions = np.arange(len(shown))
    n_cols = 2 if len(settings) > 1 else 1
    n_rows = -(-len(settings) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False,
                             figsize=(max(7.0, 0.3 * len(shown) + 2.0) * n_cols / 1.4, 2.4 * n_rows + 0.8))
    for ax, setting in zip(axes.flat, settings):
        probs = next_token_distribution(logits_tensor, **setting).numpy()
        ax.bar(positions, model_probs[shown], facecolor="none", edgecolor="0.35", linestyle="--",
               linewidth=0.9, zorder=3, label="the model (temperature 1)")
        ax.bar(positions, probs[shown], color=BAR_COLOR, label="this setting")
        knobs = ", ".join(f"{name} {value:g}" for name, value in setting.items() if value is not None) or "temperature 1"
        ax.set_title(f"{knobs}  ({int(np.count_nonzero(probs))} of {logits.size} tokens possible)", fontsize=10,
                     loc="left")
        _set_bar_labels(ax, _labels_for(labels, shown))
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("probability")
    for ax in axes[-1]:
        ax.set_xlabel(f"token (the {len(shown)} most likely for the model)")
    axes.flat[0].legend(loc="upper right", fontsize=9)
    fig.suptitle(title or "The same distribution under different settings", fontweight="bold")
    return fig


# --------------------------------------------------------------------------------------------
# Model anatomy: parameter counts and gradient norms
# --------------------------------------------------------------------------------------------

_PART_NAMES = {"mlp": "MLP"}


@_styled
def plot_parameter_counts(
    table: Mapping[str, Mapping[str, int]],
    *,
    log_y: bool = False,
    title: str = "Parameters per preset",
) -> Figure:
    """Parameters per preset, split into parts (embeddings, attention, MLP, norms).

    ``table`` maps a preset name to its parts, e.g. ``lal.model.count_parameters(model)`` per
    preset (a ``"total"`` entry is ignored: the total is computed from the parts). With a large
    vocabulary the embedding table dominates a small model, which is chapter 2's warning.

    On a linear axis (the default) each preset is one stacked bar, whose height is its total.
    Presets from 0.4M to 124M parameters do not fit on one linear axis, and the smallest parts
    (LayerNorms: thousands of parameters) never show in a stack, so ``log_y=True`` draws each part
    as its own bar, side by side, on a log axis, with the preset's total as a black tick above
    its group: every part of every preset is visible and readable by its order of magnitude.
    """
    if not table:
        raise ValueError("The table is empty; pass {preset_name: {part: count}}.")
    parts = list(dict.fromkeys(part for row in table.values() for part in row if part.lower() != "total"))
    presets = list(table)
    counts = np.array([[float(table[preset].get(part, 0)) for preset in presets] for part in parts])  # (parts, presets)
    if np.any(counts < 0):
        part = parts[int(np.argwhere(counts < 0)[0][0])]
        raise ValueError(f"Parameter counts must be non-negative; {part!r} has {counts.min():.0f}.")
    totals = counts.sum(axis=0)
    positions = np.arange(len(presets))
    colors = (_CYCLE * len(parts))[: len(parts)]
    if log_y:
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(presets) + 2.5), 4.8))
        width = 0.8 / len(parts)
        for index, (part, color) in enumerate(zip(parts, colors)):
            offsets = positions - 0.4 + width * (index + 0.5)
            ax.bar(offsets, counts[index], width=width, color=color, label=_PART_NAMES.get(part, part),
                   edgecolor="white", linewidth=0.5)
        ax.hlines(totals, positions - 0.42, positions + 0.42, color="black", linewidth=1.6, label="total")
        label_y = totals * 1.15
        positive = counts[counts > 0]
        ax.set_yscale("log")
        ax.set_ylim(bottom=(positive.min() if positive.size else 1) / 3, top=totals.max() * 30)
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(presets) + 2.5), 4.5))
        bottoms = np.zeros(len(presets))
        for index, (part, color) in enumerate(zip(parts, colors)):
            ax.bar(positions, counts[index], bottom=bottoms, color=color, label=_PART_NAMES.get(part, part),
                   edgecolor="white", linewidth=0.5)
            bottoms += counts[index]
        label_y = totals
        ax.set_ylim(top=totals.max() * 1.1)
    for position, total, y_value in zip(positions, totals, label_y):
        ax.annotate(_human_count(total), (position, y_value), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.set_xticks(positions, presets)
    ax.yaxis.set_major_formatter(FuncFormatter(_human_count))
    ax.tick_params(axis="x", rotation=30 if len(presets) > 5 else 0)
    ax.grid(False, axis="x")
    ax.set_xlabel("preset")
    ax.set_ylabel("parameters" + (" (log scale)" if log_y else ""))
    ax.set_title(title)
    if log_y:  # one row of entries in the empty top left: small presets come first
        handles, names = ax.get_legend_handles_labels()
        order = sorted(range(len(names)), key=lambda i: names[i] == "total")  # the parts first, as drawn
        ax.legend([handles[i] for i in order], [names[i] for i in order], loc="upper left", ncol=len(parts) + 1)
    else:
        ax.legend(loc="upper left", reverse=True)  # legend order matches the stack, top part first
    return fig


@_styled
def plot_grad_norms(
    norms_by_layer: Mapping[str, Sequence[float]],
    *,
    layer_labels: Sequence[str] | None = None,
    log_y: bool = True,
    title: str = "Gradient norm per layer",
) -> Figure:
    """Gradient norm of each layer, one line per setting (e.g. with and without residuals).

    Without residual connections the gradient must pass through every layer's Jacobian on its
    way back, and it shrinks layer after layer; with them it reaches early layers undiminished.
    The effect spans orders of magnitude, hence the log axis (values ≤ 0 cannot be drawn there).
    """
    if not norms_by_layer:
        raise ValueError("Pass at least one series: {'with residual': [...], 'without residual': [...]}.")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    longest = 0
    for (name, norms), marker in zip(norms_by_layer.items(), "osD^v<>" * len(norms_by_layer)):
        values = _vector(norms, f"The gradient norms of {name!r}")
        ax.plot(np.arange(values.size), values, marker=marker, linewidth=1.8, label=name)
        longest = max(longest, values.size)
    if layer_labels is not None:
        if len(layer_labels) != longest:
            raise ValueError(f"Got {len(layer_labels)} layer labels for {longest} layers.")
        ax.set_xticks(range(longest), layer_labels, rotation=_rotation_for(layer_labels) // 2)
    else:
        ax.set_xticks(range(longest))
    if log_y:
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("layer (0 = nearest the input)")
    ax.set_ylabel("gradient norm (L2)" + (", log scale" if log_y else ""))
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


# --------------------------------------------------------------------------------------------
# Notebook widgets
# --------------------------------------------------------------------------------------------


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab, nbval), where widgets can be shown."""
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _show_in(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows with ``fig`` (in a kernel); outside one, just free the figure.

    ``clear_output(wait=True)`` keeps the old picture until the new one arrives, so redraws do
    not flicker; ``plt.show()`` renders through the inline backend, as in JupyterLab and Colab.
    """
    if _in_kernel():
        with output:
            clear_output(wait=True)
            plt.show()
    plt.close(fig)  # the Figure object stays usable (savefig, inspection); pyplot forgets it


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


class _Explorer(widgets.VBox):
    """Controls above a figure. Where no kernel runs (GitHub, nbviewer, a Colab preview) a widget
    cannot render, so its output also carries a PNG of the figure it first drew: those viewers
    show that picture instead of the widget's text repr, while JupyterLab and Colab's live kernels
    still show the widget."""

    figure: Figure | None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        widget_repr = getattr(super(), "_repr_mimebundle_", None)  # ipywidgets 7 displays another way
        bundle = dict(widget_repr(**kwargs) or {}) if widget_repr is not None else {}
        static = getattr(self, "preview", None) or self.figure  # what a viewer without a kernel shows
        if static is not None:
            buffer = io.BytesIO()
            static.savefig(buffer, format="png", bbox_inches="tight")
            bundle["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return bundle


class SamplingExplorer(_Explorer):
    """Sliders for temperature, top-k and top-p above the plot of :func:`plot_sampling_filters`.

    A widget container: display it (or leave it last in a cell). ``figure`` is the latest
    picture; ``redraw()`` is what the sliders call.
    """

    def __init__(self, logits: Any, labels: Sequence[str] | TokenizerLike, *, k: int = 20,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 previews: Sequence[Mapping[str, Any]] = ()) -> None:
        self.logits = _vector(logits, "logits")
        # Static viewers see one picture, not the sliders: with ``previews`` it shows those settings side by side.
        self.preview = plot_sampling_settings(self.logits, labels, previews, k=k) if previews else None
        if self.preview is not None:
            plt.close(self.preview)
        _check_label_count(labels, self.logits.size, "tokens")
        self.labels = labels
        self.k = k
        self.figure: Figure | None = None
        slider_style = {"description_width": "initial"}
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                               description="temperature", continuous_update=False,
                                               style=slider_style)
        self.top_k = widgets.IntSlider(value=top_k or 0, min=0, max=self.logits.size, step=1,
                                       description="top-k (0 = off)", continuous_update=False,
                                       style=slider_style)
        self.top_p = widgets.FloatSlider(value=1.0 if top_p is None else top_p, min=0.05, max=1.0, step=0.05,
                                         description="top-p (1 = off)", continuous_update=False,
                                         style=slider_style)
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.temperature, self.top_k, self.top_p]), self.output])
        for slider in (self.temperature, self.top_k, self.top_p):
            slider.observe(self.redraw, names="value")
        self.redraw()

    def redraw(self, change: Any = None) -> None:
        """Draw the distributions for the sliders' current values."""
        self.figure = plot_sampling_filters(
            self.logits, self.labels, temperature=self.temperature.value,
            top_k=self.top_k.value or None, top_p=None if self.top_p.value >= 1.0 else self.top_p.value,
            k=self.k)
        _show_in(self.output, self.figure)


def sampling_explorer(logits: Any, labels: Sequence[str] | TokenizerLike, *, k: int = 20,
                      previews: Sequence[Mapping[str, Any]] = ()) -> SamplingExplorer:
    """An interactive version of :func:`plot_sampling_filters` for one position's ``logits`` (V,).

    ``previews`` (settings dicts, see :func:`plot_sampling_settings`) is what a static viewer
    (GitHub, a Colab preview) shows in place of the sliders: those settings side by side.
    """
    return SamplingExplorer(logits, labels, k=k, previews=previews)


class AttentionExplorer(_Explorer):
    """A layer slider and a head menu above :func:`plot_attention` of the chosen layer.

    ``weights_per_layer`` is what ``GPT.attention_maps(idx)`` returns for one sequence: a list
    with one (H, T, T) (or (1, H, T, T)) array per layer.
    """

    def __init__(self, weights_per_layer: Sequence[Any], tokens: Sequence[str]) -> None:
        self.weights = [_attention_array(weights) for weights in weights_per_layer]  # each (H, T, T)
        if not self.weights:
            raise ValueError("weights_per_layer is empty; pass model.attention_maps(idx) (one map per layer).")
        shapes = {weights.shape for weights in self.weights}
        if len(shapes) != 1:
            raise ValueError(f"Every layer must have the same (H, T, T) shape, got {sorted(shapes)}.")
        n_heads, n_tokens = self.weights[0].shape[0], self.weights[0].shape[-1]
        if len(tokens) != n_tokens:
            raise ValueError(f"Got {len(tokens)} tokens for attention over {n_tokens} positions.")
        self.tokens = list(tokens)
        self.figure: Figure | None = None
        self.layer = widgets.IntSlider(value=0, min=0, max=len(self.weights) - 1, description="layer",
                                       continuous_update=False)
        head_options = [("all heads", -1)] + [(f"head {h}", h) for h in range(n_heads)]
        self.head = widgets.Dropdown(options=head_options, value=-1, description="head")
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.layer, self.head]), self.output])
        for control in (self.layer, self.head):
            control.observe(self.redraw, names="value")
        self.redraw()

    def redraw(self, change: Any = None) -> None:
        """Draw the chosen layer (and head)."""
        layer, head = self.layer.value, self.head.value
        self.figure = plot_attention(self.weights[layer], self.tokens, head=None if head < 0 else head,
                                     title=f"Attention weights, layer {layer}")
        _show_in(self.output, self.figure)


def attention_explorer(weights_per_layer: Sequence[Any], tokens: Sequence[str]) -> AttentionExplorer:
    """An interactive :func:`plot_attention` over layers and heads (see :class:`AttentionExplorer`)."""
    return AttentionExplorer(weights_per_layer, tokens)
