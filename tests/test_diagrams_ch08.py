"""Chapter 8's diagrams: mixed precision and data-parallel training show what they promise."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyBboxPatch

from lal import diagrams


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _n_boxes(fig) -> int:
    return sum(isinstance(patch, FancyBboxPatch) for ax in fig.axes for patch in ax.patches)


def test_mixed_precision_keeps_float32_master_weights_and_scales_only_fp16() -> None:
    texts = " | ".join(diagrams.figure_texts(diagrams.mixed_precision_step()))
    for expected in ("weights | float32", "matmuls in bf16", "float32 state m, v", "fp16 only",
                     "scaler.scale(loss)", "scaler.unscale_(opt)", "skip if inf / NaN"):
        assert expected in texts


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_data_parallel_draws_one_row_per_rank_and_one_all_reduce(n_ranks) -> None:
    fig = diagrams.data_parallel(n_ranks)
    texts = diagrams.figure_texts(fig)
    assert [t for t in texts if t.startswith("rank ")] == [f"rank {r}: windows" for r in range(n_ranks)]
    assert texts.count("all-reduce") == 1 and texts.count("AdamW step") == n_ranks
    assert _n_boxes(fig) == 4 * n_ranks + 1
    assert any(f"{n_ranks} × batch × accumulation" in t for t in texts)


def test_data_parallel_needs_two_ranks() -> None:
    with pytest.raises(ValueError, match="at least 2 ranks"):
        diagrams.data_parallel(1)


def test_mixed_precision_scales_the_loss_before_backward_and_unscales_before_the_step() -> None:
    texts = diagrams.figure_texts(diagrams.mixed_precision_step())
    flow = [t for t in texts if t in ("forward", "loss", "loss × scale", "backward", "gradients", "÷ scale, check",
                                      "AdamW step")]
    assert flow == ["forward", "loss", "loss × scale", "backward", "gradients", "÷ scale, check", "AdamW step"]
    assert "fp16 only: scaled before backward()" in texts
