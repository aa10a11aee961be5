"""``python -m lal`` is the same as the ``lal`` command."""

from lal.cli import main

raise SystemExit(main())
