"""The GPT model: configuration errors, attention paths, the KV cache, parameter counts, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lal.model import (
    GPT,
    IGNORE_INDEX,
    PRESETS,
    GPTConfig,
    causal_mask,
    count_parameters,
    expected_parameters,
    preset_config,
)


def tiny_config(**overrides) -> GPTConfig:
    values = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**values, **overrides})


def twin_models(**overrides) -> tuple[GPT, GPT]:
    """The same weights behind the fused (SDPA) and the explicit attention path."""
    torch.manual_seed(0)
    fused = GPT(tiny_config(attn_impl="sdpa", **overrides)).eval()
    explicit = GPT(tiny_config(attn_impl="explicit", **overrides)).eval()
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


def test_n_embd_not_divisible_by_n_head_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(vocab_size=10, n_embd=100, n_head=3)


@pytest.mark.parametrize("field, value", [("vocab_size", 0), ("n_layer", -1), ("block_size", 2.5)])
def test_non_positive_sizes_are_rejected(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="char-tiny"):
        preset_config("gigantic", vocab_size=65)


def test_config_round_trips_through_a_dict() -> None:
    config = tiny_config(dropout=0.1, bias=False)
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown GPTConfig fields"):
        GPTConfig.from_dict({**config.to_dict(), "n_heads": 4})


def test_sdpa_path_equals_explicit_path() -> None:
    fused, explicit = twin_models()
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fused(idx)[0], explicit(idx)[0], atol=1e-5, rtol=1e-5)


def test_gradients_agree_between_attention_paths() -> None:
    fused, explicit = twin_models()
    idx = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(2))
    for model in (fused, explicit):
        model.zero_grad()
        model(idx, targets=idx.roll(-1, dims=1))[1].backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), explicit.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_future_does_not_change_the_past() -> None:
    """Causality: changing the last token changes no logits at earlier positions."""
    fused, _ = twin_models()
    idx = torch.randint(0, 37, (1, 10), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 37
    before, after = fused(idx)[0], fused(changed)[0]
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_causal_mask_with_an_offset() -> None:
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # Two new queries after three cached keys see the cache and their own past.
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_kv_cache_in_chunks_equals_one_full_pass(attn_impl: str) -> None:
    fused, explicit = twin_models()
    model = fused if attn_impl == "sdpa" else explicit
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(4))
    full = model(idx)[0]
    cache = model.new_kv_cache(batch_size=2)
    pieces = [model(idx[:, a:b], kv_cache=cache)[0] for a, b in [(0, 5), (5, 6), (6, 11), (11, 16)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 16
    cache.reset()
    assert cache.length == 0


def test_input_longer_than_the_context_is_a_clear_error() -> None:
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="at most 16 positions"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_kv_cache()
    model(torch.zeros(1, 16, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="Crop the input"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_attention_maps_are_causal_distributions() -> None:
    fused, _ = twin_models()
    idx = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(5))
    maps = fused.attention_maps(idx)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 9, 9)
    for weights in maps:
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))
        assert torch.all(weights.triu(diagonal=1) == 0)


def test_loss_at_initialisation_is_close_to_ln_vocab() -> None:
    """GPT-2's small init makes the first predictions nearly uniform: loss ≈ ln(V)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 65, (8, 64), generator=generator)
    targets = torch.randint(0, 65, (8, 64), generator=generator)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) / math.log(65) < 0.03


def test_ignored_targets_do_not_count() -> None:
    fused, _ = twin_models()
    idx = torch.randint(0, 37, (1, 8), generator=torch.Generator().manual_seed(6))
    targets = idx.roll(-1, dims=1)
    masked = targets.clone()
    masked[:, :5] = IGNORE_INDEX
    logits, loss = fused(idx, masked)
    expected = F.cross_entropy(logits[0, 5:], targets[0, 5:])
    torch.testing.assert_close(loss, expected)


def test_weight_tying_shares_one_tensor() -> None:
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_gpt2_initialisation_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=8, n_head=4, n_embd=256))
    proj = model.transformer.h[0].attn.c_proj.weight
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert abs(fc.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / math.sqrt(16)) < 0.001
    assert torch.all(model.transformer.h[0].mlp.c_fc.bias == 0)


@pytest.mark.parametrize("name", list(PRESETS))
def test_counted_parameters_equal_the_formula(name: str) -> None:
    vocab = 65 if name.startswith("char") else 50257 if name == "lal" else 2048
    config = preset_config(name, vocab_size=vocab)
    with torch.device("meta"):
        model = GPT(config)
    assert count_parameters(model) == expected_parameters(config)


def test_preset_sizes_match_their_names() -> None:
    millions = {}
    for name in PRESETS:
        vocab = 65 if name.startswith("char") else 50257 if name == "lal" else 2048
        millions[name] = expected_parameters(preset_config(name, vocab_size=vocab))["total"] / 1e6
    assert 0.3 < millions["char-tiny"] < 0.8
    assert 3.0 < millions["char-small"] < 5.0
    assert 9.0 < millions["char-medium"] < 12.0
    assert 123.0 < millions["lal"] < 125.0  # GPT-2 small: 124M
    assert millions["bpe-tiny"] < millions["bpe-small"] < millions["bpe-medium"] < millions["lal"]


def test_parameter_groups_decay_matrices_only() -> None:
    model = GPT(tiny_config())
    decay, no_decay = model.parameter_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_parameters()


def test_flops_per_token_follows_the_palm_formula() -> None:
    config = tiny_config()
    model = GPT(config)
    non_position = model.num_parameters() - config.block_size * config.n_embd
    assert model.flops_per_token() == 6 * non_position + 12 * 2 * 32 * 16
