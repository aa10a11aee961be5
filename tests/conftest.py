"""Shared test set-up: the repository's tools/ on the import path, and a data fixture."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests never open windows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="session")
def shakespeare() -> str:
    """TinyShakespeare's text, through the package's own loader (cache, LAL_DATA_DIR or download)."""
    from lal.data import load_text

    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread: as fast as several, and no stalls when other
    programs compete for the cores (the threads of one operation then wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
