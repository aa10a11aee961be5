"""Automatic checks for the exercises: ``lal.checks.check_<function>(your_function)``.

Each check runs your function on ordinary and edge cases, compares it with the reference in
``lal``, and either prints one success line or raises ``AssertionError`` explaining what is
wrong. One module per chapter.
"""

from lal.checks.ch01 import check_bigram_counts, check_bigram_probs, check_cross_entropy, check_sample_bigram
from lal.checks.ch02 import check_bpe_merge, check_embedding_lookup_as_matmul, check_get_pair_counts, check_train_bpe
from lal.checks.ch03 import check_average_past, check_causal_attention, check_merge_heads, check_split_heads
from lal.checks.ch04 import check_block_forward, check_count_gpt_parameters, check_gelu, check_layer_norm
from lal.checks.ch07 import check_pad_and_collate, check_sft_targets

__all__ = [
    # chapter 1: next-token prediction
    "check_bigram_counts",
    "check_bigram_probs",
    "check_cross_entropy",
    "check_sample_bigram",
    # chapter 2: tokens and embeddings
    "check_get_pair_counts",
    "check_bpe_merge",
    "check_train_bpe",
    "check_embedding_lookup_as_matmul",
    # chapter 3: attention
    "check_average_past",
    "check_split_heads",
    "check_merge_heads",
    "check_causal_attention",
    # chapter 4: the transformer block
    "check_gelu",
    "check_layer_norm",
    "check_block_forward",
    "check_count_gpt_parameters",
    # chapter 7: supervised fine-tuning
    "check_sft_targets",
    "check_pad_and_collate",
]
