"""Execute course notebooks in place, top to bottom on a fresh kernel, and report their times.

    python tools/execute_notebooks.py                 # every chapter and solutions notebook
    python tools/execute_notebooks.py notebooks/03_attention.ipynb

Each notebook runs in its own folder (as in JupyterLab), its header cells are brought up to date
first, and the widget state and cell timestamps that executing stores in the notebook's metadata
are dropped afterwards: they change on every run (and the widgets need a live kernel anyway).
Cells that took 5 s or more are listed under each notebook's time. The kernelspec stored is the
one JupyterLab writes (``language_info`` comes from the kernel, as it does in JupyterLab), so
opening an executed notebook does not mark it modified.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notebook_cells import JUPYTERLAB_KERNELSPEC, ROOT, sync_header  # noqa: E402


#: Cells slower than this are listed under a notebook's time: where its budget goes.
SLOW_CELL_S = 5.0


def cell_seconds(cell: nbformat.NotebookNode) -> float | None:
    """How long a code cell took, from the timestamps nbclient records in its metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    def moment(stamp: str) -> datetime:  # "…Z": Python 3.10's fromisoformat wants "+00:00"
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (moment(end) - moment(start)).total_seconds()


def execute(path: Path, timeout_s: int) -> tuple[float, list[tuple[int, float, str]]]:
    """Run ``path`` in place; return the seconds it took and its slow cells (index, seconds, first line)."""
    sync_header(path)
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    seconds = time.perf_counter() - start
    slow = []
    for index, cell in enumerate(notebook.cells):
        took = cell_seconds(cell)
        if took is not None and took >= SLOW_CELL_S:
            slow.append((index, took, cell.source.splitlines()[0] if cell.source else ""))
        cell.get("metadata", {}).pop("execution", None)  # timestamps: they would change on every run
    notebook.metadata.pop("widgets", None)
    notebook.metadata["kernelspec"] = dict(JUPYTERLAB_KERNELSPEC)
    nbformat.write(notebook, path)
    return seconds, slow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/ and solutions/)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a cell may take (default 300)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
        (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")
    )
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)} (the chapters are notebooks/NN_*.ipynb)")
    for path in paths:
        seconds, slow = execute(path.resolve(), args.timeout)
        print(f"{seconds:6.1f} s  {path.resolve().relative_to(ROOT)}", flush=True)
        for index, took, first_line in slow:
            print(f"{took:14.1f} s  cell {index}: {first_line[:70]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
