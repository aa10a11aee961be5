"""Chapter 4's classic mistakes: every function here must fail its check."""

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- gelu


def exact_erf_gelu(x):
    """The exact GELU (erf) where the tanh approximation was asked for."""
    return F.gelu(x)


def sigmoid_approximation(x):
    """The x·σ(1.702x) approximation instead of the tanh one."""
    return x * torch.sigmoid(1.702 * x)


def missing_cubic_term(x):
    """Forgets the 0.044715·x³ term."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x))


def two_over_pi(x):
    """Uses 2/π where √(2/π) belongs."""
    return 0.5 * x * (1 + torch.tanh(2 / math.pi * (x + 0.044715 * x**3)))


def relu_instead(x):
    """ReLU is not GELU."""
    return torch.relu(x)


def tanh_from_exp(x):
    """Writes tanh with exp(): exp overflows for large inputs and inf/inf is NaN."""
    z = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    tanh = (torch.exp(2 * z) - 1) / (torch.exp(2 * z) + 1)
    return 0.5 * x * (1 + tanh)


def float32_constant_tensor(x):
    """Returns float32 whatever the input's dtype."""
    return F.gelu(x.float(), approximate="tanh")


# --------------------------------------------------------------------------- layer_norm


def unbiased_variance(x, weight, bias, eps=1e-5):
    """torch.var's default divides by C − 1."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight + bias


def std_plus_eps(x, weight, bias, eps=1e-5):
    """x.std() is unbiased, and eps ends up outside the square root."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps) * weight + bias


def eps_outside_sqrt(x, weight, bias, eps=1e-5):
    """sqrt(var) + eps instead of sqrt(var + eps)."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / (torch.sqrt(var) + eps) * weight + bias


def ignores_eps(x, weight, bias, eps=1e-5):
    """No eps at all: a constant row gives 0/0 = NaN."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / x.var(-1, keepdim=True, unbiased=False).sqrt() * weight + bias


def hard_coded_eps(x, weight, bias, eps=1e-5):
    """Always 1e-5, whatever eps the caller passes."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, 1e-5)


def normalise_over_dim0(x, weight, bias, eps=1e-5):
    """Mean and variance down the columns instead of over each row."""
    mean = x.mean(0, keepdim=True)
    var = x.var(0, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def normalise_over_everything(x, weight, bias, eps=1e-5):
    """One mean and variance for the whole tensor."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * weight + bias


def forgot_weight(x, weight, bias, eps=1e-5):
    """Normalises and shifts but never scales."""
    return F.layer_norm(x, x.shape[-1:], None, None, eps) + bias


def forgot_bias(x, weight, bias, eps=1e-5):
    """Normalises and scales but never shifts."""
    return F.layer_norm(x, x.shape[-1:], None, None, eps) * weight


def bias_before_weight(x, weight, bias, eps=1e-5):
    """(x_hat + bias) * weight instead of x_hat * weight + bias."""
    return (F.layer_norm(x, x.shape[-1:], None, None, eps) + bias) * weight


