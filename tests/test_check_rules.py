"""The exercises' rules (``lal.checks.common.Forbidden``) cannot be dodged, and leave nothing behind.

A rule names what an exercise rebuilds; the checks run the learner's function under
``call(..., forbidden=[...])``. These tests call the obvious aliases a learner might reach for —
another import name, the ``torch`` or ``torch.special`` namespace, the tensor method, the C
binding, the ``nn`` module, the aten operator, a renamed or subclassed model class — and check that
each is refused with a message naming the rule, that allowed neighbours still work, and that no
profile hook or torch-function mode stays active after a refusal, even one the learner's code
tried to swallow.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.functional import layer_norm as ln
from torch.overrides import _get_current_function_mode_stack

import lal.model
from lal.checks.ch01 import NO_LIBRARY_CROSS_ENTROPY, NO_MULTINOMIAL
from lal.checks.ch02 import NO_LIBRARY_MERGE, _no_lookups
from lal.checks.ch03 import NO_LIBRARY_ATTENTION
from lal.checks.ch04 import NO_LIBRARY_ACTIVATION, NO_LIBRARY_LAYER_NORM, NO_LIBRARY_RMS_NORM, NO_MODEL_TO_COUNT
from lal.checks.common import Forbidden, call, canonical_name
from lal.model import GPT as RenamedGPT
from lal.model import GPTConfig
from lal.tokenizers import bpe_merge as renamed_merge

X = torch.randn(3, 4)
Q = torch.randn(1, 2, 5, 4)
TARGETS = torch.tensor([0, 3, 1])
WEIGHT = torch.randn(10, 4)
IDS = torch.tensor([[1, 2], [3, 9]])
TINY = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)


class SubclassedGPT(lal.model.GPT):
    """A learner's own class on top of GPT: its __init__ still runs GPT's."""


def _nn_layer_norm(x: torch.Tensor) -> torch.Tensor:
    return nn.LayerNorm(x.size(-1))(x)


DODGES = [  # (rule, what the learner's code does)
    (NO_LIBRARY_LAYER_NORM, lambda: ln(X, (4,))),
    (NO_LIBRARY_LAYER_NORM, lambda: torch.layer_norm(X, (4,))),
    (NO_LIBRARY_LAYER_NORM, lambda: torch.nn.functional.layer_norm(X, (4,))),
    (NO_LIBRARY_LAYER_NORM, lambda: _nn_layer_norm(X)),
    (NO_LIBRARY_LAYER_NORM, lambda: torch.ops.aten.native_layer_norm(X, [4], None, None, 1e-5)),
    (NO_LIBRARY_RMS_NORM, lambda: nn.RMSNorm(4)(X)),
    (NO_LIBRARY_RMS_NORM, lambda: F.normalize(X, dim=-1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: X.log_softmax(dim=1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: torch.log_softmax(X, dim=1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: torch.special.log_softmax(X, dim=1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: torch.special.logsumexp(X, dim=1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: X.logsumexp(dim=1)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: torch.ops.aten._log_softmax(X, 1, False)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: nn.CrossEntropyLoss()(X, TARGETS)),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: F.nll_loss(X, TARGETS)),
    (NO_LIBRARY_ATTENTION, lambda: F.scaled_dot_product_attention(Q, Q, Q, is_causal=True)),
    (NO_LIBRARY_ATTENTION, lambda: torch._C._nn.scaled_dot_product_attention(Q, Q, Q, is_causal=True)),
    (NO_LIBRARY_ATTENTION, lambda: lal.model.causal_mask(5, 5)),
    (NO_LIBRARY_ACTIVATION, lambda: nn.SiLU()(X)),
    (NO_LIBRARY_ACTIVATION, lambda: torch._C._nn.silu(X)),
    (NO_LIBRARY_ACTIVATION, lambda: nn.GELU(approximate="tanh")(X)),
    (NO_MULTINOMIAL, lambda: torch.distributions.Categorical(logits=X).sample()),
    (NO_LIBRARY_MERGE, lambda: renamed_merge([1, 2, 3], (1, 2), 9)),
    (NO_MODEL_TO_COUNT, lambda: RenamedGPT(TINY)),
    (NO_MODEL_TO_COUNT, lambda: SubclassedGPT(TINY)),
    (NO_MODEL_TO_COUNT, lambda: nn.Linear(4, 4)),
    (_no_lookups(WEIGHT), lambda: WEIGHT[IDS]),
    (_no_lookups(WEIGHT), lambda: WEIGHT[3]),
    (_no_lookups(WEIGHT), lambda: WEIGHT[[1, 2]]),
    (_no_lookups(WEIGHT), lambda: WEIGHT.double()[IDS]),
    (_no_lookups(WEIGHT), lambda: F.embedding(IDS, WEIGHT)),
    (_no_lookups(WEIGHT), lambda: torch.embedding(WEIGHT, IDS)),
    (_no_lookups(WEIGHT), lambda: WEIGHT.index_select(0, IDS.flatten())),
    (_no_lookups(WEIGHT), lambda: torch.take(WEIGHT, IDS)),
    (_no_lookups(WEIGHT), lambda: WEIGHT.gather(0, IDS)),
]


def _rules(rule: Forbidden | list[Forbidden]) -> list[Forbidden]:
    return rule if isinstance(rule, list) else [rule]


def _assert_nothing_left_behind(previous_profile=None) -> None:
    assert sys.getprofile() is previous_profile, "a profile hook stayed active after the check"
    assert not _get_current_function_mode_stack(), "a TorchFunctionMode stayed active after the check"


@pytest.mark.parametrize("rule, dodge", DODGES, ids=[f"{i}" for i in range(len(DODGES))])
def test_aliases_are_refused_and_nothing_is_left_behind(rule, dodge) -> None:
    with pytest.raises(AssertionError, match="which this exercise does not allow") as refused:
        call(lambda: dodge(), "learner", forbidden=_rules(rule))
    assert str(refused.value).startswith("`learner` calls "), "the message names the learner's function"
    _assert_nothing_left_behind()


@pytest.mark.parametrize("rule, dodge", DODGES[:3] + DODGES[-6:-4], ids=["ln", "torch_ln", "F_ln", "gpt", "subclass"])
def test_a_swallowed_refusal_is_still_reported(rule, dodge) -> None:
    def swallows():
        try:
            dodge()
        except Exception:  # the learner's broad except: the refusal must not disappear with it
            pass
        return X

    with pytest.raises(AssertionError, match="does not allow"):
        call(swallows, "learner", forbidden=_rules(rule))
    _assert_nothing_left_behind()


def test_a_previous_profile_hook_is_restored() -> None:
    calls = []

    def outer_profile(frame, event, arg):  # a debugger or coverage tool the learner runs under
        calls.append(event)

    sys.setprofile(outer_profile)
    try:
        with pytest.raises(AssertionError, match="does not allow"):
            call(lambda: RenamedGPT(TINY), "learner", forbidden=[NO_MODEL_TO_COUNT])
        _assert_nothing_left_behind(outer_profile)
    finally:
        sys.setprofile(None)


def test_other_failures_leave_nothing_behind_either() -> None:
    def crashes():
        raise ValueError("the learner's own bug")

    with pytest.raises(AssertionError, match="raised ValueError"):
        call(crashes, "learner", forbidden=[NO_MODEL_TO_COUNT, NO_LIBRARY_LAYER_NORM])
    _assert_nothing_left_behind()


ALLOWED = [  # (rule, what a correct answer does): the neighbours of a forbidden function stay usable
    (NO_LIBRARY_CROSS_ENTROPY, lambda: torch.log(torch.exp(X - X.max(dim=1, keepdim=True).values).sum(dim=1))),
    (NO_LIBRARY_CROSS_ENTROPY, lambda: F.softmax(X, dim=1)),
    (NO_LIBRARY_ATTENTION, lambda: F.softmax(Q @ Q.transpose(-2, -1), dim=-1) @ Q),
    (NO_LIBRARY_LAYER_NORM, lambda: X.var(dim=-1, unbiased=False, keepdim=True)),
    (NO_LIBRARY_ACTIVATION, lambda: X * torch.sigmoid(X)),
    (_no_lookups(WEIGHT), lambda: F.one_hot(IDS, 10).float().sum(dim=1) @ WEIGHT),
    (_no_lookups(WEIGHT), lambda: WEIGHT[:, :2]),
    (_no_lookups(WEIGHT), lambda: torch.zeros(2, 10).index_add_(1, IDS[0], torch.ones(2, 2))),
    (NO_MODEL_TO_COUNT, lambda: TINY.n_embd * TINY.vocab_size),
]


@pytest.mark.parametrize("rule, allowed", ALLOWED, ids=[f"{i}" for i in range(len(ALLOWED))])
def test_what_the_exercise_needs_is_allowed(rule, allowed) -> None:
    call(lambda: allowed(), "learner", forbidden=_rules(rule))
    _assert_nothing_left_behind()


def test_canonical_names_catch_private_and_operator_spellings() -> None:
    assert canonical_name("special_log_softmax") == "log_softmax"
    assert canonical_name("_log_softmax") == "log_softmax"
    assert canonical_name("log_softmax.int") == "log_softmax"
    assert canonical_name("native_layer_norm") == "layer_norm"
    assert canonical_name("layer_norm") == "layer_norm"
