"""Automatic checks for the exercises: ``lal.checks.check_<function>(your_function)``.

Each check runs your function on ordinary and edge cases, compares it with the reference in
``lal``, and either prints one success line or raises ``AssertionError`` explaining what is
wrong. One module per chapter.
"""

from lal.checks.ch01 import check_cross_entropy, check_label_smoothed_cross_entropy, check_sample_bigram
from lal.checks.ch02 import check_bpe_encode, check_bpe_merge, check_mean_embedding
from lal.checks.ch03 import check_cached_attention, check_causal_attention, check_sliding_window_attention
from lal.checks.ch04 import check_count_llama_parameters, check_layer_norm, check_rms_norm, check_swiglu_mlp
from lal.checks.ch05 import (
    check_adamw_update,
    check_clip_grad_norm,
    check_should_stop,
    check_smallest_diverging_lr,
    check_wsd_lr,
)
from lal.checks.ch06 import check_cached_greedy, check_min_p_filter, check_repetition_penalty, check_sequence_logprob
from lal.checks.ch07 import check_dpo_loss, check_encode_chat, check_mix_batches, check_pad_and_collate
from lal.checks.ch08 import check_accumulated_gradients, check_generation_mfu, check_training_memory

__all__ = [
    # chapter 1: next-token prediction
    "check_cross_entropy",
    "check_label_smoothed_cross_entropy",
    "check_sample_bigram",
    # chapter 2: tokens and embeddings
    "check_bpe_merge",
    "check_bpe_encode",
    "check_mean_embedding",
    # chapter 3: attention
    "check_causal_attention",
    "check_cached_attention",
    "check_sliding_window_attention",
    # chapter 4: the transformer block
    "check_layer_norm",
    "check_rms_norm",
    "check_swiglu_mlp",
    "check_count_llama_parameters",
    # chapter 5: training
    "check_clip_grad_norm",
    "check_wsd_lr",
    "check_adamw_update",
    "check_should_stop",
    "check_smallest_diverging_lr",
    # chapter 6: sampling
    "check_min_p_filter",
    "check_repetition_penalty",
    "check_sequence_logprob",
    "check_cached_greedy",
    # chapter 7: supervised fine-tuning
    "check_encode_chat",
    "check_pad_and_collate",
    "check_mix_batches",
    "check_dpo_loss",
    # chapter 8: the full run
    "check_training_memory",
    "check_generation_mfu",
    "check_accumulated_gradients",
]
