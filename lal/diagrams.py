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
* :func:`junction` — a small circle with a symbol (``+`` where the residual stream adds a branch);
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
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.text import Text

from lal.viz import PALETTE

__all__ = [
    "UNIT_INCHES",
    "KIND_COLORS",
    "Box",
    "canvas",
    "box",
    "arrow",
    "junction",
    "shape_label",
    "note",
    "figure_texts",
    "training_step",
    "gpt_forward",
    "qkv_attention",
    "multi_head_attention",
    "transformer_block",
    "sampling_pipeline",
    "kv_cache",
    "mixed_precision_step",
    "data_parallel",
    "chat_template",
    "sft_data_flow",
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
          fontsize: float = 8.5, linewidth: float = 1.3, head: bool = True) -> FancyArrowPatch:
    """An arrow from ``start`` to ``end`` (use a :class:`Box`'s ``top``/``bottom``/``left``/``right``).

    ``curve`` bends it (a positive value bends to the left of the direction of travel); a
    ``label`` is written at its middle, on ``label_side`` ("right", "left", "above", "below").
    ``head=False`` draws a plain line (a wire that an arrow continues).
    """
    patch = FancyArrowPatch(start, end, arrowstyle="-|>" if head else "-", mutation_scale=12, color=color,
                            linewidth=linewidth, linestyle="--" if dashed else "-", zorder=1,
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


def junction(ax: Axes, x: float, y: float, symbol: str = "+", *, radius: float = 0.28,
             kind: str = "op") -> Box:
    """A small circle with ``symbol`` centred on ``(x, y)``: where two flows meet (``+``, ``×``)."""
    fill, edge = KIND_COLORS[kind]
    ax.add_patch(Circle((x, y), radius, facecolor=fill, edgecolor=edge, linewidth=1.4, zorder=2))
    ax.text(x, y, symbol, ha="center", va="center", fontsize=12, fontweight="bold", family=_FONT, zorder=3)
    return Box(x, y, 2 * radius, 2 * radius)


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


def _shapes(sizes: dict[str, int] | None, names: Sequence[str], separator: str = " ") -> str:
    """'(B, T, C)', or '(B, T, C) = (8, 64, 128)' when ``sizes`` gives numbers for the names."""
    symbolic = "(" + ", ".join(names) + ")"
    if not sizes:
        return symbolic
    return symbolic + separator + "= (" + ", ".join(str(sizes[name]) if name in sizes else name for name in names) + ")"


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



def gpt_forward(config: object | None = None, *, batch_size: int = 1, seq_len: int | None = None) -> Figure:
    """The whole GPT as data flow, top to bottom, with the shape of every tensor.

    Token ids look up rows of the token embedding; a position embedding for each place is added;
    ``n_layer`` blocks refine the residual stream; a final LayerNorm and the language-model head
    (the token embedding's own matrix: weight tying) turn each position's vector into one logit per
    vocabulary entry. Pass a :class:`lal.model.GPTConfig` (anything with ``vocab_size``,
    ``block_size``, ``n_layer``, ``n_embd``) to see the numbers next to the letters.
    """
    sizes: dict[str, int] | None = None
    layers = "n_layer"
    if config is not None:
        tokens = seq_len if seq_len is not None else config.block_size  # type: ignore[attr-defined]
        sizes = {"B": batch_size, "T": tokens, "C": config.n_embd, "V": config.vocab_size}  # type: ignore[attr-defined]
        layers = str(config.n_layer)  # type: ignore[attr-defined]
    fig, ax = canvas(12.4, 12.4, "The GPT forward pass")
    centre, side = 5.0, 9.9
    ids = box(ax, centre, 11.4, "token ids", kind="data", width=2.6, sublabel="idx")
    wte = box(ax, centre, 9.7, "token embedding", kind="param", width=3.2, height=0.9, sublabel="wte: nn.Embedding(V, C)")
    positions = box(ax, side, 11.4, "positions", kind="data", width=2.6, sublabel="arange(T)")
    wpe = box(ax, side, 9.7, "position embedding", kind="param", width=4.2, height=0.9,
              sublabel="wpe: nn.Embedding(block_size, C)")
    add = junction(ax, centre, 8.3)
    blocks = box(ax, centre, 6.7, f"transformer block × {layers}", kind="param", width=4.2, height=1.0,
                 sublabel="pre-LN: attention, then MLP")
    ln_f = box(ax, centre, 5.0, "final LayerNorm", kind="param", width=3.2, sublabel="ln_f")
    head = box(ax, centre, 3.4, "language-model head", kind="param", width=3.6, height=0.9, sublabel="lm_head: Linear(C, V)")
    logits = box(ax, centre, 1.7, "logits", kind="data", width=2.6, sublabel="one score per token")
    out = box(ax, side, 1.7, "P(next token)", kind="loss", width=2.9, sublabel="softmax(logits[:, -1])")
    arrow(ax, ids.bottom, wte.top)
    arrow(ax, positions.bottom, wpe.top)
    arrow(ax, wte.bottom, add.top)
    arrow(ax, wpe.bottom, add.right, curve=-0.25)
    arrow(ax, add.bottom, blocks.top)
    arrow(ax, blocks.bottom, ln_f.top)
    arrow(ax, ln_f.bottom, head.top)
    arrow(ax, head.bottom, logits.top)
    arrow(ax, logits.right, out.left, "last position", label_side="above")
    arrow(ax, (wte.x - wte.width / 2, wte.y), (head.x - head.width / 2, head.y), "same matrix\n(weight tying)",
          curve=0.35, dashed=True, color=PALETTE["green"], label_side="left")
    x_shape = _shapes(sizes, ["B", "T", "C"])
    shape_label(ax, centre + 0.15, 10.55, _shapes(sizes, ["B", "T"]))
    shape_label(ax, side + 0.15, 10.55, _shapes(sizes, ["T"]))
    shape_label(ax, centre + 0.15, 8.95, x_shape)
    shape_label(ax, side - 0.2, 8.45, _shapes(sizes, ["T", "C"]) + "\nbroadcast over B", ha="left")
    shape_label(ax, centre + 0.45, 7.7, x_shape)
    shape_label(ax, centre + 0.15, 5.85, x_shape)
    shape_label(ax, centre + 0.15, 4.2, x_shape)
    shape_label(ax, centre + 0.15, 2.5, _shapes(sizes, ["B", "T", "V"]))
    shape_label(ax, side, 0.95, _shapes(sizes, ["B", "V"]), ha="center")
    return fig


def qkv_attention() -> Figure:
    """One causal attention head: queries meet keys, the scores become weights, the weights mix values.

    Each position's vector is projected three ways. Its *query* is dotted with every *key* (scaled by
    1/√d so the softmax does not saturate), positions in the future are masked to −∞, a softmax over
    each row turns the scores into weights that sum to 1, and the output at each position is the
    weighted average of the *values* it may see.
    """
    fig, ax = canvas(18.6, 6.6, "Attention with queries, keys and values (one head)")
    x = box(ax, 1.2, 3.3, "x", kind="data", width=1.8, height=1.0, sublabel="(T, C)")
    query = box(ax, 4.6, 5.3, "query", kind="param", width=2.4, sublabel="Linear(C, d)")
    key = box(ax, 4.6, 3.3, "key", kind="param", width=2.4, sublabel="Linear(C, d)")
    value = box(ax, 4.6, 1.0, "value", kind="param", width=2.4, sublabel="Linear(C, d)")
    scores = box(ax, 8.6, 4.3, "scores", kind="op", width=2.6, height=1.0, sublabel="Q @ Kᵀ / √d")
    mask = box(ax, 12.0, 4.3, "causal mask", kind="op", width=2.6, height=1.0, sublabel="future → −∞")
    softmax = box(ax, 15.4, 4.3, "softmax", kind="op", width=2.6, height=1.0, sublabel="over each row")
    mix = box(ax, 15.4, 1.0, "weighted sum", kind="op", width=2.6, height=1.0, sublabel="weights @ V")
    arrow(ax, x.right, query.left, curve=-0.15)
    arrow(ax, x.right, key.left)
    arrow(ax, x.right, value.left, curve=0.15)
    arrow(ax, query.right, scores.left, curve=-0.1)
    arrow(ax, key.right, scores.left, curve=0.1)
    shape_label(ax, 6.0, 5.75, "Q (T, d)", fontsize=8.5)
    shape_label(ax, 6.0, 2.85, "K (T, d)", fontsize=8.5)
    arrow(ax, scores.right, mask.left, "(T, T)", label_side="above")
    arrow(ax, mask.right, softmax.left, "(T, T)", label_side="above")
    arrow(ax, softmax.bottom, mix.top, "weights (T, T)\nrows sum to 1", label_side="right")
    arrow(ax, value.right, mix.left, "V (T, d)", label_side="above")
    shape_label(ax, 17.0, 0.2, "out (T, d)", ha="center")
    arrow(ax, mix.right, (18.4, 1.0))
    note(ax, 7.2, 2.0, "row t of the weights: how much position t\ntakes from each position ≤ t")
    return fig


def multi_head_attention(n_head: int | None = None, n_embd: int | None = None) -> Figure:
    """Multi-head attention: one projection makes q, k, v; a reshape splits them into heads; the heads
    attend in parallel; a reshape merges them back, and a last projection mixes the heads.

    The split costs nothing: ``view`` and ``transpose`` only change how the same numbers are
    indexed. Pass ``n_head`` and ``n_embd`` to see the head size ``d = C / h`` as numbers.
    """
    sizes = None
    if n_head is not None and n_embd is not None:
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}).")
        sizes = {"h": n_head, "C": n_embd, "d": n_embd // n_head, "3C": 3 * n_embd}
    fig, ax = canvas(19.6, 4.4, "Multi-head attention: split, attend in parallel, merge")
    row = 2.9
    x = box(ax, 1.1, row, "x", kind="data", width=1.8, height=1.0, sublabel="(B, T, C)")
    c_attn = box(ax, 4.4, row, "q, k, v", kind="param", width=2.3, height=1.0, sublabel="Linear(C, 3C)")
    split = box(ax, 7.9, row, "split heads", kind="op", width=2.5, height=1.0, sublabel="view, transpose")
    for offset in (0.36, 0.18):  # the heads behind the front one
        ax.add_patch(FancyBboxPatch((11.45 - 1.3 + offset, row - 0.55 + offset), 2.6, 1.1,
                                    boxstyle="round,pad=0,rounding_size=0.12", facecolor=KIND_COLORS["op"][0],
                                    edgecolor=KIND_COLORS["op"][1], linewidth=1.0, zorder=1.5))
    heads = box(ax, 11.45, row, "h heads", kind="op", width=2.6, height=1.1, sublabel="attention each")
    merge = box(ax, 15.0, row, "merge heads", kind="op", width=2.5, height=1.0, sublabel="transpose, view")
    c_proj = box(ax, 18.3, row, "output", kind="param", width=2.2, height=1.0, sublabel="Linear(C, C)")
    arrow(ax, x.right, c_attn.left)
    for left, right in [(c_attn, split), (split, heads), (heads, merge), (merge, c_proj)]:
        arrow(ax, left.right, right.left)
    outputs = [(c_attn, ["B", "T", "3C"]), (split, ["B", "h", "T", "d"]), (heads, ["B", "h", "T", "d"]),
               (merge, ["B", "T", "C"]), (c_proj, ["B", "T", "C"])]
    for piece, names in outputs:  # the shape each box hands on, written under it
        shape_label(ax, piece.x, row - 1.0, _shapes(sizes, names, separator="\n"), ha="center", fontsize=8)
    head_size = "C = h × d" if sizes is None else f"C = h × d = {sizes['h']} × {sizes['d']}"
    note(ax, 0.3, 0.45, f"{head_size}: each head attends with its own d-dimensional slice of q, k and v,\n"
         "so it can look for something different (the previous token, a matching bracket, …)")
    return fig


def transformer_block(pre_ln: bool = True) -> Figure:
    """A transformer block on the residual stream: two branches that read the stream and add to it.

    Pre-LN (GPT-2, this course): each branch normalises its own input, and the stream itself is
    only ever added to, so the identity path from the first layer to the last is never rescaled.
    Post-LN (the original 2017 transformer): the LayerNorm sits on the stream after each addition,
    so every layer rescales everything that flows through it, gradients included.
    """
    title = "Pre-LN block (GPT-2, this course)" if pre_ln else "Post-LN block (the 2017 transformer)"
    width = 18.4 if pre_ln else 21.6
    fig, ax = canvas(width, 5.6, title)
    stream_y, branch_y = 1.4, 3.9
    grey = KIND_COLORS["residual"][1]
    shape_label(ax, 0.2, stream_y + 0.45, "x  (B, T, C)")
    stations: list[Box] = []  # what sits on the stream, left to right: each + (and, post-LN, each norm)
    branches = [("attention", "causal, h heads"), ("MLP", "C → 4C, GELU, → C")]
    for number, (name, sublabel) in enumerate(branches, start=1):
        tap = 2.4 + (number - 1) * (7.8 if pre_ln else 8.8)  # where the branch reads the stream
        add = junction(ax, tap + 6.2, stream_y)
        if pre_ln:
            norm = box(ax, tap + 1.5, branch_y, f"ln_{number}", kind="param", width=1.9, sublabel="LayerNorm")
            layer = box(ax, tap + 4.3, branch_y, name, kind="param", width=2.6, sublabel=sublabel)
            arrow(ax, (tap, stream_y), norm.bottom, curve=-0.25)
            arrow(ax, norm.right, layer.left)
        else:
            layer = box(ax, tap + 3.4, branch_y, name, kind="param", width=2.6, sublabel=sublabel)
            arrow(ax, (tap, stream_y), layer.left, curve=-0.3)
        arrow(ax, layer.right, add.top, curve=-0.3)
        stations.append(add)
        if not pre_ln:
            stations.append(box(ax, add.x + 1.4, stream_y, f"ln_{number}", kind="param", width=1.6,
                                sublabel="LayerNorm"))
    position = 0.2
    for station in stations:
        arrow(ax, (position, stream_y), station.left, color=grey, linewidth=2.4)
        position = station.right[0]
    arrow(ax, (position, stream_y), (width - 0.2, stream_y), color=grey, linewidth=2.4)
    shape_label(ax, width - 0.2, stream_y + 0.45, "(B, T, C)", ha="right")
    note(ax, 0.2, 0.45, "the residual stream: each branch reads it and adds its result"
         + ("; nothing on the stream rescales it" if pre_ln else "; LayerNorm rescales the stream itself"))
    return fig


def sampling_pipeline() -> Figure:
    """From the model's logits to the next token: temperature, top-k, top-p, softmax, one draw.

    This is the order :func:`lal.sample.next_token_distribution` applies. Every filter works on
    logits and removes a token by setting its logit to −∞, so the softmax at the end gives it
    probability exactly 0 and renormalises what is left. Temperature 0 skips the whole chain: greedy
    decoding takes the argmax. The drawn token is appended to the context and the model runs again.
    """
    fig, ax = canvas(20.0, 6.2, "Sampling: from logits to the next token")
    row = 3.6
    size = dict(width=2.5, height=1.1)
    model = box(ax, 1.45, row, "model", kind="param", sublabel="last position", **size)
    temperature = box(ax, 4.75, row, "÷ temperature", kind="op", sublabel="logits / T", **size)
    top_k = box(ax, 8.05, row, "top-k", kind="op", sublabel="keep k largest", **size)
    top_p = box(ax, 11.35, row, "top-p", kind="op", sublabel="keep the nucleus", **size)
    softmax = box(ax, 14.65, row, "softmax", kind="op", sublabel="−∞ → p = 0", **size)
    draw = box(ax, 17.95, row, "draw", kind="data", sublabel="multinomial(seed)", **size)
    greedy = box(ax, 11.35, 1.2, "greedy (T = 0)", kind="op", width=3.0, height=1.1, sublabel="argmax(logits)")
    arrow(ax, model.right, temperature.left, "logits", label_side="above")
    for left, right in [(temperature, top_k), (top_k, top_p), (top_p, softmax)]:
        arrow(ax, left.right, right.left)
    arrow(ax, softmax.right, draw.left, "probs", label_side="above")
    arrow(ax, (model.x, model.y - model.height / 2), greedy.left, curve=0.25, dashed=True)
    arrow(ax, greedy.right, (draw.x, draw.y - draw.height / 2), curve=0.25, dashed=True)
    arrow(ax, draw.top, model.top, "append the token to the context, run the model again", curve=0.12,
          label_side="above")
    for piece in (temperature, top_k, top_p):
        shape_label(ax, piece.x, row - 0.9, "(V,)", ha="center", fontsize=8)
    shape_label(ax, softmax.x, row - 0.9, "(V,) sums to 1", ha="center", fontsize=8)
    shape_label(ax, draw.x + 0.5, row - 0.9, "one id", ha="left", fontsize=8)
    note(ax, 0.3, 0.35, "filters set logits to −∞; T < 1 sharpens, T > 1 flattens; the seed fixes the draw")
    return fig


def kv_cache(block_size: int = 12, cached: int = 7) -> Figure:
    """One generation step with a key/value cache, for one attention layer.

    Without a cache, every step runs the model on the whole window: ``T`` positions to get one new
    row of logits. With one, the keys and values of earlier positions are kept; the new token alone
    goes through the layer, its key and value are written into the next free slot, and its query
    attends over every filled slot. The cache has ``block_size`` slots because the position
    embedding has no more rows: once it is full, the window slides and every position changes.
    """
    if not 0 < cached < block_size:
        raise ValueError(f"cached must be between 1 and block_size - 1, got {cached} of {block_size}.")
    fig, ax = canvas(20.0, 7.4, "The KV cache: one new token per step, the past read from memory")
    token = box(ax, 1.3, 5.6, "new token", kind="data", width=2.2, height=1.1, sublabel=f"position {cached}")
    layer = box(ax, 4.9, 5.6, "q, k, v", kind="param", width=2.4, height=1.1, sublabel="Linear(C, 3C)")
    arrow(ax, token.right, layer.left, "(B, 1, C)", label_side="above")
    slot, left = 0.78, 8.0
    for name, y in (("keys", 5.9), ("values", 4.5)):
        ax.text(left - 0.2, y, name, ha="right", va="center", fontsize=9, fontweight="bold")
        for position in range(block_size):
            kind = "data" if position < cached else ("param" if position == cached else "residual")
            fill, edge = KIND_COLORS[kind]
            ax.add_patch(FancyBboxPatch((left + position * slot, y - 0.3), slot - 0.1, 0.6,
                                        boxstyle="round,pad=0,rounding_size=0.06", facecolor=fill if
                                        position <= cached else "white", edgecolor=edge, linewidth=1.0, zorder=2))
            if name == "keys":
                ax.text(left + position * slot + (slot - 0.1) / 2, 6.5, str(position), ha="center",
                        va="center", fontsize=7, color=SHAPE_COLOR)
    new_slot = left + cached * slot + (slot - 0.1) / 2
    arrow(ax, layer.right, (new_slot, 6.2), "k, v of the new token", curve=-0.3, label_side="above")
    end = left + block_size * slot
    note(ax, left, 3.75, f"cached: positions 0…{cached - 1}, computed once", fontsize=8.5)
    note(ax, end, 3.75, f"free until block_size = {block_size}", ha="right", fontsize=8.5)
    attend = box(ax, 10.0, 1.8, "attention", kind="op", width=3.4, height=1.1, sublabel="q @ Kᵀ over 0…t")
    arrow(ax, (layer.x, layer.y - layer.height / 2), attend.left, "q (B, h, 1, d)", curve=0.25, label_side="left")
    arrow(ax, (left + cached * slot / 2, 4.2), attend.top, "K, V (B, h, t+1, d)", label_side="right")
    out = box(ax, 14.6, 1.8, "next layers", kind="param", width=2.8, height=1.1, sublabel="one position")
    logits = box(ax, 18.3, 1.8, "logits", kind="data", width=2.4, height=1.1, sublabel="(B, 1, V)")
    arrow(ax, attend.right, out.left)
    arrow(ax, out.right, logits.left)
    note(ax, 0.3, 0.45, "per step: the work of one position instead of t + 1; when the window slides past "
         "block_size, every position moves and the cache must be rebuilt")
    return fig


def mixed_precision_step() -> Figure:
    """One mixed-precision training step: float32 weights, low-precision matmuls, float32 update.

    Autocast runs the matmuls of the forward and backward passes in bf16 (or fp16), where a GPU
    computes several times faster, while the weights, their gradients and AdamW's state stay in
    float32, so the many tiny updates of a long run are not rounded away. bf16 has float32's range,
    so nothing else changes. fp16 (the T4 and V100, which have no bf16) has a narrow range: small
    gradients would underflow to zero in the backward pass, so the loss is multiplied by a scale
    *before* ``backward()`` (every gradient is then that many times larger while it is computed),
    the gradients are divided by it before clipping, and a step whose gradients overflowed is skipped.
    The step is drawn in that order: forward, loss, scale, backward, unscale, AdamW.
    """
    fig, ax = canvas(19.2, 6.4, "A mixed-precision training step")
    top, bottom = 4.5, 1.9
    weights = box(ax, 1.6, top, "weights", kind="param", sublabel="float32", width=2.7, height=1.1)
    cast = box(ax, 5.0, top, "autocast", kind="op", sublabel="bf16 copies", width=2.7, height=1.1)
    forward = box(ax, 8.6, top, "forward", kind="data", sublabel="matmuls in bf16", width=3.2, height=1.1)
    loss = box(ax, 12.2, top, "loss", kind="loss", sublabel="float32", width=2.6, height=1.1)
    scale = box(ax, 16.0, top, "loss × scale", kind="loss", sublabel="scaler.scale(loss)", width=3.4, height=1.1)
    backward = box(ax, 16.0, bottom, "backward", kind="data", sublabel="matmuls in bf16", width=3.4, height=1.1)
    grads = box(ax, 12.2, bottom, "gradients", kind="optim", sublabel="float32, one per weight", width=3.4,
                height=1.1)
    unscale = box(ax, 8.6, bottom, "÷ scale, check", kind="optim", sublabel="scaler.unscale_(opt)", width=3.2,
                  height=1.1)
    step = box(ax, 3.6, bottom, "AdamW step", kind="optim", sublabel="float32 state m, v", width=3.0, height=1.1)
    arrow(ax, weights.right, cast.left)
    arrow(ax, cast.right, forward.left)
    arrow(ax, forward.right, loss.left)
    arrow(ax, loss.right, scale.left, dashed=True)
    arrow(ax, scale.bottom, backward.top, "fp16 only: scaled before backward()", label_side="left", dashed=True)
    arrow(ax, backward.left, grads.right)
    arrow(ax, grads.left, unscale.right, dashed=True)
    arrow(ax, unscale.left, step.right, "skip if inf / NaN", label_side="above", dashed=True)
    arrow(ax, step.top, weights.bottom, "updated in float32: small steps are not rounded away", label_side="right")
    note(ax, 0.3, 0.55, "dashed: fp16 only (T4, V100), where tiny gradients would underflow to 0 in backward().\n"
         "bf16 (A100, H100, L4, RTX 30+) has float32's range: the scaler is off and the step goes straight on.")
    return fig


def data_parallel(n_ranks: int = 3) -> Figure:
    """Data-parallel training (PyTorch's DistributedDataParallel) on ``n_ranks`` processes.

    Every process ("rank", one per GPU) holds a full copy of the model and draws its own windows,
    so one step sees ``n_ranks`` times the batch. After ``backward()`` the gradients are averaged
    across ranks (an all-reduce, overlapped with the backward pass), so every rank takes the same
    AdamW step and the copies stay identical; only rank 0 writes metrics and checkpoints.
    """
    if n_ranks < 2:
        raise ValueError(f"Data parallelism needs at least 2 ranks to draw, got {n_ranks}.")
    row_gap = 1.7
    height = 1.6 + n_ranks * row_gap
    fig, ax = canvas(18.6, height, f"Data-parallel training on {n_ranks} GPUs")
    size = dict(width=2.8, height=1.05)
    rows = [height - 0.9 - rank * row_gap for rank in range(n_ranks)]
    middle = (rows[0] + rows[-1]) / 2
    reduce = box(ax, 12.1, middle, "all-reduce", kind="op", sublabel="mean of gradients", width=2.8,
                 height=rows[0] - rows[-1] + 1.05)
    for rank, y in enumerate(rows):
        windows = box(ax, 1.6, y, f"rank {rank}: windows", kind="data", sublabel="its own random draw", **size)
        model = box(ax, 5.1, y, "model copy", kind="param", sublabel="same weights", **size)
        grads = box(ax, 8.6, y, "gradients", kind="optim", sublabel="of its batch", **size)
        step = box(ax, 15.9, y, "AdamW step", kind="optim", sublabel="identical", **size)
        arrow(ax, windows.right, model.left)
        arrow(ax, model.right, grads.left)
        arrow(ax, grads.right, (reduce.left[0], y))
        arrow(ax, (reduce.right[0], y), step.left)
    note(ax, 0.3, 0.45, f"one step sees {n_ranks} × batch × accumulation windows; "
         "only rank 0 writes metrics.jsonl and checkpoints")
    return fig


def chat_template(prompt: str = "Reverse: love", response: str = "evol") -> Figure:
    """One exchange as the model reads it, one character per cell, and what each position learns.

    Top row: the input ids, ``<|user|>{prompt}<|end|><|assistant|>{response}<|end|>``. Bottom row:
    each position's target, the *next* token, but ``-100`` (ignored by the loss) wherever that
    next token is not the assistant's to say. Only the answer and its closing ``<|end|>`` are
    trained, so the model learns to answer and to stop, never to imitate the user.
    """
    tokens = ["<|user|>", *prompt, "<|end|>", "<|assistant|>", *response, "<|end|>"]
    first_answer = len(prompt) + 3  # index of the first answer token in ``tokens``
    cell, special = 0.62, 1.7
    widths = [special if token.startswith("<|") else cell for token in tokens]
    width = sum(widths) + 2.8
    fig, ax = canvas(width, 4.6, "The chat template: what the model reads, and what the loss trains")
    input_y, target_y, x = 3.2, 1.5, 2.6
    ax.text(0.2, input_y, "input", fontsize=10, fontweight="bold", va="center", family=_FONT)
    ax.text(0.2, target_y, "target", fontsize=10, fontweight="bold", va="center", family=_FONT)
    for index, (token, cell_width) in enumerate(zip(tokens, widths)):
        centre = x + cell_width / 2
        role = "op" if token.startswith("<|") else "data"
        box(ax, centre, input_y, "␣" if token == " " else token, kind=role, width=cell_width - 0.06,
            height=0.7, fontsize=8.5)
        if index + 1 < len(tokens):
            trained = index + 1 >= first_answer
            following = tokens[index + 1]
            label = ("␣" if following == " " else following) if trained else "-100"
            small = not trained or len(label) > 1  # "-100" and "<|end|>" in a one-character cell
            box(ax, centre, target_y, label, kind="loss" if trained else "residual", width=cell_width - 0.06,
                height=0.7, fontsize=5.5 if small and cell_width == cell else 7.0 if small else 8.5)
            if trained or index == first_answer - 2:
                next_centre = centre + cell_width / 2 + widths[index + 1] / 2
                arrow(ax, (next_centre, input_y - 0.36), (centre, target_y + 0.36), linewidth=0.9)
        x += cell_width
    note(ax, 2.6, 0.55, "grey: ignored by the loss (ignore_index = -100).  red: trained, the next token of "
         "the answer, up to and including <|end|>, so the model learns to stop.")
    return fig


def sft_data_flow() -> Figure:
    """Supervised fine-tuning end to end: which data goes where, and how the result is scored.

    The instruction set is generated from the pretraining text's words, split by *word* so that
    held-out prompts use words fine-tuning never saw. Training batches are template-encoded,
    masked and padded; a share of the steps replays pretraining windows (mixing, against
    forgetting). The fine-tuned model answers the held-out prompts greedily and a program scores
    the answers by exact match.
    """
    fig, ax = canvas(19.0, 7.4, "Supervised fine-tuning: data flow")
    size = dict(width=3.2, height=1.05)
    text = box(ax, 2.0, 6.0, "pretraining text", kind="data", sublabel="TinyShakespeare", **size)
    base = box(ax, 6.2, 6.0, "pretrained GPT", kind="param", sublabel="chapter 5", **size)
    words = box(ax, 2.0, 3.8, "its words", kind="data", sublabel="crc32(word) % 5", **size)
    train_set = box(ax, 6.2, 4.4, "train instructions", kind="data", sublabel="train words only", **size)
    heldout = box(ax, 6.2, 1.4, "held-out instructions", kind="data", sublabel="held-out + made-up words", **size)
    batches = box(ax, 10.4, 4.4, "SFT batches", kind="op", sublabel="template, mask, pad", **size)
    windows = box(ax, 10.4, 6.75, "pretraining windows", kind="data", sublabel="a share r of steps", **size)
    finetune = box(ax, 14.4, 5.2, "fine-tune", kind="optim", sublabel="AdamW, loss on answers", **size)
    chat = box(ax, 14.4, 3.0, "chat model", kind="param", sublabel="last.pt", **size)
    score = box(ax, 14.4, 1.0, "score", kind="loss", sublabel="greedy, exact match", **size)
    arrow(ax, text.right, base.left, "pretraining", label_side="above")
    arrow(ax, text.bottom, words.top)
    arrow(ax, words.right, train_set.left, "4 of 5 words", label_side="above")
    arrow(ax, words.right, heldout.left, "1 of 5 words", label_side="below")
    arrow(ax, train_set.right, batches.left)
    arrow(ax, base.right, finetune.left, "weights", label_side="below")
    arrow(ax, text.top, windows.left, curve=-0.2)
    arrow(ax, batches.right, finetune.left, "1 - r", label_side="below")
    arrow(ax, windows.right, finetune.left, "r", label_side="above")
    arrow(ax, finetune.bottom, chat.top)
    arrow(ax, chat.bottom, score.top)
    arrow(ax, heldout.right, score.left, "prompts never trained on", label_side="below")
    note(ax, 16.2, 5.2, "validation loss on\npretraining text:\nforgetting", fontsize=8.5)
    return fig
