"""``lal.model.GPT`` in MLX: the same blocks, parameter names and shapes, written with ``mlx.nn``.

Read it next to ``lal/model.py``: the architecture is line for line the same (learned positions,
pre-LayerNorm blocks, causal multi-head attention, a tanh-GELU MLP, a tied output head, GPT-2's
initialisation, a KV cache). What differs is how MLX runs it:

* **Lazy graphs.** An MLX operation records what to compute and returns at once; nothing is
  computed until a result is needed (printing it, ``.item()``, ``np.array``) or ``mx.eval`` is
  called. A training step therefore ends with ``mx.eval(model.parameters(), optimizer.state)``:
  that one call runs the forward pass, the backward pass and the update as one graph.
* **Unified memory.** On Apple silicon the CPU and the GPU share one memory, so an array has no
  device and there is no ``.to(device)``: where it is computed is a property of the operation
  (the default device, or ``stream=``), not of the data.
* **Modules are dictionaries.** An ``mlx.nn.Module`` is a dict of its parameters and children;
  a plain ``dict`` or ``list`` of modules is a container, so there is no ``nn.ModuleDict`` or
  ``nn.ModuleList``. ``model.parameters()`` is a nested dict of arrays, and the flattened names
  (``transformer.h.0.attn.c_attn.weight``) are the PyTorch state-dict names.
* **No ``forward``, no autograd state.** A module is called (``__call__``); gradients come from
  transforming a function (``nn.value_and_grad``, see ``lal.mlx.train``), so there is no
  ``requires_grad``, ``.grad`` or ``torch.no_grad()``.

The tied head has no parameter of its own: ``wte.as_linear(x)`` multiplies by the token table,
which is what ``lm_head.weight = wte.weight`` achieves in PyTorch. Sizes and validation come
from :class:`lal.model.GPTConfig` and :data:`lal.model.PRESETS` themselves.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from lal.model import IGNORE_INDEX, GPTConfig, expected_parameters

#: GPT-2's initialisation: weights ~ N(0, 0.02²), the residual projections scaled by 1/√(2·n_layer).
INIT_STD = 0.02


class KVCache:
    """Keys and values of every layer for the tokens seen so far, grown by concatenation.

    PyTorch's cache (``lal.model.KVCache``) writes into a buffer allocated once for the whole
    context; an MLX array is immutable once computed, and concatenating is cheap, so here each
    layer's keys and values are ``(B, n_head, length, head_dim)`` arrays that grow by one chunk.
    """

    def __init__(self, n_layer: int) -> None:
        self.keys: list[mx.array | None] = [None] * n_layer
        self.values: list[mx.array | None] = [None] * n_layer
        self.length = 0

    def reset(self) -> None:
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)
        self.length = 0

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Append this chunk's keys/values for ``layer``; return all keys/values up to and including it."""
        if self.keys[layer] is not None:
            k = mx.concatenate([self.keys[layer], k], axis=2)  # (B, n_head, T_past + T, head_dim)
            v = mx.concatenate([self.values[layer], v], axis=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def causal_mask(n_queries: int, n_keys: int) -> mx.array:
    """Boolean ``(n_queries, n_keys)`` mask, True where a query may look (see ``lal.model.causal_mask``)."""
    offset = n_keys - n_queries  # the queries are the last n_queries positions
    query_pos = mx.arange(n_queries)[:, None] + offset  # (n_queries, 1)
    key_pos = mx.arange(n_keys)[None, :]  # (1, n_keys)
    return key_pos <= query_pos


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.attn_impl = config.attn_impl
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def __call__(
        self, x: mx.array, kv_cache: KVCache | None = None, layer: int = 0, return_weights: bool = False
    ) -> tuple[mx.array, mx.array | None]:
        B, T, C = x.shape  # batch, time (new positions), channels (n_embd)
        q, k, v = mx.split(self.c_attn(x), 3, axis=2)  # each (B, T, C)
        q = q.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)  # (B, n_head, T, head_dim)
        k = k.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)  # (B, n_head, T, head_dim)
        v = v.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)  # (B, n_head, T, head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, n_head, T_past + T, head_dim)

        # MLX's fused kernel has no dropout: with dropout on in training, the explicit path applies it.
        needs_dropout = self.training and self.dropout > 0
        if self.attn_impl == "explicit" or return_weights or needs_dropout:
            y, weights = self._explicit_attention(q, k, v)
        else:
            y, weights = self._fused_attention(q, k, v), None

        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y)), weights

    def _explicit_attention(self, q: mx.array, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """softmax(q kᵀ / √d, future masked) v, written out so the weights can be looked at."""
        attn_scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(self.head_dim)  # (B, n_head, T, T_total)
        mask = causal_mask(q.shape[2], k.shape[2])  # (T, T_total)
        attn_scores = mx.where(mask, attn_scores, -mx.inf)
        attn_weights = mx.softmax(attn_scores, axis=-1)  # each row sums to 1 over the keys
        y = self.attn_dropout(attn_weights) @ v  # (B, n_head, T, head_dim)
        return y, attn_weights

    def _fused_attention(self, q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        """The same computation in one fused kernel.

        MLX's ``"causal"`` mask aligns the last query with the last key, which is the offset mask a
        chunk after a KV cache needs, so one call covers the three cases of the PyTorch version.
        """
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask="causal")


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4×, GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approx="tanh")  # GPT-2's GELU (MLX also calls it "precise")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """One transformer block: pre-LayerNorm attention and MLP, each added to the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def __call__(
        self, x: mx.array, kv_cache: KVCache | None = None, layer: int = 0, return_weights: bool = False
    ) -> tuple[mx.array, mx.array | None]:
        attn_out, weights = self.attn(self.ln_1(x), kv_cache=kv_cache, layer=layer, return_weights=return_weights)
        x = x + attn_out  # the residual stream carries x forward; attention adds to it
        x = x + self.mlp(self.ln_2(x))
        return x, weights


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX`` (``F.cross_entropy``'s rule)."""
    logits = logits.reshape(-1, logits.shape[-1])  # (B·T, V)
    targets = targets.reshape(-1)  # (B·T,)
    keep = targets != IGNORE_INDEX
    losses = nn.losses.cross_entropy(logits, mx.where(keep, targets, 0), reduction="none")  # (B·T,)
    return (losses * keep).sum() / keep.sum()


class GPT(nn.Module):
    """The whole model: embeddings, a stack of blocks, a final LayerNorm and a tied output head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # A plain dict of modules, where PyTorch needs nn.ModuleDict: the same names either way.
        self.transformer = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
            drop=nn.Dropout(config.dropout),
            h=[Block(config) for _ in range(config.n_layer)],
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's initialisation (``mx.random``'s global seed decides the draw, as torch's does there)."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        new = []
        for name, param in tree_flatten(self.parameters()):
            if param.ndim == 2:  # Linear weights and both embedding tables
                std = residual_std if name.endswith("c_proj.weight") else INIT_STD
                new.append((name, std * mx.random.normal(param.shape)))
            elif name.endswith(".bias"):
                new.append((name, mx.zeros_like(param)))  # LayerNorm gains stay 1
        self.update(tree_unflatten(new))

    def __call__(
        self, idx: mx.array, targets: mx.array | None = None, kv_cache: KVCache | None = None
    ) -> tuple[mx.array, mx.array | None]:
        """Logits for every position, and the mean cross-entropy when ``targets`` are given.

        ``idx`` and ``targets`` are ``(B, T)`` integer arrays; targets equal to ``IGNORE_INDEX`` do
        not count. With a ``kv_cache``, ``idx`` holds only the new tokens.
        """
        logits, _ = self._forward(idx, kv_cache=kv_cache)
        loss = cross_entropy(logits, targets) if targets is not None else None
        return logits, loss

    def _forward(
        self, idx: mx.array, kv_cache: KVCache | None = None, return_weights: bool = False
    ) -> tuple[mx.array, list[mx.array]]:
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"The model sees at most {self.config.block_size} positions (block_size), but got "
                f"{start + T}. Crop the input to its last {self.config.block_size} tokens "
                "(lal.mlx.sample.generate does this for you)."
            )
        wte, wpe = self.transformer["wte"], self.transformer["wpe"]
        positions = mx.arange(start, start + T)  # (T,)
        x = wte(idx) + wpe(positions)  # (B, T, C)
        x = self.transformer["drop"](x)
        attention_weights = []
        for layer, block in enumerate(self.transformer["h"]):
            x, weights = block(x, kv_cache=kv_cache, layer=layer, return_weights=return_weights)
            if weights is not None:
                attention_weights.append(weights)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.transformer["ln_f"](x)
        return wte.as_linear(x), attention_weights  # logits: (B, T, vocab_size), through the tied table

    def attention_maps(self, idx: mx.array) -> list[mx.array]:
        """Attention weights of every layer for ``idx``: a list of ``(B, n_head, T, T)`` arrays."""
        _, weights = self._forward(idx, return_weights=True)
        return weights

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (the tied table counted once, as it is stored once)."""
        total = sum(param.size for _, param in tree_flatten(self.parameters()))
        if exclude_embeddings:
            total -= self.transformer["wte"].weight.size + self.transformer["wpe"].weight.size
        return total

    def flops_per_token(self, context_length: int | None = None) -> float:
        """Training FLOPs per token, by the formula of ``lal.model.GPT.flops_per_token`` (6N + 12·L·C·T)."""
        cfg = self.config
        T = context_length or cfg.block_size
        n_params = expected_parameters(cfg)["total"] - cfg.block_size * cfg.n_embd  # all but the position table
        return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * T