def mean_without_keepdim(x, weight, bias, eps=1e-5):
    """mean(-1) without keepdim: a shape error, or silent wrong broadcasting on square inputs."""
    mean = x.mean(-1)
    var = x.var(-1, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def var_without_keepdim(x, weight, bias, eps=1e-5):
    """Only the variance lacks keepdim: it broadcasts along the features."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def modifies_input_in_place(x, weight, bias, eps=1e-5):
    """Subtracts the mean from the caller's tensor in place."""
    x -= x.mean(-1, keepdim=True)
    var = (x**2).mean(-1, keepdim=True)
    return x / torch.sqrt(var + eps) * weight + bias


# --------------------------------------------------------------------------- block_forward


def post_ln(x, ln_1, attn, ln_2, mlp):
    """The original Transformer's order: normalise after adding."""
    x = ln_1(x + attn(x))
    return ln_2(x + mlp(x))


def no_attention_residual(x, ln_1, attn, ln_2, mlp):
    """Attention's output replaces the stream instead of adding to it."""
    x = attn(ln_1(x))
    return x + mlp(ln_2(x))


def no_mlp_residual(x, ln_1, attn, ln_2, mlp):
    """The MLP's output replaces the stream instead of adding to it."""
    x = x + attn(ln_1(x))
    return mlp(ln_2(x))


def swapped_norms(x, ln_1, attn, ln_2, mlp):
    """ln_2 before attention and ln_1 before the MLP."""
    x = x + attn(ln_2(x))
    return x + mlp(ln_1(x))


def parallel_branches(x, ln_1, attn, ln_2, mlp):
    """Both branches read the block's input (GPT-J's layout, not GPT-2's)."""
    return x + attn(ln_1(x)) + mlp(ln_2(x))


def normalises_the_stream(x, ln_1, attn, ln_2, mlp):
    """Overwrites x with ln(x), so the residual carries the normalised stream."""
    x = ln_1(x)
    x = x + attn(x)
    x = ln_2(x)
    return x + mlp(x)


def one_residual_for_the_block(x, ln_1, attn, ln_2, mlp):
    """A single skip connection around attention and MLP together."""
    return x + mlp(ln_2(attn(ln_1(x))))


def adds_in_place(x, ln_1, attn, ln_2, mlp):
    """x += ... changes the caller's tensor."""
    x += attn(ln_1(x))
    x += mlp(ln_2(x))
    return x


# --------------------------------------------------------------------------- count_gpt_parameters


def _blocks(config, linear_bias=None, ln_params=None, mlp_hidden=None):
    C, L, b = config.n_embd, config.n_layer, int(config.bias)
    linear_bias = b if linear_bias is None else linear_bias
    ln = (C + b * C) if ln_params is None else ln_params
    hidden = 4 * C if mlp_hidden is None else mlp_hidden
    attention = L * (C * 3 * C + linear_bias * 3 * C + C * C + linear_bias * C)
    mlp = L * (C * hidden + linear_bias * hidden + hidden * C + linear_bias * C)
    return attention, mlp, (2 * L + 1) * ln


def _parts(embeddings, attention, mlp, norms):
    return {"embeddings": embeddings, "attention": attention, "mlp": mlp, "norms": norms,
            "total": embeddings + attention + mlp + norms}


def head_counted_twice(config):
    """Adds lm_head's vocab_size × n_embd although it is the token embedding."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    return _parts(V * C + T * C + V * C, *_blocks(config))


def head_in_total_only(config):
    """Parts right, but the total adds the tied head again."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    parts = _parts(V * C + T * C, *_blocks(config))
    parts["total"] += V * C
    return parts


def no_position_embeddings(config):
    """Forgets the learned position table (block_size × n_embd)."""
    V, C = config.vocab_size, config.n_embd
    return _parts(V * C, *_blocks(config))


def no_biases(config):
    """Counts Linear weights only, even when config.bias is True."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    return _parts(V * C + T * C, *_blocks(config, linear_bias=0))


def ignores_bias_flag(config):
    """Always counts biases and LayerNorm shifts, even when config.bias is False."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    return _parts(V * C + T * C, *_blocks(config, linear_bias=1, ln_params=2 * C))


def no_final_norm(config):
    """Forgets ln_f after the last block."""
    V, T, C, L = config.vocab_size, config.block_size, config.n_embd, config.n_layer
    attention, mlp, norms = _blocks(config)
    return _parts(V * C + T * C, attention, mlp, 2 * L * (C + int(config.bias) * C))


def layer_norm_gain_only(config):
    """Counts C per LayerNorm, forgetting the shift."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    return _parts(V * C + T * C, *_blocks(config, ln_params=C))


def mlp_not_widened(config):
    """Uses an MLP of width n_embd instead of 4 · n_embd."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    return _parts(V * C + T * C, *_blocks(config, mlp_hidden=C))


BROKEN = {
    "check_gelu": [
        exact_erf_gelu,
        sigmoid_approximation,
        missing_cubic_term,
        two_over_pi,
        relu_instead,
        tanh_from_exp,
        float32_constant_tensor,
    ],
    "check_layer_norm": [
        unbiased_variance,
        std_plus_eps,
        eps_outside_sqrt,
        ignores_eps,
        hard_coded_eps,
        normalise_over_dim0,
        normalise_over_everything,
        forgot_weight,
        forgot_bias,
        bias_before_weight,
        mean_without_keepdim,
        var_without_keepdim,
        modifies_input_in_place,
    ],
    "check_block_forward": [
        post_ln,
        no_attention_residual,
        no_mlp_residual,
        swapped_norms,
        parallel_branches,
        normalises_the_stream,
        one_residual_for_the_block,
        adds_in_place,
    ],
    "check_count_gpt_parameters": [
        head_counted_twice,
        head_in_total_only,
        no_position_embeddings,
        no_biases,
        ignores_bias_flag,
        no_final_norm,
        layer_norm_gain_only,
        mlp_not_widened,
    ],
}
