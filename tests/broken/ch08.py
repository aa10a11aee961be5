"""Chapter 8's classic mistakes: every function here must fail its check with the message its mistake deserves."""

import math

import torch

from lal.model import GPT, expected_parameters
from lal.plan import estimate_memory

# --------------------------------------------------------------------------- training_memory

STATES = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}


def _memory(config, dtype, optimizer, shards, *, states=None, shard_all=False, shard_state=True, extra=0, size=None):
    n = expected_parameters(config)["total"] + extra
    size = torch.empty((), dtype=dtype).element_size() if size is None else size
    states = STATES[optimizer] if states is None else states
    weights = (math.ceil(n / shards) if shard_all else n) * size
    optimizer_bytes = states * (math.ceil(n / shards) if shard_state else n) * size
    return {"weights": weights, "gradients": weights, "optimizer": optimizer_bytes,
            "total": 2 * weights + optimizer_bytes}


def adam_for_every_optimizer(config, dtype, optimizer, shards):
    """Counts AdamW's two moments whatever the optimiser."""
    return _memory(config, dtype, optimizer, shards, states=2)


def one_adam_moment(config, dtype, optimizer, shards):
    """One running average per parameter for every optimiser that keeps state."""
    return _memory(config, dtype, optimizer, shards, states=min(STATES[optimizer], 1))


def momentum_for_plain_sgd(config, dtype, optimizer, shards):
    """Gives plain SGD a momentum buffer."""
    return _memory(config, dtype, optimizer, shards, states=max(STATES[optimizer], 1))


def shards_everything(config, dtype, optimizer, shards):
    """Divides weights and gradients by the number of GPUs too (that is ZeRO stage 3, not 1)."""
    return _memory(config, dtype, optimizer, shards, shard_all=True)


def ignores_shards(config, dtype, optimizer, shards):
    """Every GPU keeps all the optimiser state."""
    return _memory(config, dtype, optimizer, shards, shard_state=False)


def four_bytes_always(config, dtype, optimizer, shards):
    """Assumes float32 whatever the dtype."""
    return _memory(config, dtype, optimizer, shards, size=4)


def head_counted_twice(config, dtype, optimizer, shards):
    """Counts the tied output head as a second vocab_size × n_embd matrix."""
    return _memory(config, dtype, optimizer, shards, extra=config.vocab_size * config.n_embd)


def megabytes(config, dtype, optimizer, shards):
    """Returns MiB instead of bytes."""
    return {part: value / 2**20 for part, value in _memory(config, dtype, optimizer, shards).items()}


def no_gradients(config, dtype, optimizer, shards):
    """Forgets that backward() stores a gradient per parameter."""
    parts = _memory(config, dtype, optimizer, shards)
    return {**parts, "gradients": 0, "total": parts["total"] - parts["gradients"]}


def builds_the_model(config, dtype, optimizer, shards):
    """Builds the model to count its parameters: the memory the exercise asks to predict."""
    GPT(config)
    return _memory(config, dtype, optimizer, shards)


def asks_the_plan(config, dtype, optimizer, shards):
    """Takes the answer from the plan's own estimate (lal.plan.estimate_memory)."""
    estimate = estimate_memory(config, 1, 1, "fp32")
    return {"weights": estimate.weights, "gradients": estimate.gradients, "optimizer": estimate.optimizer,
            "total": estimate.weights + estimate.gradients + estimate.optimizer}


# --------------------------------------------------------------------------- generation_mfu


def _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, *, per_param=2, attention=4, offset=1,
         with_wpe=False, layers=True, full_context=False):
    n = expected_parameters(config)["total"] - (0 if with_wpe else config.block_size * config.n_embd)
    positions = range(prompt_length, prompt_length + new_tokens)
    keys = sum(config.block_size if full_context else t + offset for t in positions) / new_tokens
    flops = per_param * n + attention * (config.n_layer if layers else 1) * config.n_embd * keys
    return tokens_per_second * flops / peak_flops


