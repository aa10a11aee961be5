"""Lal: from next-character prediction to a small GPT you pretrain and fine-tune yourself.

The package is the course's reference implementation. Each chapter notebook builds one piece by
hand, checks it against the version here, and imports this version from then on.
"""

import os

# PyTorch's CPU threads (OpenMP) busy-wait between operations by default. When other programs
# compete for the cores (a browser, a notebook server, a second kernel) the spinning threads take
# the cores they need and every small operation waits for a descheduled thread: training ran up to
# 15x slower. Sleeping threads cost nothing measurable on an idle machine (benchmarks/README.md).
# OpenMP reads this once, when torch loads it, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lal import _cpu_load  # noqa: E402  (starts the measurement of other programs' CPU use)

_cpu_load.start()

__version__ = "0.1.0"

#: The one place the repository's address lives: Colab badges and setup cells are generated from it.
REPOSITORY_URL = "https://github.com/lal-course/lal"
