"""Shared test set-up: the repository's tools/ on the import path, data fixtures, one thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests never open windows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

#: The browser tests (tests/browser) need Chromium and Playwright: `make test-browser` runs them.
collect_ignore = [] if os.environ.get("LAL_BROWSER_TESTS") == "1" else ["browser"]
#: The GPU tests run where there is a CUDA GPU (`python -m pytest tests/test_cuda.py` on one); elsewhere
#: they are not collected, so a CPU run reports no skipped tests.
if not torch.cuda.is_available():
    collect_ignore.append("test_cuda.py")


#: Set by CI (``.ci/run``) when it provides the offline data: a test that needs that data then
#: fails instead of skipping, so a broken data set-up cannot pass as "skipped".
REQUIRE_OFFLINE_DATA = os.environ.get("LAL_REQUIRE_OFFLINE_DATA") == "1"


def skip_unless_available(available: bool, reason: str) -> None:
    """Skip when the data is missing here; fail when the run promised it (LAL_REQUIRE_OFFLINE_DATA=1)."""
    if available:
        return
    if REQUIRE_OFFLINE_DATA:
        pytest.fail(f"{reason} (LAL_REQUIRE_OFFLINE_DATA=1: this run promised the offline data)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    """TinyShakespeare's text, through the package's own loader (cache, LAL_DATA_DIR or download)."""
    from lal.data import load_text

    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread: as fast as several, and no stalls when other
    programs compete for the cores (the threads of one operation then wait for each other).
    OMP_NUM_THREADS tells lal's load-following thread count (lal/_cpu_load.py) to keep it: a
    count that changed between two runs would change their float rounding."""
    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if variable is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = variable
