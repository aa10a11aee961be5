"""Chapter 4's classic mistakes: every function here must fail its check, with the message its pattern names."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.functional import layer_norm as renamed_layer_norm

import lal.model
from lal.model import GPT as RenamedGPT

# --------------------------------------------------------------------------- layer_norm


def _x_hat(x, eps):
    """A correct normalisation, for the mistakes made around it."""
    mean = x.mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps)


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
    return _x_hat(x, 1e-5) * weight + bias


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
    return _x_hat(x, eps) + bias


def forgot_bias(x, weight, bias, eps=1e-5):
    """Normalises and scales but never shifts."""
    return _x_hat(x, eps) * weight


def bias_before_weight(x, weight, bias, eps=1e-5):
    """(x_hat + bias) * weight instead of x_hat * weight + bias."""
    return (_x_hat(x, eps) + bias) * weight


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


def calls_f_layer_norm(x, weight, bias, eps=1e-5):
    """F.layer_norm under another name."""
    return renamed_layer_norm(x, (x.size(-1),), weight, bias, eps)


def calls_torch_layer_norm(x, weight, bias, eps=1e-5):
    """torch.layer_norm, the same function in the torch namespace."""
    return torch.layer_norm(x, (x.size(-1),), weight, bias, eps)


def calls_nn_layer_norm(x, weight, bias, eps=1e-5):
    """nn.LayerNorm(...)(x) with the weights copied in."""
    norm = nn.LayerNorm(x.size(-1), eps=eps).to(x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    return norm(x)


# --------------------------------------------------------------------------- rms_norm


def _mean_square(x):
    return x.pow(2).mean(dim=-1, keepdim=True)


def subtracts_mean(x, weight, eps=1e-6):
    """Centres x first: LayerNorm without a shift, not RMSNorm."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(_mean_square(centred) + eps) * weight


def rms_eps_outside_sqrt(x, weight, eps=1e-6):
    """sqrt(mean(x²)) + eps instead of sqrt(mean(x²) + eps)."""
    return x / (torch.sqrt(_mean_square(x)) + eps) * weight


def sum_of_squares(x, weight, eps=1e-6):
    """The L2 norm: the sum of squares, not their mean."""
    return x / torch.sqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps) * weight


def no_square_root(x, weight, eps=1e-6):
    """Divides by the mean square itself."""
    return x / (_mean_square(x) + eps) * weight


def rms_over_dim0(x, weight, eps=1e-6):
    """Mean of squares down the columns."""
    return x / torch.sqrt(x.pow(2).mean(dim=0, keepdim=True) + eps) * weight


def rms_forgot_weight(x, weight, eps=1e-6):
    """Never multiplies by the gain."""
    return x / torch.sqrt(_mean_square(x) + eps)


def rms_hard_coded_eps(x, weight, eps=1e-6):
    """Always 1e-6, whatever eps the caller passes."""
    return x / torch.sqrt(_mean_square(x) + 1e-6) * weight


def rms_without_keepdim(x, weight, eps=1e-6):
    """mean(-1) without keepdim: a shape error."""
    return x / torch.sqrt(x.pow(2).mean(dim=-1) + eps) * weight


def calls_f_rms_norm(x, weight, eps=1e-6):
    """F.rms_norm."""
    return F.rms_norm(x, (x.size(-1),), weight, eps)


