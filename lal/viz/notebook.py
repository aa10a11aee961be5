"""Showing figures in a running notebook: whether a kernel is there, redrawing inside a widget's
output, and the base of the explorers (controls above a figure, with a PNG for viewers that
run no kernel)."""

from __future__ import annotations

import base64
import io
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython import get_ipython
from IPython.display import clear_output
from matplotlib.figure import Figure


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab, nbval), where widgets can be shown."""
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _show_in(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows with ``fig`` (in a kernel); outside one, just free the figure.

    ``clear_output(wait=True)`` keeps the old picture until the new one arrives, so redraws do
    not flicker; ``plt.show()`` renders through the inline backend, as in JupyterLab and Colab.
    """
    if _in_kernel():
        with output:
            clear_output(wait=True)
            plt.show()
    plt.close(fig)  # the Figure object stays usable (savefig, inspection); pyplot forgets it


class _Explorer(widgets.VBox):
    """Controls above a figure. Where no kernel runs (GitHub, nbviewer, a Colab preview) a widget
    cannot render, so its output also carries a PNG of the figure it first drew: those viewers
    show that picture instead of the widget's text repr, while JupyterLab and Colab's live kernels
    still show the widget."""

    figure: Figure | None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        widget_repr = getattr(super(), "_repr_mimebundle_", None)  # ipywidgets 7 displays another way
        bundle = dict(widget_repr(**kwargs) or {}) if widget_repr is not None else {}
        if self.figure is not None:
            buffer = io.BytesIO()
            self.figure.savefig(buffer, format="png", bbox_inches="tight")
            bundle["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return bundle
