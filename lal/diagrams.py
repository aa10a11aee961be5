"""Drawn diagrams of the mechanisms: boxes, arrows and tensor shapes, drawn by code.

A plot shows data; a diagram shows how the pieces connect (what flows where, with which shape).
The chapters draw each mechanism with one function of this module. Each returns the matplotlib
``Figure``, so the picture lands in the notebook's stored outputs as a PNG: it renders offline in
JupyterLab, on GitHub and in Colab, with no image file beside the notebook.

The toolkit is small on purpose, so that every diagram of the course looks the same:

* :func:`canvas` — an empty drawing area measured in *units* (1 unit = :data:`UNIT_INCHES`), with
  the origin at the bottom left and no axes;
* :func:`box` — a rounded box with a label (and an optional second, smaller line), coloured by
  what it holds (:data:`KIND_COLORS`: data, operation, parameters, loss, optimiser, residual);
* :func:`arrow` — an arrow between two points or two boxes' edges, with an optional label;
* :func:`shape_label` — a tensor shape like ``(B, T, C)`` in monospace, the course's shape comments
  drawn next to the thing they describe;
* :func:`note` — a line of plain explanatory text;
* :func:`figure_texts` — every string drawn on a figure (what the tests read).

To add a diagram: write a function that calls :func:`canvas`, places boxes on a grid of units,
joins them with arrows, labels the shapes, and returns the figure (see :func:`training_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.text import Text

from lal.viz import PALETTE

__all__ = [
    "UNIT_INCHES",
    "KIND_COLORS",
    "Box",
    "canvas",
    "box",
    "arrow",
    "shape_label",
    "note",
    "figure_texts",
    "training_step",
]

#: Size of one drawing unit in inches: a 15 × 5 unit diagram is a 9 × 3 inch figure.
UNIT_INCHES = 0.6

#: Fill and edge colour per kind of box. Pale fills from Okabe & Ito's palette (the course's
#: colour-blind-safe palette, :data:`lal.viz.PALETTE`), with the full colour as the edge.
KIND_COLORS: dict[str, tuple[str, str]] = {
    "data": ("#dcebf7", PALETTE["blue"]),  # tensors that flow: token ids, activations, logits
    "op": ("#fbe9cc", PALETTE["orange"]),  # computations without weights: softmax, +, split
    "param": ("#d4f0e6", PALETTE["green"]),  # layers with learned weights: embeddings, linear
    "loss": ("#f8dccb", PALETTE["vermillion"]),  # the number training lowers
    "optim": ("#f3dcea", PALETTE["purple"]),  # what changes the weights: gradients, optimiser
    "residual": ("#eeeeee", "#555555"),  # the residual stream and other plumbing
}

SHAPE_COLOR = "#333333"
ARROW_COLOR = "#444444"
_FONT = "DejaVu Sans"
_MONO = "DejaVu Sans Mono"


@dataclass(frozen=True)
class Box:
    """Where a box sits (centre ``x, y``; size ``width × height``, in units): arrows attach to it."""

    x: float
    y: float
    width: float
    height: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.width / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.width / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.height / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.height / 2)


Point = tuple[float, float]


def canvas(width: float, height: float, title: str | None = None) -> tuple[Figure, Axes]:
    """An empty diagram ``width × height`` units, origin bottom left, no axes, equal aspect.

    The figure is made with :func:`matplotlib.pyplot.figure`, so in a notebook it is shown (and
    stored) at the end of the cell like any plot.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"A diagram needs a positive size, got {width} × {height} units.")
    title_room = 0.5 if title else 0.0
    fig = plt.figure(figsize=(width * UNIT_INCHES, (height + title_room) * UNIT_INCHES),
                     facecolor="white", layout=None)
    ax = fig.add_axes((0, 0, 1, height / (height + title_room)))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        fig.suptitle(title, y=1 - 0.12 * title_room / (height + title_room), fontsize=12,
                     fontweight="bold", family=_FONT)
    return fig, ax


def box(ax: Axes, x: float, y: float, label: str, *, kind: str = "op", width: float = 2.0,
        height: float = 0.8, sublabel: str | None = None, fontsize: float = 10.0) -> Box:
    """A rounded box centred on ``(x, y)`` with ``label`` (bold) and an optional ``sublabel``.

    ``kind`` picks the colour from :data:`KIND_COLORS`, so a reader learns once that green means
    learned weights and blue means a tensor. The sublabel is where code goes (``nn.Linear(C, 3C)``).
    """
    if kind not in KIND_COLORS:
        raise ValueError(f"Unknown box kind {kind!r}; use one of {', '.join(KIND_COLORS)}.")
    fill, edge = KIND_COLORS[kind]
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0,rounding_size=0.12", facecolor=fill,
                                edgecolor=edge, linewidth=1.4, zorder=2))
    if sublabel:
        ax.text(x, y + height * 0.16, label, ha="center", va="center", fontsize=fontsize,
                fontweight="bold", family=_FONT, zorder=3)
        ax.text(x, y - height * 0.22, sublabel, ha="center", va="center", fontsize=fontsize * 0.8,
                family=_MONO, color=SHAPE_COLOR, zorder=3)
    else:
        ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, fontweight="bold",
                family=_FONT, zorder=3)
    return Box(x, y, width, height)


