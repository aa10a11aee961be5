"""``lal bench``: the peak each GPU is measured against, and the step that is timed."""

from __future__ import annotations

import pytest
import torch

from lal import bench
from lal.bench import benchmark, format_mfu, peak_tflops, table_peak_tflops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("name", "precision", "expected"),
    [
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40S", "bf16", 362.0),  # not the L4 (a substring match gave 3× too high an MFU)
        ("NVIDIA L40", "fp16", 181.0),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),  # the SXM card
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H100 NVL", "bf16", 835.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100 80GB PCIe", "fp32", 156.0),  # TF32
        ("NVIDIA A10G", "bf16", 70.0),
        ("NVIDIA A10", "bf16", 125.0),
        ("Tesla T4", "fp16", 65.0),
        ("Tesla V100-SXM2-16GB", "fp16", 125.0),
        ("Tesla V100-PCIE-32GB", "fp16", 112.0),
        ("NVIDIA GeForce RTX 3090", "bf16", 71.0),
        ("NVIDIA GeForce RTX 3090 Ti", "bf16", 80.0),
        ("NVIDIA GeForce RTX 4090", "fp16", 165.2),
        ("NVIDIA GeForce RTX 5090", "bf16", 209.5),
        ("Apple M2 Pro", "fp32", 6.8),
        ("Apple M1", "fp32", 2.6),
    ],
)
def test_the_datasheet_peak_is_chosen_by_exact_name_and_dtype(name: str, precision: str, expected: float) -> None:
    tflops, source = table_peak_tflops(name, precision)
    assert tflops == expected
    assert "datasheet" in source or "Apple" in source


@pytest.mark.parametrize(
    ("name", "precision"),
    [
        ("Tesla T4", "bf16"),  # no bf16 units: a datasheet fp16 figure would be wrong
        ("Tesla V100-SXM2-16GB", "bf16"),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", "bf16"),  # a laptop part is far slower than the desktop card
        ("NVIDIA RTX A2000", "bf16"),  # not in the table
        ("Apple M2 Pro", "bf16"),
    ],
)
def test_no_datasheet_peak_where_none_applies(name: str, precision: str) -> None:
    assert table_peak_tflops(name, precision) is None


def test_an_unknown_gpu_gets_a_measured_peak_and_says_so(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A2000 12GB")
    monkeypatch.setattr(bench, "_measured_peak", lambda device, precision: 24.5)
    tflops, source = peak_tflops(torch.device("cuda"), "bf16")
    assert tflops == 24.5
    assert source.startswith("measured: 4096² bf16 matmul") and "not in lal's table" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert peak_tflops(torch.device("cuda"), "bf16") == (362.0, "L40S datasheet, dense bf16")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert peak_tflops(torch.device("cuda"), "fp16") == (65.0, "T4 datasheet, dense fp16")
    assert peak_tflops(torch.device("cuda"), "bf16")[1].startswith("measured: 4096² bf16")


def test_a_small_mfu_is_never_shown_as_zero() -> None:
    assert format_mfu(0.00042) == "0.042 %"
    assert format_mfu(0.0) == "0 %"
    assert format_mfu(0.456) == "45.6 %"


def test_bench_times_the_training_step(monkeypatch) -> None:
    """The timed step is lal.train's: clipping runs (it is where the gradient norm is recorded)."""
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clipped.append(1) or real_clip(*a, **k))
    result = benchmark("char-tiny", batch_size=4, block_size=16, steps=3, warmup_steps=1, device="cpu")
    assert len(clipped) == 4  # one warm-up + three timed steps
    assert result.batch_size == 4 and result.block_size == 16 and result.precision == "fp32"
    assert result.tokens_per_s > 0 and 0 < result.mfu < 1
    assert result.peak_source.startswith("measured: 1024² fp32 matmul on this cpu")


def test_bench_refuses_zero_steps() -> None:
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        benchmark("char-tiny", steps=0, device="cpu")
