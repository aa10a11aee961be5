"""Model anatomy: parameters per preset and part, and the gradient norm of each layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lal.viz.inputs import _human_count, _rotation_for, _vector
from lal.viz.theme import _CYCLE, _styled


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