def calls_nn_rms_norm(x, weight, eps=1e-6):
    """nn.RMSNorm(...)(x) with the gain copied in."""
    norm = nn.RMSNorm(x.size(-1), eps=eps).to(x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm(x)


def calls_normalize(x, weight, eps=1e-6):
    """F.normalize(x) · √C: the L2-normalised vector, rescaled (and eps in the wrong place)."""
    return F.normalize(x, dim=-1) * math.sqrt(x.size(-1)) * weight


# --------------------------------------------------------------------------- swiglu_mlp


def _silu(z):
    return z * torch.sigmoid(z)


def silu_on_up(x, w_gate, w_up, w_down):
    """SiLU on the up projection instead of the gate."""
    return (_silu(x @ w_up) * (x @ w_gate)) @ w_down


def sigmoid_gate(x, w_gate, w_up, w_down):
    """sigmoid(z) instead of silu(z) = z · sigmoid(z): the original GLU."""
    return (torch.sigmoid(x @ w_gate) * (x @ w_up)) @ w_down


def relu_gate(x, w_gate, w_up, w_down):
    """ReLU on the gate."""
    return (torch.relu(x @ w_gate) * (x @ w_up)) @ w_down


def no_activation(x, w_gate, w_up, w_down):
    """No SiLU at all: a bilinear layer."""
    return ((x @ w_gate) * (x @ w_up)) @ w_down


def no_up_projection(x, w_gate, w_up, w_down):
    """silu(x @ w_gate) @ w_down: the second branch is missing."""
    return _silu(x @ w_gate) @ w_down


def adds_branches(x, w_gate, w_up, w_down):
    """Adds the two branches instead of multiplying them."""
    return (_silu(x @ w_gate) + x @ w_up) @ w_down


def no_down_projection(x, w_gate, w_up, w_down):
    """Returns the hidden (..., H) activations."""
    return _silu(x @ w_gate) * (x @ w_up)


def transposed_weights(x, w_gate, w_up, w_down):
    """Uses the weights nn.Linear's way round, x @ w.T: a shape error when H ≠ C."""
    return (_silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def calls_f_silu(x, w_gate, w_up, w_down):
    """F.silu."""
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


def calls_nn_silu(x, w_gate, w_up, w_down):
    """nn.SiLU()."""
    return (nn.SiLU()(x @ w_gate) * (x @ w_up)) @ w_down


def calls_gelu(x, w_gate, w_up, w_down):
    """F.gelu on the gate (GEGLU), which is also refused."""
    return (F.gelu(x @ w_gate) * (x @ w_up)) @ w_down


# --------------------------------------------------------------------------- count_llama_parameters


def _parts(config, mlp_hidden, **changes):
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    parts = {
        "embeddings": V * C,
        "attention": L * 4 * C * C,
        "mlp": L * 3 * C * mlp_hidden,
        "norms": (2 * L + 1) * C,
        "head": V * C,
    }
    parts.update(changes)
    parts["total"] = sum(parts.values())
    return parts


def counts_position_embeddings(config, mlp_hidden):
    """Adds block_size · C of position embeddings a rotary model does not have."""
    C = config.n_embd
    return _parts(config, mlp_hidden, embeddings=(config.vocab_size + config.block_size) * C)


def tied_head(config, mlp_hidden):
    """Counts the head as tied to the embedding (0), as in lal's GPT."""
    return _parts(config, mlp_hidden, head=0)


def two_mlp_matrices(config, mlp_hidden):
    """Counts a GELU MLP's two matrices instead of SwiGLU's three."""
    return _parts(config, mlp_hidden, mlp=config.n_layer * 2 * config.n_embd * mlp_hidden)


def four_c_hidden(config, mlp_hidden):
    """Uses the hidden width 4C instead of the mlp_hidden argument."""
    C = config.n_embd
    return _parts(config, mlp_hidden, mlp=config.n_layer * 3 * C * 4 * C)


def attention_biases(config, mlp_hidden):
    """Adds biases to the four attention projections."""
    C = config.n_embd
    return _parts(config, mlp_hidden, attention=config.n_layer * (4 * C * C + 4 * C))


def three_attention_matrices(config, mlp_hidden):
    """Counts q, k and v but not the output projection."""
    return _parts(config, mlp_hidden, attention=config.n_layer * 3 * config.n_embd ** 2)


def norms_with_shift(config, mlp_hidden):
    """Counts a gain and a shift per norm, as LayerNorm has."""
    return _parts(config, mlp_hidden, norms=(2 * config.n_layer + 1) * 2 * config.n_embd)


def no_final_norm(config, mlp_hidden):
    """Forgets the final norm before the head."""
    return _parts(config, mlp_hidden, norms=2 * config.n_layer * config.n_embd)


def total_off(config, mlp_hidden):
    """Right parts, but the total leaves out the head."""
    parts = _parts(config, mlp_hidden)
    parts["total"] -= parts["head"]
    return parts


def returns_floats(config, mlp_hidden):
    """Counts as floats (from a formula with a division)."""
    return {part: float(n) for part, n in _parts(config, mlp_hidden).items()}


def builds_gpt(config, mlp_hidden):
    """Builds lal's GPT (under another name) to count the shared parts."""
    small = lal.model.GPTConfig(vocab_size=config.vocab_size, block_size=1, n_layer=1, n_head=1, n_embd=1)
    RenamedGPT(small)
    return _parts(config, mlp_hidden)


def builds_modules(config, mlp_hidden):
    """Builds nn.Linear layers to count them."""
    C = config.n_embd
    per_block = sum(p.numel() for p in nn.Linear(C, C, bias=False).parameters()) * 4
    return _parts(config, mlp_hidden, attention=config.n_layer * per_block)


BROKEN = {
    "check_layer_norm": [
        (unbiased_variance, r"unbiased variance"),
        (std_plus_eps, r"unbiased variance.*x\.std\(\) \+ eps"),
        (eps_outside_sqrt, r"eps is outside the square root"),
        (ignores_eps, r"ignored eps"),
        (hard_coded_eps, r"use the `eps` argument"),
        (normalise_over_dim0, r"normalised over dim 0"),
        (normalise_over_everything, r"over all the elements at once"),
        (forgot_weight, r"gain \(weight\) is missing"),
        (forgot_bias, r"shift \(bias\) is missing"),
        (bias_before_weight, r"added bias before multiplying"),
        (mean_without_keepdim, r"keepdim=True"),
        (var_without_keepdim, r"keepdim=True"),
        (modifies_input_in_place, r"changed its input `x` in place"),
        (calls_f_layer_norm, r"does not allow"),
        (calls_torch_layer_norm, r"does not allow"),
        (calls_nn_layer_norm, r"does not allow"),
    ],
    "check_rms_norm": [
        (subtracts_mean, r"subtracted the mean"),
        (rms_eps_outside_sqrt, r"eps is outside the square root"),
        (sum_of_squares, r"sum of squares, not their mean"),
        (no_square_root, r"take its square root"),
        (rms_over_dim0, r"normalised over dim 0"),
        (rms_forgot_weight, r"gain \(weight\) is missing"),
        (rms_hard_coded_eps, r"use the `eps` argument"),
        (rms_without_keepdim, r"(?s)raised RuntimeError.*keepdim=True"),
        (calls_f_rms_norm, r"does not allow"),
        (calls_nn_rms_norm, r"does not allow"),
        (calls_normalize, r"does not allow"),
    ],
    "check_swiglu_mlp": [
        (silu_on_up, r"SiLU to the up projection"),
        (sigmoid_gate, r"sigmoid\(z\) instead of silu"),
        (relu_gate, r"ReLU on the gate"),
        (no_activation, r"no SiLU at all"),
        (no_up_projection, r"up projection is missing"),
        (adds_branches, r"added the two branches"),
        (no_down_projection, r"hidden width H"),
        (transposed_weights, r"(?s)raised RuntimeError.*the wrong way round"),
        (calls_f_silu, r"does not allow"),
        (calls_nn_silu, r"does not allow"),
        (calls_gelu, r"does not allow"),
    ],
    "check_count_llama_parameters": [
        (counts_position_embeddings, r"no position embeddings"),
        (tied_head, r"head is NOT tied"),
        (two_mlp_matrices, r"THREE matrices"),
        (four_c_hidden, r"not 4·C"),
        (attention_biases, r"No biases anywhere"),
        (three_attention_matrices, r"AND the output projection"),
        (norms_with_shift, r"gain but no shift"),
        (no_final_norm, r"final norm"),
        (total_off, r"sum of the five parts"),
        (returns_floats, r"counts are ints"),
        (builds_gpt, r"does not allow"),
        (builds_modules, r"does not allow"),
    ],
}
