"""Pictures for the course: loss curves, schedules, attention maps, token boundaries, embeddings,
next-token distributions, and two small interactive explorers.

A picture is often the fastest way to see whether a model learned something (a loss that falls
below ln(V), attention that looks at the right tokens, embeddings where vowels sit together), so
every chapter draws a few. Each function here draws one kind of picture, labels its axes, gives it
a title, and returns the matplotlib ``Figure`` (or ``IPython.display.HTML`` for token spans):
notebooks keep the picture in their stored outputs and tests can inspect what was drawn.

The functions read plain data (lists, NumPy arrays, torch tensors) and depend on the rest of the
package only by duck typing (except the sampling pictures, which use ``lal.sample``'s filters so
they show exactly what the sampler does): a *tokenizer* is anything with ``encode(str) -> list[int]`` and
``decode(list[int]) -> str``; a *history* is anything that holds the columns ``step``,
``train_loss``, ``val_loss`` (and optionally ``lr``, ``tokens``, ``elapsed_s``).

In Jupyter, figures made with pyplot are also shown by the inline backend at the end of the cell,
so a bare ``plot_loss(history)`` as the last line shows the picture twice: write
``fig = plot_loss(history)``, end the line with ``;``, or follow it with ``plt.show()``.

One module per kind of picture, every name importable from ``lal.viz`` itself:

* :mod:`lal.viz.theme` — the palette, the colours of each kind of line, :func:`style`;
* :mod:`lal.viz.inputs` — numbers, labels and readable tokens, as every picture takes them;
* :mod:`lal.viz.curves` — loss curves, learning-rate schedules, the live loss plot;
* :mod:`lal.viz.heatmaps` — attention maps (and their explorer), bigram counts;
* :mod:`lal.viz.tokens` — token boundaries as coloured spans;
* :mod:`lal.viz.embeddings` — embeddings projected to two dimensions;
* :mod:`lal.viz.sampling` — next-token distributions, sampling filters (and their explorer);
* :mod:`lal.viz.anatomy` — parameters per preset, gradient norms per layer;
* :mod:`lal.viz.notebook` — showing figures inside widgets in a running notebook.
"""

from __future__ import annotations

from lal.viz.anatomy import plot_grad_norms, plot_parameter_counts
from lal.viz.curves import LiveLossPlot, history_columns, plot_loss, plot_lr_schedule
from lal.viz.embeddings import char_classes, pca_2d, plot_embeddings_2d
from lal.viz.heatmaps import AttentionExplorer, attention_explorer, plot_attention, plot_bigram_counts
from lal.viz.inputs import TokenizerLike, visible_token
from lal.viz.sampling import (
    SamplingExplorer,
    plot_next_token_distribution,
    plot_sampling_filters,
    sampling_explorer,
)
from lal.viz.theme import (
    BAR_COLOR,
    EMPTY_CELL_COLOR,
    HEATMAP_CMAP,
    HIGHLIGHT_COLOR,
    PALETTE,
    REFERENCE_COLOR,
    TRAIN_COLOR,
    VAL_COLOR,
    style,
)
from lal.viz.tokens import token_spans_html

__all__ = [
    "PALETTE",
    "style",
    "visible_token",
    "char_classes",
    "history_columns",
    "pca_2d",
    "plot_loss",
    "plot_lr_schedule",
    "plot_attention",
    "plot_bigram_counts",
    "token_spans_html",
    "plot_embeddings_2d",
    "plot_next_token_distribution",
    "plot_sampling_filters",
    "plot_parameter_counts",
    "plot_grad_norms",
    "LiveLossPlot",
    "SamplingExplorer",
    "sampling_explorer",
    "AttentionExplorer",
    "attention_explorer",
]
