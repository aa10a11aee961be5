"""The notebooks as files: stored the way CI and learners need them.

Executing them is nbval's job (``make test`` runs ``pytest --nbval-lax notebooks solutions``);
these tests check what execution cannot: that the committed files were executed top to bottom,
carry no errors or machine-specific paths, open with the generated header cells, and are linked
from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import execute_notebooks
from notebook_cells import JUPYTERLAB_KERNELSPEC, ROOT, colab_url, course_notebooks, header_is_current

NOTEBOOKS = course_notebooks()
EXECUTED = [p for p in NOTEBOOKS if p.parent.name in ("notebooks", "solutions")]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MARKERS = ("NBVAL_CHECK_OUTPUT", "NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION")
MACHINE_PATH = re.compile(r"(/work/|/root/|/home/\w+/|/Users/\w+/|C:\\\\Users)")


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in paths]


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        for key, value in output.get("data", {}).items():
            if key.startswith("text/"):
                parts.append(value if isinstance(value, str) else "".join(value))
    return "".join(parts)


def test_the_first_four_chapters_exist() -> None:
    names = [p.name[:2] for p in CHAPTERS]
    assert names[:4] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_header_cells_are_generated(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert header_is_current(notebook, path.relative_to(ROOT).as_posix()), "run `make headers`"


@pytest.mark.parametrize("path", EXECUTED, ids=_ids(EXECUTED))
def test_executed_top_to_bottom_without_errors(path: Path) -> None:
    cells = _code_cells(path)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "execute on a fresh kernel, top to bottom (make notebooks)"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"stored error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_cells_store_no_execution_times(path: Path) -> None:
    """Timestamps change on every run: a re-executed notebook would differ where nothing did."""
    timed = [i for i, c in enumerate(nbformat.read(path, as_version=4).cells) if "execution" in c.get("metadata", {})]
    assert not timed, f"cells {timed[:5]} store execution times: execute with tools/execute_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_nbval_markers_sit_on_the_first_line(path: Path) -> None:
    for cell in _code_cells(path):
        lines = cell.source.splitlines()
        for number, line in enumerate(lines):
            if any(marker in line for marker in MARKERS) and line.lstrip().startswith("#"):
                assert number == 0, f"nbval reads markers on a cell's first line only:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", EXECUTED, ids=_ids(EXECUTED))
def test_outputs_hold_no_machine_paths(path: Path) -> None:
    for cell in _code_cells(path):
        found = MACHINE_PATH.search(_output_text(cell))
        assert not found, f"an output shows a path of the machine it ran on: {found.group(0)!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_links_to_its_exercises_and_readme_has_its_badge(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert f"../exercises/{path.name}" in text, "close the chapter with a link to its exercises"
    assert (ROOT / "exercises" / path.name).exists() and (ROOT / "solutions" / path.name).exists()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert colab_url(f"notebooks/{path.name}") in readme, "list the chapter in the README with its Colab badge"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_python3_kernel(path: Path) -> None:
    assert nbformat.read(path, as_version=4).metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapters_store_the_kernelspec_jupyterlab_writes(path: Path) -> None:
    # Anything else is rewritten when the notebook is opened, and the file shows as modified.
    metadata = nbformat.read(path, as_version=4).metadata
    assert dict(metadata.kernelspec) == JUPYTERLAB_KERNELSPEC, "execute with tools/execute_notebooks.py"
    assert metadata.language_info.name == "python"


def test_execute_notebooks_refuses_a_missing_path_in_one_line(capsys, tmp_path) -> None:
    present = ROOT / "notebooks" / "01_next_token_prediction.ipynb"
    before = present.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        execute_notebooks.main([str(present), str(tmp_path / "07_nope.ipynb")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"no such notebook: {tmp_path / '07_nope.ipynb'} (the chapters are notebooks/NN_*.ipynb)")
    assert present.read_bytes() == before  # refused before executing anything
