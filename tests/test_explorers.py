"""The ipywidgets explorers show a picture where no kernel runs (GitHub, Colab previews)."""

from __future__ import annotations

import base64

import numpy as np
import torch

import lal.viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _bundle_png(explorer) -> bytes:
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab still renders the widget
    return base64.b64decode(bundle["image/png"])


def test_attention_explorer_carries_a_png_of_its_first_figure() -> None:
    weights = [np.full((2, 5, 5), 0.2), np.full((2, 5, 5), 0.2)]  # (H, T, T) per layer
    explorer = lal.viz.attention_explorer(weights, list("abcde"))
    png = _bundle_png(explorer)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    explorer.layer.value = 1  # the slider redraws the figure the widget shows
    assert explorer.figure._suptitle.get_text() == "Attention weights, layer 1"


def test_sampling_explorer_carries_a_png_of_its_first_figure() -> None:
    explorer = lal.viz.sampling_explorer(torch.linspace(-2.0, 2.0, 30), [f"t{i}" for i in range(30)], k=10)
    assert _bundle_png(explorer).startswith(PNG_SIGNATURE)


def test_sampling_explorer_previews_other_settings_for_static_viewers() -> None:
    logits = torch.linspace(-2.0, 2.0, 30)
    settings = [dict(temperature=0.0), dict(temperature=2.0, top_p=0.5), dict(temperature=0.5), dict(top_k=3)]
    explorer = lal.viz.sampling_explorer(logits, [f"t{i}" for i in range(30)], k=10, previews=settings)
    assert [ax.get_title(loc="left").split("  ")[0] for ax in explorer.preview.axes] == [
        "temperature 0", "temperature 2, top_p 0.5", "temperature 0.5", "top_k 3"]
    assert _bundle_png(explorer) != _bundle_png(lal.viz.sampling_explorer(logits, [f"t{i}" for i in range(30)], k=10))
