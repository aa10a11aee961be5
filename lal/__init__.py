"""Lal: from next-character prediction to a small GPT you pretrain and fine-tune yourself.

The package is the course's reference implementation. Each chapter notebook builds one piece by
hand, checks it against the version here, and imports this version from then on.
"""

import os

from lal import _cpu_load  # imports nothing heavy: torch is not loaded yet

# How PyTorch's CPU threads (OpenMP) wait between operations is read once, when torch loads
# OpenMP, so it is decided here, before anything imports torch: threads that spin briefly where
# lal can see other programs' CPU use and fit the thread count to it, threads that sleep where
# it cannot (benchmarks/README.md has the measurements).
_cpu_load.choose_wait_policy(os.environ)
_cpu_load.start()  # the measurement of other programs' CPU use begins

__version__ = "0.1.0"

#: The one place the repository's address lives: Colab badges and setup cells are generated from it.
REPOSITORY_URL = "https://github.com/lal-course/lal"
