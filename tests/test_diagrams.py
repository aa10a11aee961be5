"""The drawn diagrams: each draws, and shows the steps and tensor shapes it promises."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from lal import diagrams


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
