"""The pictures: what each plotting function draws, checked through the artists it returns."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from lal import viz
from lal.sample import next_token_distribution
from lal.tokenizers import CharTokenizer


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _heatmap_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_plot_loss_draws_both_curves_and_marks_the_best() -> None:
    history = {"step": [0, 10, 20, 30], "train_loss": [None, 3.0, 2.5, 2.2], "val_loss": [4.1, 3.1, 2.4, 2.6]}
    fig = viz.plot_loss(history, reference={"ln(V)": math.log(65)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    val = next(line for label, line in lines.items() if label.startswith("val"))
    assert list(val.get_ydata()) == [4.1, 3.1, 2.4, 2.6]
    train = next(line for label, line in lines.items() if label.startswith("train"))
    assert list(train.get_xdata()) == [10, 20, 30]  # the step-0 row has no training loss
    best = [c for c in ax.collections if c.get_label().startswith("best val")]
    assert best and best[0].get_offsets().tolist() == [[20, 2.4]]
    assert best[0].get_label().startswith("best val 2.400")
    assert any(np.allclose(line.get_ydata(), math.log(65)) for line in ax.get_lines())
    assert ax.get_xlabel() and ax.get_ylabel()


def test_history_columns_reads_metrics_rows() -> None:
    rows = [{"step": 0, "val_loss": 4.0}, {"step": 5, "train_loss": 3.0, "val_loss": 3.5}]
    columns = viz.history_columns(rows)
    assert list(columns["step"]) == [0, 5]
    assert np.isnan(columns["train_loss"][0]) and columns["train_loss"][1] == 3.0


def test_plot_lr_schedule_plots_the_callable() -> None:
    fig = viz.plot_lr_schedule(lambda step: 0.1 * (step + 1), max_steps=5)
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_plot_attention_single_head_labels_and_causal_blank() -> None:
    weights = torch.tril(torch.ones(4, 4))
    weights = weights / weights.sum(-1, keepdim=True)
    fig = viz.plot_attention(weights, ["a", " ", "\n", "b"])
    ax = _heatmap_axes(fig)[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["a", "␣", "⏎", "b"]
    shown = ax.images[0].get_array()
    assert np.ma.is_masked(shown) and shown.mask[0, 3] and not shown.mask[3, 0]  # the future is blank
    assert shown[3, 0] == pytest.approx(0.25)


def test_plot_attention_grid_has_one_heatmap_per_head() -> None:
    weights = torch.softmax(torch.randn(6, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert len(_heatmap_axes(viz.plot_attention(weights, list("abcde")))) == 6
    assert len(_heatmap_axes(viz.plot_attention(weights, list("abcde"), head=2))) == 1
    with pytest.raises(ValueError):
        viz.plot_attention(weights, list("abc"))


def test_plot_bigram_counts_labels_all_65_characters() -> None:
    labels = [chr(ord("!") + i) for i in range(65)]
    fig = viz.plot_bigram_counts(np.arange(65 * 65).reshape(65, 65), labels)
    ax = _heatmap_axes(fig)[0]
    # every label shown; "$" is escaped so matplotlib does not read it as mathtext
    assert [t.get_text().replace("\\$", "$") for t in ax.get_yticklabels()] == labels


def test_token_spans_html_one_span_per_token_and_escaped() -> None:
    tokenizer = CharTokenizer.from_text("<script>ab ")
    html = viz.token_spans_html(tokenizer, "<script>a b").data
    assert html.count("<span") >= len("<script>a b")
    assert "<script>" not in html and "&lt;" in html
    from_tokens = viz.token_spans_html(["to", " be"], show_stats=False).data
    assert from_tokens.count("<span") == 2


def test_pca_is_deterministic_and_orders_variance() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(30, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])
    projected, ratios = viz.pca_2d(weights)
    again, _ = viz.pca_2d(weights.copy())
    assert projected.shape == (30, 2) and np.array_equal(projected, again)
    assert ratios[0] > ratios[1] > 0
    assert projected[:, 0].var() > projected[:, 1].var()


def test_plot_embeddings_2d_labels_points() -> None:
    weights = np.random.default_rng(1).normal(size=(5, 4))
    fig = viz.plot_embeddings_2d(weights, list("aeiou"))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert set("aeiou") <= texts


def test_next_token_distribution_bars_are_the_top_k_sorted() -> None:
    probs = np.array([0.05, 0.5, 0.1, 0.3, 0.05])
    fig = viz.plot_next_token_distribution(probs, list("abcde"), k=3)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx([0.5, 0.3, 0.1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["b", "d", "c"]


def test_sampling_filters_panels_equal_the_sampler() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1])
    fig = viz.plot_sampling_filters(logits, list("abcde"), temperature=0.7, top_k=3, top_p=0.8)
    last_panel = fig.axes[-1]
    bars = [bar.get_height() for bar in last_panel.patches if bar.get_facecolor()[3] > 0]
    expected = next_token_distribution(logits, 0.7, 3, 0.8).tolist()
    assert bars == pytest.approx(expected, abs=1e-6)


def test_parameter_counts_stack_to_the_total() -> None:
    table = {"tiny": {"embeddings": 10, "attention": 20, "mlp": 40, "norms": 1}}
    fig = viz.plot_parameter_counts(table)
    assert sum(bar.get_height() for bar in fig.axes[0].patches) == pytest.approx(71)


def test_grad_norms_one_line_per_setting() -> None:
    fig = viz.plot_grad_norms({"with residuals": [1.0, 0.9, 1.1], "without": [1e-6, 1e-3, 1.0]})
    assert len(fig.axes[0].get_lines()) == 2


def test_live_loss_plot_keeps_data_without_a_kernel() -> None:
    live = viz.LiveLossPlot()
    live({"step": 0, "train_loss": None, "val_loss": 4.0})
    live.on_eval(10, 3.0, 2.9)
    assert live.history == {"step": [0, 10], "train_loss": [None, 3.0], "val_loss": [4.0, 2.9]}
    assert live.redraws == 0  # nothing to draw on outside a notebook
    assert list(live.figure().axes[0].get_lines()[0].get_xdata())


def test_explorers_redraw_when_a_control_changes() -> None:
    explorer = viz.sampling_explorer(torch.tensor([2.0, 1.0, 0.0]), list("abc"))
    first = explorer.figure
    explorer.temperature.value = 0.0
    assert explorer.figure is not first
    heights = [bar.get_height() for bar in explorer.figure.axes[1].patches if bar.get_facecolor()[3] > 0]
    assert heights == pytest.approx([1.0, 0.0, 0.0])  # temperature 0 is greedy
    maps = [torch.softmax(torch.randn(2, 3, 3), dim=-1) for _ in range(2)]
    attention = viz.attention_explorer(maps, list("xyz"))
    attention.layer.value = 1
    assert "layer 1" in attention.figure.texts[0].get_text() + " ".join(a.get_title() for a in attention.figure.axes)


def test_style_keeps_interactive_mode() -> None:
    before = matplotlib.is_interactive()
    matplotlib.interactive(True)
    try:
        viz.plot_grad_norms({"a": [1.0, 2.0]})
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(before)