def arrow(ax: Axes, start: Point, end: Point, label: str | None = None, *, color: str = ARROW_COLOR,
          curve: float = 0.0, dashed: bool = False, label_side: str = "right",
          fontsize: float = 8.5) -> FancyArrowPatch:
    """An arrow from ``start`` to ``end`` (use a :class:`Box`'s ``top``/``bottom``/``left``/``right``).

    ``curve`` bends it (a positive value bends to the left of the direction of travel); a
    ``label`` is written at its middle, on ``label_side`` ("right", "left", "above", "below").
    """
    patch = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color,
                            linewidth=1.3, linestyle="--" if dashed else "-", zorder=1,
                            connectionstyle=f"arc3,rad={curve}", shrinkA=1, shrinkB=1)
    ax.add_patch(patch)
    if label:
        # The label sits at the middle of the drawn path: for an arc3 curve that is the midpoint
        # of the chord moved by curve/2 times the chord turned a quarter turn clockwise.
        dx, dy = end[0] - start[0], end[1] - start[1]
        mid_x = (start[0] + end[0]) / 2 + curve / 2 * dy
        mid_y = (start[1] + end[1]) / 2 - curve / 2 * dx
        offsets = {"right": (0.12, 0, "left", "center"), "left": (-0.12, 0, "right", "center"),
                   "above": (0, 0.1, "center", "bottom"), "below": (0, -0.1, "center", "top")}
        if label_side not in offsets:
            raise ValueError(f"label_side must be one of {', '.join(offsets)}, got {label_side!r}.")
        off_x, off_y, ha, va = offsets[label_side]
        ax.text(mid_x + off_x, mid_y + off_y, label, ha=ha, va=va, fontsize=fontsize, family=_FONT,
                color=color, zorder=3)
    return patch


def shape_label(ax: Axes, x: float, y: float, shape: str, *, ha: str = "left",
                fontsize: float = 9.0) -> Text:
    """A tensor shape such as ``(B, T, C)`` drawn in monospace at ``(x, y)``."""
    return ax.text(x, y, shape, ha=ha, va="center", fontsize=fontsize, family=_MONO,
                   color=SHAPE_COLOR, zorder=3)


def note(ax: Axes, x: float, y: float, text: str, *, ha: str = "left", fontsize: float = 9.0,
         color: str = "#333333") -> Text:
    """A line (or lines) of plain explanation at ``(x, y)``, in italics so it reads as a comment."""
    return ax.text(x, y, text, ha=ha, va="center", fontsize=fontsize, family=_FONT, style="italic",
                   color=color, zorder=3)


def figure_texts(fig: Figure) -> list[str]:
    """Every string drawn on ``fig`` (box labels, shapes, notes, the title), in drawing order."""
    texts = [fig.get_suptitle()] if fig.get_suptitle() else []
    for ax in fig.axes:
        texts += [text.get_text() for text in ax.texts if text.get_text()]
    return texts


def _shapes(sizes: dict[str, int] | None, names: Sequence[str]) -> str:
    """'(B, T, C)', or '(B, T, C) = (8, 64, 128)' when ``sizes`` gives numbers for the names."""
    symbolic = "(" + ", ".join(names) + ")"
    if not sizes:
        return symbolic
    return symbolic + " = (" + ", ".join(str(sizes[name]) if name in sizes else name for name in names) + ")"


# --------------------------------------------------------------------------------------------
# The diagrams
# --------------------------------------------------------------------------------------------


def training_step() -> Figure:
    """One optimiser step, as :class:`lal.train.Trainer` takes it: the loop every chapter runs.

    A batch of windows goes forward through the model to logits, the cross-entropy against the
    shifted targets is the loss, ``backward()`` fills every parameter's gradient, clipping caps the
    gradient's total norm, and AdamW moves the weights with the learning rate the schedule gives
    for this step (warmup, then cosine decay). Then the gradients are cleared and the next batch
    comes.
    """
    fig, ax = canvas(18.8, 5.0, "One training step")
    row = 2.9
    size = dict(width=2.1, height=1.0)
    batch = box(ax, 1.15, row, "batch", kind="data", sublabel="x, y  (B, T)", **size)
    forward = box(ax, 4.45, row, "forward", kind="param", sublabel="model(x)", **size)
    loss = box(ax, 7.75, row, "loss", kind="loss", sublabel="cross_entropy", **size)
    backward = box(ax, 11.05, row, "backward", kind="optim", sublabel="loss.backward()", **size)
    clip = box(ax, 14.35, row, "clip", kind="optim", sublabel="‖g‖ ≤ grad_clip", **size)
    step = box(ax, 17.65, row, "AdamW step", kind="optim", sublabel="opt.step()", **size)
    schedule = box(ax, 17.65, 0.75, "schedule", kind="op", sublabel="lr_at(step)", **size)
    arrow(ax, batch.right, forward.left)
    arrow(ax, forward.right, loss.left, "logits", label_side="above")
    arrow(ax, loss.right, backward.left, "scalar", label_side="above")
    arrow(ax, backward.right, clip.left, "grads", label_side="above")
    arrow(ax, clip.right, step.left, "clipped", label_side="above")
    arrow(ax, schedule.top, step.bottom, "lr", label_side="left")
    arrow(ax, step.top, batch.top, "zero_grad(), next batch", curve=0.14, dashed=True, label_side="above")
    shape_label(ax, 6.1, row - 0.12, "(B, T, V)", ha="center", fontsize=7.5).set_va("top")
    shape_label(ax, 9.4, row - 0.12, "()", ha="center", fontsize=7.5).set_va("top")
    shape_label(ax, 12.7, row - 0.12, "one per\nweight", ha="center", fontsize=7.5).set_va("top")
    note(ax, 16.3, 0.75, "warmup, then cosine decay:\nthe rate for this step", ha="right", fontsize=8.5)
    return fig

