"""Embeddings in two dimensions: PCA of an embedding table, character classes to colour it by,
and the labelled scatter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lal.viz.inputs import _check_label_count, _tick_label, _to_numpy
from lal.viz.theme import PALETTE, TRAIN_COLOR, _styled


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
