"""Token boundaries: a text cut into coloured spans, one per token, as HTML."""

from __future__ import annotations

import html
from collections.abc import Sequence

from IPython.display import HTML

from lal.viz.inputs import _WHITESPACE_SYMBOLS, TokenizerLike, _is_tokenizer, visible_token
from lal.viz.theme import _SPAN_COLORS


#: A faint symbol standing for invisible characters; inline styles, because notebook viewers
#: (GitHub, Colab previews) drop <style> blocks.
_WS_MARKER = '<i class="lal-ws" style="font-style:normal;opacity:0.45">{}</i>'


def _span_content(token: str) -> str:
    """A token's text as HTML: escaped, whitespace shown as faint symbols, newlines kept."""
    if token == "":
        return _WS_MARKER.format("∅")
    parts = []
    for char in token:
        if char in _WHITESPACE_SYMBOLS or not char.isprintable():
            parts.append(_WS_MARKER.format(html.escape(visible_token(char))))
            if char == "\n":
                parts.append("\n")  # the container keeps line breaks, so the text keeps its shape
        else:
            parts.append(html.escape(char))
    return "".join(parts)


def token_spans_html(
    tokenizer_or_tokens: TokenizerLike | Sequence[str],
    text: str | None = None,
    *,
    show_stats: bool = True,
) -> HTML:
    """Text cut into its tokens, one coloured span per token, the id in each span's tooltip.

    Pass a tokenizer and the text (hover a span to see its id), or a list of token strings.
    Seeing where a tokenizer cuts (``␣the`` as one token, a rare word in four pieces) explains
    sequence lengths, and why a model can struggle to spell. A token that holds only part of a
    multi-byte character (byte-level BPE) shows as ``�``, which is what it decodes to alone.
    """
    if _is_tokenizer(tokenizer_or_tokens):
        if not isinstance(text, str):
            raise ValueError("Pass the text to tokenize: token_spans_html(tokenizer, 'some text').")
        ids: list[int] | None = list(tokenizer_or_tokens.encode(text))  # type: ignore[union-attr]
        tokens = [tokenizer_or_tokens.decode([i]) for i in ids]  # type: ignore[union-attr]
    elif isinstance(tokenizer_or_tokens, Sequence) and not isinstance(tokenizer_or_tokens, str):
        if text is not None:
            raise ValueError("Pass either a tokenizer and a text, or a list of token strings, not both.")
        if not all(isinstance(token, str) for token in tokenizer_or_tokens):
            raise ValueError("A list of tokens must hold strings; for ids, pass the tokenizer and the text.")
        ids, tokens = None, list(tokenizer_or_tokens)
    else:
        raise ValueError("token_spans_html needs a tokenizer (with encode/decode) and a text, "
                         "or a list of token strings.")

    spans = []
    for position, token in enumerate(tokens):
        what = f"id {ids[position]}" if ids is not None else f"token {position}"
        tooltip = html.escape(f"{what}: {token!r}", quote=True)
        color = _SPAN_COLORS[position % len(_SPAN_COLORS)]
        spans.append(f'<span class="lal-tok" title="{tooltip}" style="background:{color};'
                     f'border-radius:3px;padding:1px 0;margin-right:1px">{_span_content(token)}</span>')
    stats = ""
    if show_stats:
        n_chars = len(text) if ids is not None else sum(len(token) for token in tokens)
        ratio = f" · {n_chars / len(tokens):.2f} characters per token" if tokens else ""
        stats = (f'<div style="font-family:sans-serif;font-size:0.85em;color:#555;margin-bottom:4px">'
                 f"{len(tokens)} tokens · {n_chars} characters{ratio}</div>")
    body = ('<div style="font-family:monospace;white-space:pre-wrap;line-height:1.9;color:#111;'
            'background:white;padding:6px">' + "".join(spans) + "</div>")
    return HTML(stats + body)
