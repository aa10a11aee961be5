"""Chapter 8's classic mistakes: every function here must fail its check with the message its mistake deserves."""

import torch

from lal.model import GPT, expected_parameters
from lal.plan import estimate_memory

# --------------------------------------------------------------------------- training_memory


def _n(config):
    return expected_parameters(config)["total"]


def _parts(weights, gradients, optimizer):
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer,
            "total": weights + gradients + optimizer}


def four_bytes_always(config, dtype):
    """Assumes float32 whatever the dtype."""
    n = _n(config)
    return _parts(4 * n, 4 * n, 8 * n)


def one_adam_moment(config, dtype):
    """Forgets that AdamW keeps two running averages per parameter."""
    size = torch.empty((), dtype=dtype).element_size()
    n = _n(config)
    return _parts(n * size, n * size, n * size)


def head_counted_twice(config, dtype):
    """Counts the tied output head as a second vocab_size × n_embd matrix."""
    size = torch.empty((), dtype=dtype).element_size()
    n = _n(config) + config.vocab_size * config.n_embd
    return _parts(n * size, n * size, 2 * n * size)


def megabytes(config, dtype):
    """Returns MiB instead of bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    n = _n(config) * size / 2**20
    return _parts(n, n, 2 * n)


def no_gradients(config, dtype):
    """Forgets that backward() stores a gradient per parameter."""
    size = torch.empty((), dtype=dtype).element_size()
    n = _n(config)
    return _parts(n * size, 0, 2 * n * size)


def builds_the_model(config, dtype):
    """Builds the model to count its parameters: the memory the exercise asks to predict."""
    n = GPT(config).num_parameters()
    size = torch.empty((), dtype=dtype).element_size()
    return _parts(n * size, n * size, 2 * n * size)


def asks_the_plan(config, dtype):
    """Takes the answer from the plan's own estimate (lal.plan.estimate_memory)."""
    estimate = estimate_memory(config, 1, 1, "fp32")
    return _parts(estimate.weights, estimate.gradients, estimate.optimizer)


# --------------------------------------------------------------------------- mfu


def _mfu(tokens_per_second, config, peak_flops, context_length=None, *, per_param=6, attention=12,
         with_wpe=False, layers=True, use_block_size=False):
    T = config.block_size if use_block_size or context_length is None else context_length
    n = expected_parameters(config)["total"] - (0 if with_wpe else config.block_size * config.n_embd)
    flops = per_param * n + attention * (config.n_layer if layers else 1) * config.n_embd * T
    return tokens_per_second * flops / peak_flops


def forward_only(tokens_per_second, config, peak_flops, context_length=None):
    """2 FLOPs per parameter: forgets the backward pass."""
    return _mfu(tokens_per_second, config, peak_flops, context_length, per_param=2, attention=4)


def no_attention_flops(tokens_per_second, config, peak_flops, context_length=None):
    """6N only: forgets q·kᵀ and the weighted sum of v."""
    return _mfu(tokens_per_second, config, peak_flops, context_length, attention=0)


def counts_position_table(tokens_per_second, config, peak_flops, context_length=None):
    """Counts the position embeddings as matmul parameters."""
    return _mfu(tokens_per_second, config, peak_flops, context_length, with_wpe=True)


def percent(tokens_per_second, config, peak_flops, context_length=None):
    """Returns a percentage instead of a fraction."""
    return 100 * _mfu(tokens_per_second, config, peak_flops, context_length)


def ignores_context_length(tokens_per_second, config, peak_flops, context_length=None):
    """Uses config.block_size even when the run used a shorter context."""
    return _mfu(tokens_per_second, config, peak_flops, context_length, use_block_size=True)


def attention_for_one_layer(tokens_per_second, config, peak_flops, context_length=None):
    """12·C·T once instead of once per layer."""
    return _mfu(tokens_per_second, config, peak_flops, context_length, layers=False)


