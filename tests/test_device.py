"""Device choice and precision: CUDA, then MPS (torch ≥ 2.9 only), then CPU; bf16 / fp16 / float32."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch

from lal import device as lal_device
from lal.device import autocast, autocast_dtype, describe_environment, needs_grad_scaler, pick_device, seed_everything


@pytest.fixture
def hardware(monkeypatch):
    """Pretend hardware: set ``cuda``, ``mps``, ``bf16`` and ``torch_version`` on the returned object."""

    class Fake:
        cuda = False
        mps = False
        bf16 = True
        torch_version = (2, 9)

    fake = Fake()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: fake.cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if fake.cuda else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: fake.bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: fake.mps)
    monkeypatch.setattr(lal_device, "torch_version", lambda: fake.torch_version)
    return fake


def test_auto_prefers_cuda_then_mps_then_cpu(hardware) -> None:
    assert pick_device() == torch.device("cpu")
    hardware.mps = True
    assert pick_device("auto") == torch.device("mps")
    hardware.cuda = True
    assert pick_device(None) == torch.device("cuda")


def test_mps_on_old_torch_falls_back_to_cpu_and_says_so(hardware) -> None:
    hardware.mps, hardware.torch_version = True, (2, 8)
    with pytest.warns(UserWarning, match=r"torch 2\.8 .*using the CPU"):
        assert pick_device() == torch.device("cpu")
    with pytest.warns(UserWarning, match="torch>=2.9"):
        assert pick_device("mps") == torch.device("cpu")


def test_explicit_choices(hardware) -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    hardware.cuda = True
    assert pick_device("CUDA") == torch.device("cuda")
    assert pick_device("cuda:0") == torch.device("cuda:0")


def test_unavailable_or_unknown_device_is_a_clear_error(hardware) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU.*device='auto'"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="no Apple GPU"):
        pick_device("mps")
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        pick_device("tpu")
    hardware.cuda = True
    with pytest.raises(ValueError, match="no cuda:3.*1 CUDA device"):
        pick_device("cuda:3")


def test_autocast_dtype_bf16_fp16_or_none(hardware) -> None:
    assert autocast_dtype("cpu") is None
    assert autocast_dtype("mps") is None
    assert autocast_dtype("cuda") == torch.bfloat16
    assert not needs_grad_scaler("cuda")
    hardware.bf16 = False  # e.g. Colab's T4
    assert autocast_dtype("cuda") == torch.float16
    assert needs_grad_scaler("cuda")
    assert not needs_grad_scaler("cpu")


def test_autocast_on_cpu_changes_nothing() -> None:
    a = torch.randn(4, 4)
    with autocast("cpu"):
        product = a @ a
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, a @ a, rtol=0, atol=0)


def test_seed_everything_repeats_every_generator() -> None:
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])


def test_describe_environment_names_the_essentials(hardware) -> None:
    text = describe_environment()
    assert f"torch   {torch.__version__}" in text
    assert "Python" in text and "lal" in text
    assert "device  cpu" in text and "no bf16" in text
    assert f"threads {torch.get_num_threads()}" in text


def test_describe_environment_names_the_environment_not_the_interpreter_alias(monkeypatch, hardware) -> None:
    lines = []
    for alias in ("python", "python3"):  # one environment, two names: the stored output must not change
        monkeypatch.setattr(sys, "executable", os.path.join(sys.prefix, "bin", alias))
        lines.append(describe_environment().splitlines()[0])
    assert lines[0] == lines[1]
    assert "environment" in lines[0] and "bin" not in lines[0]
