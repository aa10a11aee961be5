"""The course's look: the colour-blind-safe palette, the colours each kind of line or bar uses,
and :func:`style`, the matplotlib settings every picture is drawn in."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib
import matplotlib.pyplot as plt


#: Okabe & Ito's palette: distinguishable with every common form of colour blindness.
PALETTE: dict[str, str] = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
_CYCLE = [PALETTE[name] for name in ("blue", "vermillion", "green", "orange", "purple", "sky", "black")]
TRAIN_COLOR = PALETTE["blue"]
VAL_COLOR = PALETTE["vermillion"]
REFERENCE_COLOR = "0.4"
BAR_COLOR = PALETTE["sky"]
HIGHLIGHT_COLOR = PALETTE["vermillion"]
HEATMAP_CMAP = "viridis"  # perceptually uniform and readable in grey scale
EMPTY_CELL_COLOR = "white"  # masked cells (future positions, bigrams never seen) are left blank

#: Pastel backgrounds for token spans; neighbours always differ in hue *and* lightness.
_SPAN_COLORS = ("#cfe6ff", "#ffd9a8", "#c9efd9", "#f6cde3", "#e3dcff", "#fff1a6")

_RC: dict[str, Any] = {
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "figure.constrained_layout.use": True,  # keeps long token labels from overlapping the title
    "font.size": 10,
    "axes.titlesize": 11.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.prop_cycle": plt.cycler(color=_CYCLE),
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "image.cmap": HEATMAP_CMAP,
}


@contextmanager
def style() -> Iterator[None]:
    """Draw inside this block to get the course's look (use it for your own plots in notebooks).

    A context manager rather than a global ``rcParams`` change, so importing ``lal`` never
    restyles a learner's other plots.
    """
    with plt.rc_context(_RC):
        try:
            yield
        finally:
            # The inline backend may switch interactive mode on while drawing inside the block;
            # leaving rc_context would switch it off again and later figures would not be shown.
            interactive = matplotlib.is_interactive()
    matplotlib.interactive(interactive)


def _styled(plot_function: Callable[..., Any]) -> Callable[..., Any]:
    """Run a plotting function inside :func:`style`."""

    @functools.wraps(plot_function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return plot_function(*args, **kwargs)

    return wrapper
