"""Execute course notebooks in place, top to bottom on a fresh kernel, and report their times.

    python tools/execute_notebooks.py                 # every chapter and solutions notebook
    python tools/execute_notebooks.py notebooks/03_attention.ipynb

Each notebook runs in its own folder (as in JupyterLab), its header cells are brought up to date
first, and the widget state that executing stores in the notebook's metadata is dropped
afterwards: it is large, changes on every run, and the widgets need a live kernel anyway. The
kernelspec stored is the one JupyterLab writes (``language_info`` comes from the kernel, as it does
in JupyterLab), so opening an executed notebook does not mark it modified.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notebook_cells import JUPYTERLAB_KERNELSPEC, ROOT, sync_header  # noqa: E402


def execute(path: Path, timeout_s: int) -> float:
    """Run ``path`` in place; return the seconds it took."""
    sync_header(path)
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    seconds = time.perf_counter() - start
    notebook.metadata.pop("widgets", None)
    notebook.metadata["kernelspec"] = dict(JUPYTERLAB_KERNELSPEC)
    nbformat.write(notebook, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/ and solutions/)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a cell may take (default 300)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
        (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")
    )
    for path in paths:
        seconds = execute(path.resolve(), args.timeout)
        print(f"{seconds:6.1f} s  {path.resolve().relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
