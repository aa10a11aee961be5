"""Generate ``exercises/`` from ``solutions/``: the solutions notebooks are the single source.

In a solutions notebook, the code a learner must write sits between two marker lines::

    def cross_entropy(logits, targets):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

The exercises notebook is the same notebook with each such region replaced by a stub that raises
``NotImplementedError`` naming the exercise, cells tagged ``solution-only`` removed (worked
answers to the thinking questions, for instance), outputs cleared, and its own Colab badge::

    python tools/make_exercises.py            # write exercises/ (``make exercises``)
    python tools/make_exercises.py --check    # exit 1 if exercises/ is not what this would write
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notebook_cells import HEADER_TAG, ROOT, header_cells  # noqa: E402

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
SOLUTION_ONLY_TAG = "solution-only"
EXERCISE_HEADING = re.compile(r"^#+\s*Exercise\s+(\d+(?:\.\d+)*)", re.MULTILINE)
FUNCTION_DEF = re.compile(r"^\s*def\s+(\w+)\s*\(", re.MULTILINE)


def stub_region(source: str, exercise: str) -> str:
    """Replace every BEGIN/END SOLUTION region of a cell's source with a NotImplementedError stub."""
    lines = source.split("\n")
    out: list[str] = []
    inside = False
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"Nested '{BEGIN}' in a cell of exercise {exercise}.")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            defined = FUNCTION_DEF.findall("\n".join(lines[:number]))
            what = f"`{defined[-1]}`" if defined else "this cell"
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise}: write {what} here.")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"'{END}' without '{BEGIN}' in a cell of exercise {exercise}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"'{BEGIN}' without '{END}' in a cell of exercise {exercise}.")
    return "\n".join(out)


def exercises_notebook(solutions: nbformat.NotebookNode, exercises_path: str) -> nbformat.NotebookNode:
    """The exercises version of a solutions notebook (a new object; the input is not changed)."""
    notebook = copy.deepcopy(solutions)
    cells = []
    exercise = "?"
    new_header = iter(header_cells(exercises_path))
    for cell in notebook.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_ONLY_TAG in tags:
            continue
        if HEADER_TAG in tags:
            cell.source = next(new_header).source
        if cell.cell_type == "markdown":
            headings = EXERCISE_HEADING.findall(cell.source)
            exercise = headings[-1] if headings else exercise
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if BEGIN in cell.source:
                cell.source = stub_region(cell.source, exercise)
        cells.append(cell)
    notebook.cells = cells
    return notebook


def render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def expected_exercises() -> dict[Path, str]:
    """What every exercises notebook should contain, keyed by its path."""
    expected = {}
    for source in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        target = ROOT / "exercises" / source.name
        solutions = nbformat.read(source, as_version=4)
        expected[target] = render(exercises_notebook(solutions, f"exercises/{source.name}"))
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report stale exercises, write nothing")
    args = parser.parse_args(argv)
    expected = expected_exercises()
    stale = [path for path, text in expected.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    orphans = sorted(set((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb")) - set(expected))
    if args.check:
        problems = [f"out of date: {p.relative_to(ROOT)}" for p in stale]
        problems += [f"no solutions notebook for: {p.relative_to(ROOT)}" for p in orphans]
        if problems:
            print("exercises/ is not what solutions/ generates (run `make exercises`):\n  " + "\n  ".join(problems))
            return 1
        return 0
    (ROOT / "exercises").mkdir(exist_ok=True)
    for path in stale:
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    for path in orphans:
        print(f"warning: {path.relative_to(ROOT)} has no solutions notebook")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
