"""The pictures: what each plotting function draws, checked through the artists it returns."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from lal import viz
from lal.sample import next_token_distribution
from lal.tokenizers import CharTokenizer
from lal.train import EvalEvent, History, TrainConfig, lr_at


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _heatmap_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def _texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def _solid_heights(ax) -> list[float]:
    """Heights of the filled bars (the outlined 'before this step' bars have no face)."""
    return [bar.get_height() for bar in ax.patches if bar.get_facecolor()[3] > 0]


def _assert_labelled(fig: Figure) -> None:
    """A title (axes or figure) and both axis labels somewhere on the figure."""
    titles = [ax.get_title() or ax.get_title(loc="left") for ax in fig.axes]
    assert any(titles) or fig.get_suptitle()
    assert any(ax.get_xlabel() for ax in fig.axes) and any(ax.get_ylabel() for ax in fig.axes)


# --- tokens as labels ----------------------------------------------------------------------------


def test_visible_token_shows_whitespace_and_escapes_control_characters() -> None:
    assert viz.visible_token(" the") == "␣the"
    assert viz.visible_token("a\nb\tc") == "a⏎b⇥c"
    assert viz.visible_token("\x00\r") == "\\x00\\r"
    assert viz.visible_token("é") == "é"
    assert viz.visible_token("") == "∅"


# --- loss curves ---------------------------------------------------------------------------------


def test_plot_loss_draws_both_curves_and_marks_the_best() -> None:
    history = {"step": [0, 10, 20, 30], "train_loss": [None, 3.0, 2.5, 2.2], "val_loss": [4.1, 3.1, 2.4, 2.6]}
    fig = viz.plot_loss(history, reference={"ln(V)": math.log(65)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["validation"].get_ydata()) == [4.1, 3.1, 2.4, 2.6]
    assert list(lines["train"].get_xdata()) == [10, 20, 30]  # the step-0 row has no training loss
    best = [c for c in ax.collections if c.get_label().startswith("best val")]
    assert best and best[0].get_offsets().tolist() == [[20, 2.4]]
    assert best[0].get_label() == "best val 2.400 (step 20)"
    assert any(np.allclose(line.get_ydata(), math.log(65)) for line in ax.get_lines())
    assert "ln(V) = 4.17" in _texts(ax.texts)
    _assert_labelled(fig)


def test_plot_loss_names_reference_lines_where_no_curve_crosses_the_label() -> None:
    # Chapter 1's picture: the run starts on ln(V) at the left and ends on the counted loss at the right.
    steps = list(range(0, 501, 25))
    val = [4.17] + [2.48 + 0.2 * math.exp(-step / 100) for step in steps[1:]]
    history = {"step": steps, "train_loss": val, "val_loss": val}
    ax = viz.plot_loss(history, reference={"ln(65)": 4.17, "counted": 2.48}).axes[0]
    labels = {text.get_text(): text for text in ax.texts}
    top, bottom = labels["ln(65) = 4.17"], labels["counted = 2.48"]
    assert (top.get_ha(), top.get_va()) == ("right", "bottom")  # nothing crosses the top right
    assert (bottom.get_ha(), bottom.get_va()) == ("right", "top")  # below the line: the curve is above it
    flat = viz.plot_loss({"step": [0, 1], "train_loss": [1.0, 1.0]}, reference={"r": 3.0}).axes[0]
    assert (flat.texts[0].get_ha(), flat.texts[0].get_va()) == ("right", "bottom")


def test_plot_loss_reads_history_objects_rows_and_events_alike() -> None:
    rows = [{"step": 0, "train_loss": None, "val_loss": 4.0, "lr": 1e-3, "tokens": 0, "elapsed_s": 0.0},
            {"step": 50, "train_loss": 2.5, "val_loss": 2.6, "lr": 1e-3, "tokens": 800, "elapsed_s": 1.5}]
    from_rows = viz.plot_loss(rows).axes[0].get_lines()
    from_history = viz.plot_loss(History.from_rows(rows)).axes[0].get_lines()
    from_dict = viz.plot_loss(History.from_rows(rows).to_dict()).axes[0].get_lines()
    for lines in (from_history, from_dict):
        assert [list(line.get_ydata()) for line in lines] == [list(line.get_ydata()) for line in from_rows]
    by_tokens = viz.plot_loss(rows, x="tokens").axes[0]
    assert list(by_tokens.get_lines()[1].get_xdata()) == [0, 800] and by_tokens.get_xlabel() == "tokens seen"


def test_plot_loss_options_and_errors() -> None:
    fig, ax = plt.subplots()
    steps = list(range(10))
    returned = viz.plot_loss({"step": steps, "train_loss": [3.0] * 10}, ax=ax, smoothing=0.5, log_y=True)
    assert returned is fig and ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["train (raw)", "train (smoothed 0.5)"]
    assert ax.get_lines()[1].get_ydata() == pytest.approx([3.0] * 10)  # debiased: no dip at the start
    with pytest.raises(ValueError, match="differ in length"):
        viz.plot_loss({"step": [0, 1], "train_loss": [1.0]})
    with pytest.raises(ValueError, match="'step'"):
        viz.plot_loss({"train_loss": [1.0]})
    with pytest.raises(ValueError, match="no finite"):
        viz.plot_loss({"step": [0], "train_loss": [None]})


def test_history_columns_reads_metrics_rows() -> None:
    rows = [{"step": 0, "val_loss": 4.0}, {"step": 5, "train_loss": 3.0, "val_loss": 3.5}]
    columns = viz.history_columns(rows)
    assert list(columns["step"]) == [0, 5]
    assert np.isnan(columns["train_loss"][0]) and columns["train_loss"][1] == 3.0
    attributes = viz.history_columns(SimpleNamespace(step=[1], train_loss=[2.0], val_loss=[None]))
    assert list(attributes["train_loss"]) == [2.0] and np.isnan(attributes["val_loss"][0])


# --- learning-rate schedule ----------------------------------------------------------------------


def test_plot_lr_schedule_plots_the_callable_the_list_and_the_config() -> None:
    fig = viz.plot_lr_schedule(lambda step: 0.1 * (step + 1), max_steps=5)
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    as_list = viz.plot_lr_schedule([0.1, 0.2, 0.3])
    assert list(as_list.axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    cfg = TrainConfig(max_steps=40, warmup_steps=5)
    from_config = viz.plot_lr_schedule(cfg).axes[0]
    assert list(from_config.get_lines()[0].get_ydata()) == pytest.approx([lr_at(s, cfg) for s in range(40)])
    assert list(from_config.get_lines()[1].get_xdata()) == [5, 5]  # the end-of-warmup marker
    _assert_labelled(fig)
    with pytest.raises(ValueError, match="max_steps"):
        viz.plot_lr_schedule(lambda step: 0.1)


# --- attention -----------------------------------------------------------------------------------


def test_plot_attention_single_head_labels_and_causal_blank() -> None:
    weights = torch.tril(torch.ones(4, 4))
    weights = weights / weights.sum(-1, keepdim=True)
    fig = viz.plot_attention(weights, ["a", " ", "\n", "b"])
    [ax] = _heatmap_axes(fig)
    assert _texts(ax.get_xticklabels()) == ["a", "␣", "⏎", "b"]  # keys on the columns
    assert _texts(ax.get_yticklabels()) == ["a", "␣", "⏎", "b"]  # queries on the rows
    shown = ax.images[0].get_array()
    assert np.ma.is_masked(shown) and shown.mask[0, 3] and not shown.mask[3, 0]  # the future is blank
    assert shown[3, 0] == pytest.approx(0.25)
    _assert_labelled(fig)


def test_plot_attention_without_a_mask_shows_every_cell() -> None:
    weights = torch.full((3, 3), 1 / 3)
    shown = _heatmap_axes(viz.plot_attention(weights, list("abc")))[0].images[0].get_array()
    assert not np.ma.is_masked(shown) and np.allclose(shown, 1 / 3)


def test_plot_attention_grid_has_one_heatmap_per_head() -> None:
    weights = torch.softmax(torch.randn(6, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    grid = viz.plot_attention(weights, list("abcde"))
    assert len(_heatmap_axes(grid)) == 6
    assert [ax.get_title() for ax in _heatmap_axes(grid)] == [f"head {h}" for h in range(6)]
    assert len(grid.axes) == 7  # six heatmaps and one shared colorbar
    [single] = _heatmap_axes(viz.plot_attention(weights, list("abcde"), head=2))
    assert np.allclose(single.images[0].get_array(), weights[2].numpy())
    with pytest.raises(ValueError, match="5 positions"):
        viz.plot_attention(weights, list("abc"))
    with pytest.raises(ValueError, match="head must be in 0..5"):
        viz.plot_attention(weights, list("abcde"), head=6)


def test_plot_attention_grid_of_five_labels_the_outer_edges() -> None:
    weights = np.tril(np.ones((5, 3, 3))) / np.arange(1, 4)[:, None]  # (H, T, T), causal
    fig = viz.plot_attention(weights[None], ["x", "$", "z"])  # one batch element (1, H, T, T)
    heads = _heatmap_axes(fig)
    assert len(heads) == 5  # the sixth cell of the 2 x 3 grid is removed
    with_key_labels = [ax.get_title() for ax in heads if any(_texts(ax.get_xticklabels()))]
    assert with_key_labels == ["head 2", "head 3", "head 4"]  # nothing below them
    assert _texts(heads[3].get_yticklabels()) == ["x", r"\$", "z"]  # '$' escaped from mathtext
    with pytest.raises(ValueError, match="pick one sequence"):
        viz.plot_attention(np.ones((2, 5, 3, 3)), list("xyz"))


def test_long_sequences_get_every_nth_label() -> None:
    tokens = [f"t{i}" for i in range(200)]
    [ax] = _heatmap_axes(viz.plot_attention(np.eye(200), tokens))
    labelled = [int(text[1:]) for text in _texts(ax.get_yticklabels())]
    steps = set(np.diff(labelled).tolist())
    assert labelled[0] == 0 and len(steps) == 1 and steps.pop() > 1  # evenly thinned, never crowded
    assert list(ax.get_yticks()) == labelled  # each label sits on its own row


# --- bigram counts -------------------------------------------------------------------------------


def test_plot_bigram_counts_labels_all_65_characters() -> None:
    labels = [chr(ord("!") + i) for i in range(65)]
    fig = viz.plot_bigram_counts(np.arange(65 * 65).reshape(65, 65), labels)
    [ax] = _heatmap_axes(fig)
    # every label shown; "$" is escaped so matplotlib does not read it as mathtext
    assert [t.get_text().replace("\\$", "$") for t in ax.get_yticklabels()] == labels
    assert not ax.texts  # 65 x 65 counts would be unreadable
    _assert_labelled(fig)


def test_plot_bigram_counts_small_vocabulary_writes_each_count() -> None:
    counts = np.array([[0, 3, 1200], [7, 0, 0], [1, 1, 0]])
    [ax] = _heatmap_axes(viz.plot_bigram_counts(counts, list(".ab")))
    assert sorted(_texts(ax.texts)) == sorted(["3", "1.2k", "7", "1", "1"])  # zeros left blank
    shown = ax.images[0].get_array()
    assert shown.mask[0, 0] and shown[0, 2] == 1200
    with pytest.raises(ValueError, match="square"):
        viz.plot_bigram_counts(np.ones((2, 3)), list("ab"))


# --- token spans ---------------------------------------------------------------------------------


def test_token_spans_html_one_span_per_token_with_its_id() -> None:
    tokenizer = CharTokenizer.from_text("<script>ab \n")
    ids = tokenizer.encode("<script>a b\n")
    html = viz.token_spans_html(tokenizer, "<script>a b\n").data
    assert html.count("<span") == html.count('class="lal-tok"') == len(ids) == 12
    for token_id in ids:
        assert f'title="id {token_id}: ' in html
    assert "<script>" not in html and "&lt;" in html and "&gt;" in html
    assert "␣" in html and "⏎" in html
    assert "12 tokens · 12 characters · 1.00 characters per token" in html


def test_token_spans_html_accepts_token_strings_and_rejects_bad_input() -> None:
    html = viz.token_spans_html(["to", " be", '"><img src=x onerror=alert(1)>'], show_stats=False).data
    assert html.count('class="lal-tok"') == 3
    assert "<img" not in html and "&quot;&gt;&lt;img" in html
    assert 'title="token 1: &#x27; be&#x27;"' in html
    with pytest.raises(ValueError, match="text to tokenize"):
        viz.token_spans_html(CharTokenizer.from_text("ab"))
    with pytest.raises(ValueError, match="strings"):
        viz.token_spans_html([1, 2])


# --- embeddings ----------------------------------------------------------------------------------


def test_pca_is_deterministic_and_matches_the_svd() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(30, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])
    projected, ratios = viz.pca_2d(weights)
    again, _ = viz.pca_2d(torch.tensor(weights))
    assert projected.shape == (30, 2) and np.allclose(projected, again)
    centered = weights - weights.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    for component in range(2):
        direction = vt[component] * np.sign(vt[component][np.argmax(np.abs(vt[component]))])
        assert np.allclose(projected[:, component], centered @ direction)  # the same sign every time
    assert ratios == pytest.approx((singular**2 / (singular**2).sum())[:2])
    assert ratios[0] > ratios[1] > 0


def test_plot_embeddings_2d_labels_and_groups_points() -> None:
    weights = np.random.default_rng(1).normal(size=(6, 4))
    labels = list("aeiX ,")
    fig = viz.plot_embeddings_2d(weights, labels, groups=viz.char_classes(labels))
    ax = fig.axes[0]
    assert _texts(ax.texts) == ["a", "e", "i", "X", "␣", ","]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == \
        ["lowercase", "uppercase", "whitespace", "punctuation"]
    # one scatter per group, in the order groups first appear, which here is the row order
    assert np.allclose(np.concatenate([c.get_offsets() for c in ax.collections]), viz.pca_2d(weights)[0])
    _assert_labelled(fig)


def test_plot_embeddings_2d_keeps_crowded_labels_apart_and_groups_distinct() -> None:
    # Four tight pairs of points far apart: each pair's two labels must not cover each other.
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    weights = np.repeat(centres, 2, axis=0) + 0.01 * rng.normal(size=(8, 3))
    labels = list("KDQZaeio")
    fig = viz.plot_embeddings_2d(weights, labels, groups=viz.char_classes(labels))
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in fig.axes[0].texts]
    overlapping = [(labels[i], labels[j]) for i in range(8) for j in range(i + 1, 8) if boxes[i].overlaps(boxes[j])]
    assert not overlapping, f"labels drawn over each other: {overlapping}"
    scatters = fig.axes[0].collections
    colours = [to_hex(c.get_facecolor()[0]) for c in scatters]
    markers = [tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in scatters]
    assert len(set(colours)) == len(set(markers)) == len(scatters) == 2


# --- next-token distributions --------------------------------------------------------------------


def test_next_token_distribution_bars_are_the_top_k_sorted() -> None:
    probs = np.array([0.05, 0.5, 0.1, 0.3, 0.05])
    fig = viz.plot_next_token_distribution(probs, list("abcde"), k=3)
    ax = fig.axes[0]
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.5, 0.3, 0.1])
    assert _texts(ax.get_xticklabels()) == ["b", "d", "c"]
    assert "top 3 hold 90.0% of the probability" in ax.texts[0].get_text()
    _assert_labelled(fig)


def test_next_token_distribution_on_a_log_axis_shows_every_bar() -> None:
    # Chapter 1's 'q' row: one token holds 90 %, the rest share the remainder.
    probs = np.array([0.9] + [0.1 / 64] * 64)
    ax = viz.plot_next_token_distribution(probs, [str(i) for i in range(65)], k=10, log_y=True).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    low, high = ax.get_ylim()
    assert low < 0.1 / 64 and high > 0.9  # the smallest bar and the largest both inside the axis
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.9] + [0.1 / 64] * 9)


def test_next_token_distribution_highlight_and_tokenizer_labels() -> None:
    tokenizer = CharTokenizer.from_text("abcde")
    probs = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
    ax = viz.plot_next_token_distribution(probs, tokenizer, k=3, highlight="d").axes[0]
    assert _texts(ax.get_xticklabels()) == ["b", "d", "c"]
    colours = [to_hex(bar.get_facecolor()) for bar in ax.patches]
    assert colours[1] == viz.HIGHLIGHT_COLOR.lower() and colours[0] == colours[2] == viz.BAR_COLOR.lower()
    missing = viz.plot_next_token_distribution(probs, list("abcde"), k=2, highlight=0).axes[0]
    assert "'a' is not shown: p = 0.05, rank 4" in missing.texts[0].get_text()
    with pytest.raises(ValueError, match="not logits"):
        viz.plot_next_token_distribution(np.array([-1.0, 2.0]), list("ab"))


def test_sampling_filters_panels_equal_the_sampler() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1])
    fig = viz.plot_sampling_filters(logits, list("abcde"), temperature=0.7, top_k=3, top_p=0.8)
    assert len(fig.axes) == 4
    expected = next_token_distribution(logits, 0.7, 3, 0.8).tolist()
    assert _solid_heights(fig.axes[-1]) == pytest.approx(expected, abs=1e-6)
    _assert_labelled(fig)


def test_sampling_filters_keep_the_token_that_crosses_top_p() -> None:
    logits = np.log([0.5, 0.3, 0.2])
    fig = viz.plot_sampling_filters(logits, list("abc"), top_p=0.6)
    assert _solid_heights(fig.axes[0]) == pytest.approx([0.5, 0.3, 0.2])
    assert _solid_heights(fig.axes[3]) == pytest.approx([0.625, 0.375, 0.0])  # 'b' crosses 0.6: kept
    assert fig.axes[3].get_title(loc="left").endswith("(2 of 3 tokens possible)")
    greedy = viz.plot_sampling_filters(logits, list("abc"), temperature=0.0)
    assert _solid_heights(greedy.axes[1]) == pytest.approx([1.0, 0.0, 0.0])


# --- model anatomy -------------------------------------------------------------------------------


def test_parameter_counts_stack_each_part_and_ignore_the_total() -> None:
    table = {"tiny": {"embeddings": 10, "attention": 20, "mlp": 40, "norms": 1, "total": 71},
             "small": {"embeddings": 100, "attention": 200, "mlp": 400, "norms": 2, "total": 702}}
    fig = viz.plot_parameter_counts(table)
    ax = fig.axes[0]
    assert [bar.get_height() for bar in ax.patches] == [10, 100, 20, 200, 40, 400, 1, 2]
    assert [bar.get_y() for bar in ax.patches[2:4]] == [10, 100]  # attention sits on embeddings
    assert _texts(ax.texts) == ["71", "702"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["norms", "MLP", "attention", "embeddings"]
    _assert_labelled(fig)


def test_parameter_counts_on_a_log_axis_show_every_part_side_by_side() -> None:
    table = {"tiny": {"embeddings": 16_512, "attention": 132_096, "mlp": 263_424, "norms": 1_280},
             "big": {"embeddings": 39_383_808, "attention": 28_348_416, "mlp": 56_669_184, "norms": 38_400}}
    ax = viz.plot_parameter_counts(table, log_y=True).axes[0]
    assert ax.get_yscale() == "log"
    bars = ax.patches
    assert [bar.get_height() for bar in bars] == [16_512, 39_383_808, 132_096, 28_348_416, 263_424,
                                                  56_669_184, 1_280, 38_400]
    assert all(bar.get_y() == 0 for bar in bars)  # side by side, not stacked
    low, high = ax.get_ylim()
    assert low < 1_280 and high > 124_439_808  # the smallest part and the largest total both visible
    totals = ax.collections[0].get_segments()
    assert [segment[0][1] for segment in totals] == [413_312, 124_439_808]
    assert _texts(ax.texts) == ["413K", "124M"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["embeddings", "attention", "MLP", "norms", "total"]


def test_grad_norms_one_line_per_setting() -> None:
    fig = viz.plot_grad_norms({"with residuals": [1.0, 0.9, 1.1], "without": [1e-6, 1e-3, 1.0]})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["with residuals", "without"]
    assert list(ax.get_lines()[1].get_ydata()) == [1e-6, 1e-3, 1.0] and ax.get_yscale() == "log"
    _assert_labelled(fig)
    with pytest.raises(ValueError, match="layer labels"):
        viz.plot_grad_norms({"a": [1.0, 2.0]}, layer_labels=["only one"])


# --- notebook widgets ----------------------------------------------------------------------------


def test_live_loss_plot_keeps_data_without_a_kernel() -> None:
    live = viz.LiveLossPlot()
    live({"step": 0, "train_loss": None, "val_loss": 4.0})
    live(EvalEvent(step=10, train_loss=3.0, val_loss=2.9, lr=1e-3, tokens=160, elapsed_s=0.5,
                   improved=True, history=History()))
    live.on_eval(20, 2.5, 2.7)
    assert live.history == {"step": [0, 10, 20], "train_loss": [None, 3.0, 2.5], "val_loss": [4.0, 2.9, 2.7]}
    assert live.redraws == 0  # nothing to draw on outside a notebook
    final = live.figure().axes[0]
    assert list(final.get_lines()[1].get_ydata()) == [4.0, 2.9, 2.7]
    with pytest.raises(ValueError, match="'step'"):
        live({"val_loss": 1.0})


def test_live_loss_plot_redraws_every_nth_evaluation_in_a_notebook(monkeypatch) -> None:
    shown = []
    monkeypatch.setattr(viz.notebook, "get_ipython", lambda: SimpleNamespace(kernel=object()))  # a kernel runs
    monkeypatch.setattr(viz.curves, "display", shown.append)
    monkeypatch.setattr(viz.notebook, "clear_output", lambda wait=False: None)
    live = viz.LiveLossPlot(every=2)
    for step in range(5):
        live.on_eval(step * 10, 3.0 - step * 0.1, 3.1 - step * 0.1)
    assert live.redraws == 2 and shown == [live.output]  # the Output is displayed once
    assert plt.get_fignums() == []  # every redraw's figure was handed over and released


def test_sampling_explorer_redraws_when_a_slider_moves() -> None:
    explorer = viz.sampling_explorer(torch.tensor([2.0, 1.0, 0.0]), list("abc"))
    first = explorer.figure
    explorer.temperature.value = 0.0
    assert explorer.figure is not first
    assert _solid_heights(explorer.figure.axes[1]) == pytest.approx([1.0, 0.0, 0.0])  # temperature 0 is greedy
    explorer.temperature.value = 1.0
    explorer.top_k.value = 2
    assert _solid_heights(explorer.figure.axes[2]) == pytest.approx(
        next_token_distribution(torch.tensor([2.0, 1.0, 0.0]), 1.0, 2).tolist(), abs=1e-6)
    assert explorer.children[-1] is explorer.output


def test_attention_explorer_follows_the_layer_and_head() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = [torch.softmax(torch.randn(1, 2, 3, 3, generator=generator), dim=-1) for _ in range(2)]
    explorer = viz.attention_explorer(maps, list("xyz"))
    assert len(_heatmap_axes(explorer.figure)) == 2
    explorer.layer.value = 1
    assert explorer.figure.get_suptitle() == "Attention weights, layer 1"
    explorer.head.value = 1
    [ax] = _heatmap_axes(explorer.figure)
    assert np.allclose(ax.images[0].get_array(), maps[1][0, 1].numpy())
    with pytest.raises(ValueError, match="same"):
        viz.attention_explorer([np.ones((2, 3, 3)), np.ones((1, 3, 3))], list("xyz"))


def test_style_keeps_interactive_mode() -> None:
    before = matplotlib.is_interactive()
    matplotlib.interactive(True)
    try:
        viz.plot_grad_norms({"a": [1.0, 2.0]})
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(before)
