"""Lal: from next-character prediction to a small GPT you pretrain and fine-tune yourself.

The package is the course's reference implementation. Each chapter notebook builds one piece by
hand, checks it against the version here, and imports this version from then on.
"""

__version__ = "0.1.0"

#: The one place the repository's address lives: Colab badges and setup cells are generated from it.
REPOSITORY_URL = "https://github.com/lal-course/lal"
