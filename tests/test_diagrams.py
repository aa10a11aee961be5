"""The drawn diagrams: each draws, and shows the steps and tensor shapes it promises."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from lal import diagrams
from lal.model import GPTConfig


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _boxes(fig) -> list[FancyBboxPatch]:
    return [patch for ax in fig.axes for patch in ax.patches if isinstance(patch, FancyBboxPatch)]


def _arrows(fig) -> list[FancyArrowPatch]:
    return [patch for ax in fig.axes for patch in ax.patches if isinstance(patch, FancyArrowPatch)]


# --- the toolkit ---------------------------------------------------------------------------------


def test_box_is_coloured_by_kind_and_arrows_attach_to_its_edges() -> None:
    fig, ax = diagrams.canvas(6, 3, "toolkit")
    first = diagrams.box(ax, 1.5, 1.5, "embed", kind="param", width=2, height=1, sublabel="nn.Embedding")
    second = diagrams.box(ax, 4.5, 1.5, "x", kind="data", width=2, height=1)
    diagrams.arrow(ax, first.right, second.left, "ids")
    assert (first.right, second.left) == ((2.5, 1.5), (3.5, 1.5))
    assert (first.top, first.bottom) == ((1.5, 2.0), (1.5, 1.0))
    fill, edge = diagrams.KIND_COLORS["param"]
    patch = _boxes(fig)[0]
    assert patch.get_facecolor()[:3] == pytest.approx(plt.matplotlib.colors.to_rgb(fill))
    assert patch.get_edgecolor()[:3] == pytest.approx(plt.matplotlib.colors.to_rgb(edge))
    assert diagrams.figure_texts(fig) == ["toolkit", "embed", "nn.Embedding", "x", "ids"]
    assert len(_arrows(fig)) == 1
    assert fig.get_size_inches() == pytest.approx((6 * diagrams.UNIT_INCHES, 3.5 * diagrams.UNIT_INCHES))


def test_curved_arrow_label_sits_on_the_curve() -> None:
    fig, ax = diagrams.canvas(10, 4)
    diagrams.arrow(ax, (9, 1), (1, 1), "back", curve=0.25, label_side="above")
    label = ax.texts[0]
    # The arc's middle is the chord's middle moved by curve/2 × the chord's length (8) upwards.
    assert label.get_position() == pytest.approx((5.0, 1 + 0.25 / 2 * 8 + 0.1))


def test_toolkit_rejects_unknown_kinds_sides_and_empty_canvases() -> None:
    fig, ax = diagrams.canvas(4, 2)
    with pytest.raises(ValueError, match="Unknown box kind 'weights'"):
        diagrams.box(ax, 1, 1, "w", kind="weights")
    with pytest.raises(ValueError, match="label_side"):
        diagrams.arrow(ax, (0, 0), (1, 1), "x", label_side="middle")
    with pytest.raises(ValueError, match="positive size"):
        diagrams.canvas(0, 2)


# --- the diagrams --------------------------------------------------------------------------------


def test_training_step_shows_the_loop_in_order_with_shapes() -> None:
    fig = diagrams.training_step()
    texts = diagrams.figure_texts(fig)
    steps = ["batch", "forward", "loss", "backward", "clip", "AdamW step"]
    assert [text for text in texts if text in steps] == steps  # drawn left to right in this order
    for expected in ("schedule", "lr_at(step)", "(B, T, V)", "loss.backward()", "zero_grad(), next batch"):
        assert expected in texts
    assert len(_boxes(fig)) == 7 and len(_arrows(fig)) == 7


def test_gpt_forward_traces_every_shape_symbolically_and_with_a_configs_numbers() -> None:
    texts = diagrams.figure_texts(diagrams.gpt_forward())
    for expected in ("token embedding", "position embedding", "final LayerNorm", "language-model head",
                     "(B, T)", "(B, T, C)", "(B, T, V)", "(B, V)", "transformer block × n_layer"):
        assert expected in texts
    assert any("weight tying" in text for text in texts)
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=3, n_head=4, n_embd=96)
    texts = diagrams.figure_texts(diagrams.gpt_forward(config, batch_size=2, seq_len=8))
    assert "(B, T) = (2, 8)" in texts and "(B, T, V) = (2, 8, 65)" in texts
    assert texts.count("(B, T, C) = (2, 8, 128)") == 0 and texts.count("(B, T, C) = (2, 8, 96)") == 4
    assert "transformer block × 3" in texts
    assert "(B, T) = (2, 64)" in diagrams.figure_texts(diagrams.gpt_forward(config, batch_size=2))


def test_qkv_attention_shows_scaling_mask_softmax_and_the_shapes() -> None:
    texts = diagrams.figure_texts(diagrams.qkv_attention())
    for expected in ("query", "key", "value", "Q @ Kᵀ / √d", "causal mask", "future → −∞", "softmax",
                     "Q (T, d)", "K (T, d)", "V (T, d)", "out (T, d)"):
        assert expected in texts
    order = [text for text in texts if text in ("scores", "causal mask", "softmax", "weighted sum")]
    assert order == ["scores", "causal mask", "softmax", "weighted sum"]


def test_multi_head_attention_splits_into_heads_and_merges_back() -> None:
    texts = diagrams.figure_texts(diagrams.multi_head_attention())
    assert [text for text in texts if text.startswith("(B,")] == [
        "(B, T, C)", "(B, T, 3C)", "(B, h, T, d)", "(B, h, T, d)", "(B, T, C)", "(B, T, C)"]
    texts = diagrams.figure_texts(diagrams.multi_head_attention(n_head=6, n_embd=192))
    assert "(B, h, T, d)\n= (B, 6, T, 32)" in texts and "(B, T, 3C)\n= (B, T, 576)" in texts
    assert any(text.startswith("C = h × d = 6 × 32") for text in texts)
    with pytest.raises(ValueError, match="divisible"):
        diagrams.multi_head_attention(n_head=5, n_embd=128)


def test_transformer_block_puts_layernorm_on_the_branch_pre_ln_and_on_the_stream_post_ln() -> None:
    def norm_heights(fig) -> list[float]:
        norms = [text for text in fig.axes[0].texts if text.get_text() in ("ln_1", "ln_2")]
        return [round(text.get_position()[1], 1) for text in norms]

    pre, post = diagrams.transformer_block(pre_ln=True), diagrams.transformer_block(pre_ln=False)
    assert "Pre-LN" in pre.get_suptitle() and "Post-LN" in post.get_suptitle()
    for fig in (pre, post):
        texts = diagrams.figure_texts(fig)
        assert texts.count("+") == 2 and "x  (B, T, C)" in texts and "(B, T, C)" in texts
    # Pre-LN: both norms sit up on the branches; post-LN: both sit on the stream, with the + junctions.
    plus_height = round(next(t for t in pre.axes[0].texts if t.get_text() == "+").get_position()[1], 1)
    assert all(height > plus_height + 1 for height in norm_heights(pre)) and len(norm_heights(pre)) == 2
    assert norm_heights(post) == pytest.approx([plus_height, plus_height], abs=0.3)


def test_sampling_pipeline_draws_the_filters_in_the_order_the_sampler_applies_them() -> None:
    texts = diagrams.figure_texts(diagrams.sampling_pipeline())
    order = ["÷ temperature", "top-k", "top-p", "softmax", "draw"]
    assert [texts.index(step) for step in order] == sorted(texts.index(step) for step in order)
    assert "greedy (T = 0)" in texts and "argmax(logits)" in texts


def test_kv_cache_draws_one_slot_per_position_and_rejects_a_full_cache() -> None:
    fig = diagrams.kv_cache(block_size=10, cached=4)
    slots = [patch for patch in _boxes(fig) if patch.get_width() < 1]
    assert len(slots) == 2 * 10  # keys and values, one slot per position up to block_size
    assert "position 4" in diagrams.figure_texts(fig)
    with pytest.raises(ValueError, match="between 1 and block_size - 1"):
        diagrams.kv_cache(block_size=8, cached=8)


# --- chapter 7 ---------------------------------------------------------------------------------


def test_chat_template_marks_exactly_the_answer_and_its_end_as_trained() -> None:
    fig = diagrams.chat_template("Rev: ab", "ba")
    texts = diagrams.figure_texts(fig)
    n_tokens = len("Rev: ab") + len("ba") + 4
    # one input cell per token, one target cell per position but the last
    assert len(_boxes(fig)) == 2 * n_tokens - 1
    trained_fill = plt.matplotlib.colors.to_rgb(diagrams.KIND_COLORS["loss"][0])
    trained = [b for b in _boxes(fig) if b.get_facecolor()[:3] == pytest.approx(trained_fill)]
    assert len(trained) == len("ba") + 1  # b, a, <|end|>
    assert texts.count("-100") == n_tokens - 1 - len(trained)
    assert texts.count("<|end|>") == 3  # two in the input row, one trained target


def test_sft_data_flow_names_the_split_the_mixing_and_the_score() -> None:
    texts = " ".join(diagrams.figure_texts(diagrams.sft_data_flow()))
    for piece in ("train words only", "held-out + made-up words", "template, mask, pad", "a share r of steps",
                  "greedy, exact match", "prompts never trained on"):
        assert piece in texts
