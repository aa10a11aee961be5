"""Torch's CPU threads follow the cores other programs leave free (lal/_cpu_load.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lal import _cpu_load


class FakeClock:
    """Wall time, our own CPU time and all CPU time on our cores, advanced by the test."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.own = 1.0
        self.busy = 50.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(_cpu_load, "_our_cores", lambda: [0, 1])
    monkeypatch.setattr(_cpu_load, "_busy_seconds", lambda cores: fake.busy)
    monkeypatch.setattr(_cpu_load.time, "monotonic", lambda: fake.wall)
    monkeypatch.setattr(_cpu_load.time, "process_time", lambda: fake.own)
    return fake


@pytest.mark.parametrize(
    ("own_cores", "other_cores", "free"),
    [(0.0, 0.0, 2), (2.0, 0.0, 2), (1.0, 0.1, 2), (2.0, 1.0, 1), (1.0, 2.0, 1), (0.5, 1.6, 1)],
)
def test_free_cores_subtract_only_other_programs(clock, own_cores, other_cores, free):
    load = _cpu_load.CpuLoad()
    clock.run(2.0, own_cores, other_cores)
    assert load.others_busy_cores() == pytest.approx(other_cores)
    clock.run(2.0, own_cores, other_cores)
    assert load.free_cores() == free


def test_unknown_load_gives_none(monkeypatch):
    monkeypatch.setattr(_cpu_load, "_busy_seconds", lambda cores: None)
    assert _cpu_load.CpuLoad().free_cores() is None


@pytest.fixture
def threads_restored(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LAL_NUM_THREADS", raising=False)
    monkeypatch.setattr(_cpu_load, "_load", None)
    monkeypatch.setattr(_cpu_load, "_threads_we_set", None)
    yield
    torch.set_num_threads(before)


def test_fit_threads_follows_load_and_respects_the_user(clock, threads_restored, monkeypatch):
    torch.set_num_threads(2)
    _cpu_load.start()
    clock.run(1.0, own_cores=1.0, other_cores=2.0)  # two busy programs beside us
    assert _cpu_load.fit_threads(min_window_s=0) == 1 == torch.get_num_threads()
    clock.run(1.0, own_cores=1.0, other_cores=0.0)  # they stopped
    assert _cpu_load.fit_threads(min_window_s=0) == 2 == torch.get_num_threads()

    torch.set_num_threads(1)  # the user decided: lal no longer changes it
    clock.run(1.0, own_cores=1.0, other_cores=0.0)
    assert _cpu_load.fit_threads(min_window_s=0) == 1

    monkeypatch.setattr(_cpu_load, "_threads_we_set", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    clock.run(1.0, own_cores=1.0, other_cores=0.0)
    assert _cpu_load.fit_threads(min_window_s=0) == 1


def test_lal_num_threads_fixes_the_count(clock, threads_restored, monkeypatch):
    monkeypatch.setenv("LAL_NUM_THREADS", "1")
    torch.set_num_threads(2)
    clock.run(1.0, own_cores=1.0, other_cores=0.0)
    assert _cpu_load.fit_threads(min_window_s=0) == 1 == torch.get_num_threads()


def test_thread_fitter_measures_at_most_once_per_interval(clock, monkeypatch):
    calls = []
    monkeypatch.setattr(_cpu_load, "fit_threads", lambda min_window_s: calls.append(clock.wall))
    fitter = _cpu_load.ThreadFitter(every_s=1.0)
    for _ in range(25):
        clock.run(0.1, 1.0, 0.0)
        fitter()
    assert len(calls) == 2


def test_openmp_threads_sleep_only_where_the_load_cannot_be_seen(monkeypatch):
    """Where the thread count cannot follow the load, spinning threads would take busy cores."""
    monkeypatch.setattr(_cpu_load, "_busy_seconds", lambda cores: None)  # no /proc/stat: macOS, Windows
    environ: dict[str, str] = {}
    _cpu_load.choose_wait_policy(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}  # the user's choice wins
    _cpu_load.choose_wait_policy(environ)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}
    monkeypatch.setattr(_cpu_load, "_busy_seconds", lambda cores: 12.5)  # the load is measured
    environ = {}
    _cpu_load.choose_wait_policy(environ)
    assert environ == {}  # OpenMP's default: spin for a moment, then sleep


def test_importing_lal_chooses_the_wait_policy_before_torch_loads():
    """OMP_WAIT_POLICY is read once, when torch loads OpenMP: it must be decided on `import lal`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import lal, os, sys; print(os.environ.get('OMP_WAIT_POLICY', 'default'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["default" if _cpu_load.can_measure_load() else "PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # the user's choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "False"]