def uses_the_model(tokens_per_second, config, peak_flops, context_length=None):
    """Builds the model to call its flops_per_token."""
    return tokens_per_second * GPT(config).flops_per_token(context_length) / peak_flops


# --------------------------------------------------------------------------- gpt2_to_lal

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _convert(state, *, transpose=CONV1D, prefix="transformer.", keep_masks=False, head=True):
    out = {}
    for name, tensor in state.items():
        if name.endswith(".attn.bias") and not keep_masks:
            continue
        out[prefix + name] = tensor.t() if name.endswith(transpose) else tensor
    if head:
        out["lm_head.weight"] = out[prefix + "wte.weight"]
    return out


def no_transpose(state):
    """Copies Conv1D weights as they are: (in, out) where nn.Linear wants (out, in)."""
    return _convert(state, transpose=())


def transposes_only_non_square(state):
    """Transposes when the shape does not fit, so the square attn.c_proj loads untransposed."""
    out = _convert(state, transpose=("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))
    return out


def keeps_mask_buffers(state):
    """Copies the h.N.attn.bias causal masks as if they were weights."""
    return _convert(state, keep_masks=True)


def no_prefix(state):
    """Keeps GPT-2's names: lal's start with 'transformer.'."""
    return _convert(state, prefix="")


def no_head(state):
    """Forgets lm_head.weight, the tied head."""
    return _convert(state, head=False)


def transposes_in_place(state):
    """Pops the masks out of the caller's dict."""
    for name in [n for n in state if n.endswith(".attn.bias")]:
        state.pop(name)
    return _convert(state)


def calls_the_library(state):
    """Calls lal's own converter."""
    from lal.model import GPTConfig
    from lal.pretrained import convert_gpt2_state_dict

    config = GPTConfig(vocab_size=state["wte.weight"].shape[0], block_size=state["wpe.weight"].shape[0],
                       n_layer=sum(1 for n in state if n.endswith("ln_1.weight")), n_head=1,
                       n_embd=state["wte.weight"].shape[1])
    return convert_gpt2_state_dict(state, config)


#: What each failure must say (a regular expression searched in the check's message).
MATCH = {
    four_bytes_always: r"4 bytes per number",
    one_adam_moment: r"two numbers per parameter",
    head_counted_twice: r"tied to the token embedding",
    megabytes: r"return bytes, not megabytes",
    no_gradients: r"one gradient per parameter",
    builds_the_model: r"calls lal's GPT .*does not allow",
    asks_the_plan: r"calls lal.plan.estimate_memory.*does not allow",
    forward_only: r"forward pass only",
    no_attention_flops: r"attention term .* is missing",
    counts_position_table: r"position table",
    percent: r"percentage",
    ignores_context_length: r"context_length",
    attention_for_one_layer: r"multiply by n_layer",
    uses_the_model: r"calls lal's GPT .*does not allow",
    no_transpose: r"Conv1D layers store the transpose",
    transposes_only_non_square: r"square matrix .* loads untransposed",
    keeps_mask_buffers: r"causal-mask buffers",
    no_prefix: r"start with 'transformer.'",
    no_head: r"lm_head.weight",
    transposes_in_place: r"changed the dict it was given",
    calls_the_library: r"calls lal.pretrained's loader.*does not allow",
}

BROKEN = {
    "check_training_memory": [four_bytes_always, one_adam_moment, head_counted_twice, megabytes, no_gradients,
                              builds_the_model, asks_the_plan],
    "check_mfu": [forward_only, no_attention_flops, counts_position_table, percent, ignores_context_length,
                  attention_for_one_layer, uses_the_model],
    "check_gpt2_to_lal": [no_transpose, transposes_only_non_square, keeps_mask_buffers, no_prefix, no_head,
                          transposes_in_place, calls_the_library],
}
BROKEN = {check: [(function, MATCH[function]) for function in functions] for check, functions in BROKEN.items()}
