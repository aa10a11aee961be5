"""Next-token distributions and the sampling filters (temperature, top-k, top-p) step by step,
with an explorer whose sliders move them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lal.sample import next_token_distribution
from lal.viz.inputs import TokenizerLike, _check_label_count, _is_tokenizer, _labels_for, _rotation_for, _tick_label, _vector, visible_token
from lal.viz.notebook import _Explorer, _show_in
from lal.viz.theme import BAR_COLOR, HIGHLIGHT_COLOR, _styled


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


class SamplingExplorer(_Explorer):
    """Sliders for temperature, top-k and top-p above the plot of :func:`plot_sampling_filters`.

    A widget container: display it (or leave it last in a cell). ``figure`` is the latest
    picture; ``redraw()`` is what the sliders call.
    """

    def __init__(self, logits: Any, labels: Sequence[str] | TokenizerLike, *, k: int = 20,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
        self.logits = _vector(logits, "logits")
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


def sampling_explorer(logits: Any, labels: Sequence[str] | TokenizerLike, *, k: int = 20) -> SamplingExplorer:
    """An interactive version of :func:`plot_sampling_filters` for one position's ``logits`` (V,)."""
    return SamplingExplorer(logits, labels, k=k)