def training_flops(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """The chapter's training count 6N + 12LCT for a forward-only generation step."""
    n = expected_parameters(config)["total"] - config.block_size * config.n_embd
    return tokens_per_second * (6 * n + 12 * config.n_layer * config.n_embd * config.block_size) / peak_flops


def six_per_parameter(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Keeps the backward pass's 6 FLOPs per parameter."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, per_param=6)


def training_attention(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """12·C per attended position: forward and backward."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, attention=12)


def full_context_always(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Every token attends to block_size positions, as if the cache were full."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, full_context=True)


def off_by_one(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """The token at position t attends to t positions (forgets itself)."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, offset=0)


def no_attention(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """2N only."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, attention=0)


def counts_position_table(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Counts the position embeddings as matmul parameters."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, with_wpe=True)


def one_layer_of_attention(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """4·C·(t + 1) once instead of once per layer."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens, layers=False)


def last_token_only(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Uses the last new token's context for all of them."""
    return _mfu(tokens_per_second, config, peak_flops, prompt_length + new_tokens - 1, 1)


def percent(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Returns a percentage instead of a fraction."""
    return 100 * _mfu(tokens_per_second, config, peak_flops, prompt_length, new_tokens)


def uses_the_model(tokens_per_second, config, peak_flops, prompt_length, new_tokens):
    """Builds the model to call its flops_per_token."""
    return tokens_per_second * GPT(config).flops_per_token() / 3 / peak_flops


# --------------------------------------------------------------------------- accumulated_gradients


def _grads(model):
    return {name: param.grad for name, param in model.named_parameters()}


def _slices(x, y, k):
    size = x.shape[0] // k
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(k)]


def sums_the_losses(model, x, y, micro_batches):
    """backward() on each micro-batch's mean loss, not divided by their number."""
    model.zero_grad()
    for xb, yb in _slices(x, y, micro_batches):
        model(xb, yb)[1].backward()
    return _grads(model)


def zero_grad_inside_the_loop(model, x, y, micro_batches):
    """Resets .grad before every micro-batch: only the last one is left."""
    for xb, yb in _slices(x, y, micro_batches):
        model.zero_grad()
        (model(xb, yb)[1] / micro_batches).backward()
    return _grads(model)


def divides_by_windows_too(model, x, y, micro_batches):
    """Divides each mean loss by the windows of the micro-batch as well."""
    model.zero_grad()
    for xb, yb in _slices(x, y, micro_batches):
        (model(xb, yb)[1] / micro_batches / xb.shape[0]).backward()
    return _grads(model)


def keeps_stale_gradients(model, x, y, micro_batches):
    """Never zeroes .grad: an earlier step's gradients are added in."""
    for xb, yb in _slices(x, y, micro_batches):
        (model(xb, yb)[1] / micro_batches).backward()
    return _grads(model)


def whole_batch_at_once(model, x, y, micro_batches):
    """Runs the model on the whole batch: right gradients, but not accumulation."""
    model.zero_grad()
    model(x, y)[1].backward()
    return _grads(model)


def overwrites_with_autograd_grad(model, x, y, micro_batches):
    """torch.autograd.grad per micro-batch, each result overwriting the previous one."""
    params = dict(model.named_parameters())
    grads = {}
    for xb, yb in _slices(x, y, micro_batches):
        values = torch.autograd.grad(model(xb, yb)[1], list(params.values()))
        grads = dict(zip(params, values))
    return grads


def calls_lal_accumulation(model, x, y, micro_batches):
    """lal's own accumulation loop instead of one written by hand."""
    from lal.train import forward_backward

    model.zero_grad()
    forward_backward(model, iter(_slices(x, y, micro_batches)), micro_batches)
    return _grads(model)


#: What each failure must say (a regular expression searched in the check's message).
MATCH = {
    adam_for_every_optimizer: r"SGD with momentum keeps one number per parameter",
    one_adam_moment: r"AdamW keeps two numbers per parameter",
    momentum_for_plain_sgd: r"plain SGD \(momentum=0\) keeps no state",
    shards_everything: r"the optimiser state is sharded, not the weights",
    ignores_shards: r"divide the optimiser state by shards",
    four_bytes_always: r"4 bytes per number",
    head_counted_twice: r"tied to the token embedding",
    megabytes: r"return bytes, not megabytes",
    no_gradients: r"one gradient per parameter",
    builds_the_model: r"calls lal's GPT .*does not allow",
    asks_the_plan: r"calls lal.plan.estimate_memory.*does not allow",
    training_flops: r"you counted a training step",
    six_per_parameter: r"no backward pass, so 2",
    training_attention: r"not 12·C: that is forward \+ backward",
    full_context_always: r"not to a full block_size context",
    off_by_one: r"the t before it and itself",
    no_attention: r"attention term is missing",
    counts_position_table: r"position table takes part in no matmul",
    one_layer_of_attention: r"multiply by n_layer",
    last_token_only: r"not only the last one's",
    percent: r"percentage",
    uses_the_model: r"calls lal's GPT .*does not allow",
    sums_the_losses: r"without dividing",
    zero_grad_inside_the_loop: r"reset between micro-batches",
    divides_by_windows_too: r"divided each loss by the windows per micro-batch",
    keeps_stale_gradients: r"start with model.zero_grad\(\)",
    whole_batch_at_once: r"the whole batch never goes through the model at once",
    overwrites_with_autograd_grad: r"only the last micro-batch's gradient is left, at full size",
    calls_lal_accumulation: r"calls lal.train.forward_backward.*does not allow",
}

BROKEN = {
    "check_training_memory": [adam_for_every_optimizer, one_adam_moment, momentum_for_plain_sgd, shards_everything,
                              ignores_shards, four_bytes_always, head_counted_twice, megabytes, no_gradients,
                              builds_the_model, asks_the_plan],
    "check_generation_mfu": [training_flops, six_per_parameter, training_attention, full_context_always, off_by_one,
                             no_attention, counts_position_table, one_layer_of_attention, last_token_only, percent,
                             uses_the_model],
    "check_accumulated_gradients": [sums_the_losses, zero_grad_inside_the_loop, divides_by_windows_too,
                                    keeps_stale_gradients, whole_batch_at_once, overwrites_with_autograd_grad,
                                    calls_lal_accumulation],
}
BROKEN = {check: [(function, MATCH[function]) for function in functions] for check, functions in BROKEN.items()}
