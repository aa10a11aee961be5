"""Heatmaps of token pairs: attention weights (one map per head, and an explorer over layers and
heads) and bigram counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lal.viz.inputs import _check_label_count, _rotation_for, _tick_label, _to_numpy, visible_token
from lal.viz.notebook import _Explorer, _show_in
from lal.viz.theme import EMPTY_CELL_COLOR, HEATMAP_CMAP, _styled


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
