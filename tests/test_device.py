"""Device choice and precision: CUDA, then MPS (torch ≥ 2.9 only), then CPU; bf16 / fp16 / float32."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch

from lal import device as lal_device
from lal.device import (
    autocast,
    autocast_dtype,
    compile_model,
    describe_environment,
    native_bf16,
    needs_grad_scaler,
    pick_device,
    precision_name,
    seed_everything,
)


@pytest.fixture
def hardware(monkeypatch):
    """Pretend hardware: set ``cuda``, ``mps``, ``bf16`` and ``torch_version`` on the returned object."""

    class Fake:
        cuda = False
        mps = False
        bf16 = True  # native bf16 (Ampere or newer); False is a T4 or a V100
        name = "NVIDIA A100-SXM4-80GB"
        torch_version = (2, 9)

    fake = Fake()

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        """torch's own contract: any CUDA GPU can *emulate* bf16, so the default answer is True there."""
        return fake.cuda and (fake.bf16 or including_emulation)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: fake.cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if fake.cuda else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: fake.name)
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
    hardware.cuda = True
    assert autocast_dtype("cuda") == torch.bfloat16
    assert not needs_grad_scaler("cuda")
    hardware.bf16, hardware.name = False, "Tesla T4"  # Colab's T4: bf16 only emulated
    assert torch.cuda.is_bf16_supported()  # what torch answers by default, and must not be trusted
    assert not native_bf16("cuda")
    assert autocast_dtype("cuda") == torch.float16
    assert needs_grad_scaler("cuda")
    assert not needs_grad_scaler("cpu")


def test_precision_can_be_chosen(hardware) -> None:
    hardware.cuda = True
    assert autocast_dtype("cuda", "fp16") == torch.float16 and needs_grad_scaler("cuda", "fp16")
    assert autocast_dtype("cuda", "fp32") is None and precision_name("cuda", "fp32") == "fp32"
    assert autocast_dtype("cpu", "bf16") == torch.bfloat16 and precision_name("cpu") == "fp32"
    assert needs_grad_scaler("cpu", "fp16")
    with pytest.raises(ValueError, match="Unknown precision 'half'.*bf16, fp16, fp32"):
        autocast_dtype("cuda", "half")


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_autocast_on_cuda_uses_the_chosen_dtype(hardware) -> None:
    hardware.cuda = True
    context = autocast("cuda")
    assert isinstance(context, torch.autocast) and context.device == "cuda"
    assert context.fast_dtype == torch.bfloat16
    hardware.bf16 = False
    assert autocast("cuda").fast_dtype == torch.float16
    assert autocast("cuda", "bf16").fast_dtype == torch.bfloat16  # asked for explicitly: emulated, but obeyed


def test_compile_without_triton_on_a_gpu_trains_uncompiled_and_says_so(hardware, monkeypatch) -> None:
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(lal_device, "triton_available", lambda: False)
    with pytest.warns(UserWarning, match="torch.compile needs Triton.*without compile"):
        assert compile_model(model, "cuda") is model
    compiled = compile_model(model, "cpu")  # the CPU compiler needs no Triton
    assert compiled is not model and compiled._orig_mod is model


def test_describe_environment_tells_a_t4_it_gets_fp16_with_a_scaler(hardware) -> None:
    hardware.cuda, hardware.bf16, hardware.name = True, False, "Tesla T4"
    assert "device  cuda (Tesla T4; no native bf16: fp16 autocast with a gradient scaler)" in describe_environment()
    hardware.bf16, hardware.name = True, "NVIDIA L4"
    assert "device  cuda (NVIDIA L4; bf16 autocast)" in describe_environment()


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


def test_environment_paths_outside_the_repository_and_home_keep_only_their_last_folders(monkeypatch, tmp_path) -> None:
    (tmp_path / "work" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "repo")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lal_device._short_path("/opt/conda/envs/lal") == os.path.join("…", "envs", "lal")
    assert lal_device._short_path(str(tmp_path / "home" / "venv")) == "~/venv"
    assert lal_device._short_path(str(tmp_path / "work" / "repo" / ".venv")) == ".venv"
