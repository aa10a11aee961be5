"""A GPT-2-style decoder-only transformer, small enough to read in one sitting.

The model is the one the course builds up to, chapter by chapter:

* token embeddings plus *learned* position embeddings (chapter 2),
* causal multi-head self-attention, with an explicit path you can read and plot and the fused
  ``F.scaled_dot_product_attention`` path that is fast; both give the same numbers (chapter 3),
* pre-LayerNorm blocks with a GELU MLP and residual connections (chapter 4),
* an output head that shares its weights with the token embedding ("weight tying"),
* GPT-2's initialisation, so the loss at step 0 is close to ln(vocab_size),
* a key/value cache so generation does not recompute the past at every step (chapter 6).

Sizes come from one table, :data:`PRESETS`, so every notebook, test and command speaks of the
same models by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Targets equal to this value are skipped by the loss (prompt tokens in fine-tuning, padding).
IGNORE_INDEX = -100

ATTENTION_IMPLEMENTATIONS = ("sdpa", "explicit")


@dataclass
class GPTConfig:
    """Everything needed to build a :class:`GPT`: the shape of the network, nothing about training."""

    vocab_size: int
    block_size: int = 256  # the longest context the model can see (number of positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    attn_impl: str = "sdpa"  # "sdpa" (fused, fast) or "explicit" (readable, returns weights)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head "
                f"gets n_embd / n_head dimensions. Try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))} "
                f"or an n_head that divides {self.n_embd}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.attn_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attn_impl!r}.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown GPTConfig fields {sorted(unknown)}; known fields are {sorted(known)}.")
        return cls(**values)


#: The named model sizes of the course. ``vocab_size`` comes from the tokenizer, so it is not here.
#: Character-level presets are for TinyShakespeare-sized text on a laptop; BPE presets grow up to
#: ``lal``, the size of GPT-2 small (124M parameters with GPT-2's 50,257-token vocabulary).
PRESETS: dict[str, dict[str, Any]] = {
    # name           layers heads width  context   ≈ parameters (char vocab 65 / BPE vocab as noted)
    "char-tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=64),  # ≈ 0.4M (fastest to 1.89 on a CPU)
    "char-small": dict(n_layer=6, n_head=6, n_embd=240, block_size=256),  # ≈ 4M
    # ≈ 10.7M: nanoGPT's shakespeare-char, dropout included (10M parameters overfit 1M characters without it)
    "char-medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "bpe-tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),  # ≈ 1M with a 2k vocabulary
    "bpe-small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # ≈ 11M with a 2k vocabulary
    "bpe-medium": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),  # ≈ 27M with a 4k vocabulary
    "lal": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # ≈ 124M with GPT-2's vocabulary
}


def preset_config(name: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    """Build the :class:`GPTConfig` of a named preset; ``overrides`` replace any of its fields."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return GPTConfig(vocab_size=vocab_size, **values)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generation only computes new ones.

    Memory is allocated once for the whole context: ``(n_layer, B, n_head, block_size, head_dim)``
    for keys and the same for values. ``length`` is how many positions are filled.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = config.block_size
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this chunk's keys/values for ``layer``; return all keys/values up to and including it."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]  # (B, n_head, end, head_dim)


