"""The first cells of every course notebook, generated from one place.

Every chapter, solutions and exercises notebook opens with the same three cells: an "Open in
Colab" badge, a setup cell that installs the package on Colab before anything else is imported,
and an environment check. They are generated here from ``lal.REPOSITORY_URL`` and tagged
``lal-header``, so changing the repository address or the wording is one edit plus::

    python tools/notebook_cells.py            # rewrite the header cells of every notebook
    python tools/notebook_cells.py --check    # exit 1 if any notebook's header is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lal import REPOSITORY_URL  # noqa: E402

HEADER_TAG = "lal-header"
NOTEBOOK_FOLDERS = ("notebooks", "solutions", "exercises")
#: The kernelspec JupyterLab 4 writes for ipykernel's python3 kernel. Notebooks store exactly this,
#: so that opening one in JupyterLab does not change its metadata and mark it modified.
JUPYTERLAB_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def colab_url(relative_path: str) -> str:
    """Colab opens a notebook straight from GitHub: /github/<owner>/<repo>/blob/<branch>/<path>."""
    owner_repo = REPOSITORY_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/{relative_path}"


def badge_source(relative_path: str) -> str:
    return (
        f'<a href="{colab_url(relative_path)}" target="_parent">'
        '<img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'
    )


SETUP_SOURCE = f"""\
# Setup: on Google Colab, install the course package (about a minute). Elsewhere this does
# nothing: `make lab` has already installed it. Keep this cell first, before any other import.
import sys

if "google.colab" in sys.modules:
    %pip install --quiet "lal @ git+{REPOSITORY_URL}"
"""

ENVIRONMENT_SOURCE = """\
# Environment check: the Python, torch and lal this kernel sees, and the device it will use.
try:
    import lal.device
except ImportError as missing:
    raise ImportError(
        f"{missing}. This notebook's kernel runs {sys.executable}, which does not have the course "
        "installed. From the repository folder run `make lab` (it installs everything and starts "
        f"JupyterLab), or install into this kernel: {sys.executable} -m pip install -e ."
    ) from None
print(lal.device.describe_environment())
"""


def header_cells(relative_path: str) -> list[nbformat.NotebookNode]:
    """The three header cells for the notebook at ``relative_path`` (relative to the repository)."""
    cells = [
        nbformat.v4.new_markdown_cell(badge_source(relative_path)),
        nbformat.v4.new_code_cell(SETUP_SOURCE.rstrip("\n")),
        nbformat.v4.new_code_cell(ENVIRONMENT_SOURCE.rstrip("\n")),
    ]
    for cell in cells:
        cell.metadata["tags"] = [HEADER_TAG]
    return cells


def _is_header(cell: nbformat.NotebookNode) -> bool:
    return HEADER_TAG in cell.get("metadata", {}).get("tags", [])


def header_is_current(notebook: nbformat.NotebookNode, relative_path: str) -> bool:
    expected = [cell.source for cell in header_cells(relative_path)]
    found = [cell.source for cell in notebook.cells if _is_header(cell)]
    return found == expected and all(_is_header(c) for c in notebook.cells[: len(expected)])


def sync_header(path: Path) -> bool:
    """Put the current header cells at the top of ``path``; return True when the file changed.

    Existing header cells keep their outputs when their source is unchanged, so syncing an
    executed notebook does not erase what it printed.
    """
    relative = path.resolve().relative_to(ROOT).as_posix()
    notebook = nbformat.read(path, as_version=4)
    if header_is_current(notebook, relative):
        return False
    old_headers = {cell.source: cell for cell in notebook.cells if _is_header(cell)}
    new_headers = []
    for cell in header_cells(relative):
        previous = old_headers.get(cell.source)
        new_headers.append(previous if previous is not None else cell)
    notebook.cells = new_headers + [cell for cell in notebook.cells if not _is_header(cell)]
    nbformat.validator.normalize(notebook)
    nbformat.write(notebook, path)
    return True


def course_notebooks() -> list[Path]:
    return sorted(p for folder in NOTEBOOK_FOLDERS for p in (ROOT / folder).glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all course notebooks)")
    parser.add_argument("--check", action="store_true", help="report out-of-date headers, change nothing")
    args = parser.parse_args(argv)
    paths = args.paths or course_notebooks()
    stale = []
    for path in paths:
        relative = path.resolve().relative_to(ROOT).as_posix()
        if args.check:
            if not header_is_current(nbformat.read(path, as_version=4), relative):
                stale.append(relative)
        elif sync_header(path):
            print(f"updated {relative}")
    if stale:
        print("Out-of-date header cells (run `python tools/notebook_cells.py`):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