def causal_mask(n_queries: int, n_keys: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(n_queries, n_keys)`` mask, True where a query may look.

    The queries are the *last* ``n_queries`` positions of the ``n_keys`` keys (with a KV cache the
    earlier keys come from the cache), so query ``i`` may see keys ``0 .. n_keys - n_queries + i``.
    """
    offset = n_keys - n_queries
    query_pos = torch.arange(n_queries, device=device).unsqueeze(1) + offset  # (n_queries, 1)
    key_pos = torch.arange(n_keys, device=device).unsqueeze(0)  # (1, n_keys)
    return key_pos <= query_pos


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.attn_impl = config.attn_impl
        self.dropout = config.dropout
        # One matmul makes queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape  # batch, time (new positions), channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, n_head, T_past + T, head_dim)

        if self.attn_impl == "explicit" or return_weights:
            y, weights = self._explicit_attention(q, k, v)
        else:
            y, weights = self._fused_attention(q, k, v), None

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y)), weights

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q kᵀ / √d, future masked) v, written out so the weights can be looked at."""
        attn_scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, n_head, T, T_total)
        mask = causal_mask(q.size(2), k.size(2), device=q.device)  # (T, T_total)
        attn_scores = attn_scores.masked_fill(~mask, float("-inf"))
        attn_weights = F.softmax(attn_scores, dim=-1)  # each row sums to 1 over the keys
        y = self.attn_dropout(attn_weights) @ v  # (B, n_head, T, head_dim)
        return y, attn_weights

    def _fused_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same computation in one fused kernel (FlashAttention on recent GPUs)."""
        dropout_p = self.dropout if self.training else 0.0
        T, T_total = q.size(2), k.size(2)
        if T == T_total:  # no cache, or the cache was empty: the usual square causal mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        if T == 1:  # one new token sees every cached position: nothing to mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        mask = causal_mask(T, T_total, device=q.device)  # a chunk after a cache: offset mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4×, GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """One transformer block: pre-LayerNorm attention and MLP, each added to the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.ln_1(x), kv_cache=kv_cache, layer=layer, return_weights=return_weights)
        x = x + attn_out  # the residual stream carries x forward; attention adds to it
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class GPT(nn.Module):
    """The whole model: embeddings, a stack of blocks, a final LayerNorm and a tied output head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use the same vectors. It saves
        # vocab_size × n_embd parameters and helps small models (Press & Wolf, 2017).
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the layers that write into the residual stream by 1/√(2·n_layer), so the
        # stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy when ``targets`` are given.

        ``idx`` and ``targets`` are ``(B, T)`` token ids; targets equal to ``IGNORE_INDEX`` do not
        count. With a ``kv_cache``, ``idx`` holds only the new tokens and positions continue from
        the cache's length.
        """
        logits, _ = self._forward(idx, kv_cache=kv_cache)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    def _forward(
        self, idx: torch.Tensor, kv_cache: KVCache | None = None, return_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"The model sees at most {self.config.block_size} positions (block_size), but got "
                f"{start + T}. Crop the input to its last {self.config.block_size} tokens "
                "(lal.sample.generate does this for you)."
            )
        positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        attention_weights = []
        for layer, block in enumerate(self.transformer.h):
            x, weights = block(x, kv_cache=kv_cache, layer=layer, return_weights=return_weights)
            if weights is not None:
                attention_weights.append(weights)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.transformer.ln_f(x)
        return self.lm_head(x), attention_weights  # logits: (B, T, vocab_size)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer for ``idx``: a list of ``(B, n_head, T, T)`` tensors."""
        _, weights = self._forward(idx, return_weights=True)
        return weights

    def new_kv_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache on the model's device and in its dtype."""
        reference = self.transformer.wte.weight
        return KVCache(self.config, batch_size, device=reference.device, dtype=reference.dtype)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (the tied head counted once). Excluding embeddings drops both tables."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return total

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay the matrices, not the biases or LayerNorm gains.

        Weight decay pulls weights towards zero. That regularises the matrices that mix features
        (linear layers and embeddings), but pulling a LayerNorm gain or a bias to zero only
        fights the normalisation, so 1-D parameters get none (as in GPT-2 and nanoGPT).
        """
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def flops_per_token(self, context_length: int | None = None) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's share.

        From the PaLM paper's appendix B, as nanoGPT estimates MFU: ``6N + 12·L·C·T`` with N the
        parameters that take part in matmuls (everything but the position table; the token table
        counts because the tied head multiplies by it), L layers, C width and T the context.
        """
        cfg = self.config
        T = context_length or cfg.block_size
        n_params = self.num_parameters() - self.transformer.wpe.weight.numel()
        return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * T


def count_parameters(model: GPT) -> dict[str, int]:
    """Parameters by part: embeddings, attention, MLP, norms, and the total (tied head counted once)."""
    parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0}
    for name, param in model.named_parameters():  # named_parameters lists a tied tensor once
        if name.startswith(("transformer.wte", "transformer.wpe")):
            parts["embeddings"] += param.numel()
        elif ".attn." in name:
            parts["attention"] += param.numel()
        elif ".mlp." in name:
            parts["mlp"] += param.numel()
        elif ".ln_" in name:
            parts["norms"] += param.numel()
        else:
            raise ValueError(f"Parameter {name} belongs to no known part.")
    parts["total"] = sum(parts.values())
    return parts


def expected_parameters(config: GPTConfig) -> dict[str, int]:
    """The same breakdown as :func:`count_parameters`, from the config alone (by arithmetic)."""
    C, L, b = config.n_embd, config.n_layer, int(config.bias)
    ln = C + b * C  # LayerNorm: a gain per channel, and a shift when biases are on
    parts = {
        "embeddings": config.vocab_size * C + config.block_size * C,
        "attention": L * ((C * 3 * C + b * 3 * C) + (C * C + b * C)),
        "mlp": L * ((C * 4 * C + b * 4 * C) + (4 * C * C + b * C)),
        "norms": (2 * L + 1) * ln,
    }
    parts["total"] = sum(parts.values())
    return parts
