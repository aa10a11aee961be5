"""The exercise machinery, in both directions.

* ``exercises/`` is exactly what ``tools/make_exercises.py`` generates from ``solutions/``;
* every solution passes its check;
* every generated stub fails its check with an ``AssertionError`` (not a crash);
* every deliberately broken implementation in ``tests/broken/`` fails its check.

An exercise is a solutions-notebook code cell holding ``### BEGIN SOLUTION``; its check is a later
cell calling ``lal.checks.check_<name>(<candidate>)``. Exercise cells run in a namespace with
``math``, ``torch``, ``torch.nn as nn``, ``torch.nn.functional as F`` and ``lal``, plus whatever the
notebook's cells tagged ``exercise-setup`` define.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

import lal.checks
from make_exercises import BEGIN, ROOT, expected_exercises

CHECK_CALL = re.compile(r"(?:lal\.checks\.)?(check_\w+)\((\w+)\)")
SETUP_TAG = "exercise-setup"
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def _exercises(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(check name, candidate name, solution cell source, setup sources) for each check in a notebook."""
    notebook = nbformat.read(path, as_version=4)
    setup = [c.source for c in notebook.cells if SETUP_TAG in c.metadata.get("tags", [])]
    found, last_solution_cells = [], []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            last_solution_cells.append(cell.source)
        for check_name, candidate in CHECK_CALL.findall(cell.source):
            defining = [s for s in last_solution_cells if re.search(rf"^def {candidate}\(", s, re.MULTILINE)]
            assert defining, f"{path.name}: no solution cell defines `{candidate}` for {check_name}"
            found.append((check_name, candidate, defining[-1], setup))
    return found


ALL_EXERCISES = [
    pytest.param(path, *exercise, id=f"{path.stem}:{exercise[0]}") for path in SOLUTIONS for exercise in _exercises(path)
]


def _define(source: str, setup: list[str], name: str):
    namespace: dict = {}
    exec("import math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\nimport lal", namespace)
    for cell in setup:
        exec(cell, namespace)
    exec(source, namespace)
    return namespace[name]


def test_exercises_are_generated_from_solutions() -> None:
    expected = expected_exercises()
    assert expected, "no solutions notebooks found"
    stale = [p.name for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"exercises/ is out of date for {stale}: run `make exercises`"


def test_every_chapter_has_exercises() -> None:
    assert len(ALL_EXERCISES) >= 3 * len(SOLUTIONS)


@pytest.mark.parametrize("path, check_name, candidate, source, setup", ALL_EXERCISES)
def test_solution_passes_its_check(path, check_name, candidate, source, setup, capsys) -> None:
    check = getattr(lal.checks, check_name)
    check(_define(source, setup, candidate))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("path, check_name, candidate, source, setup", ALL_EXERCISES)
def test_stub_fails_its_check(path, check_name, candidate, source, setup) -> None:
    exercises = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    stubs = [c.source for c in exercises.cells if c.cell_type == "code" and re.search(rf"^def {candidate}\(", c.source, re.MULTILINE)]
    assert stubs and "NotImplementedError" in stubs[-1]
    with pytest.raises(AssertionError, match="not written yet"):
        getattr(lal.checks, check_name)(_define(stubs[-1], setup, candidate))


def _broken_implementations():
    params = []
    for module_path in sorted((ROOT / "tests" / "broken").glob("ch*.py")):
        spec = importlib.util.spec_from_file_location(f"broken_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        messages = getattr(module, "MATCH", {})  # what the check must say about each mistake
        for check_name, implementations in module.BROKEN.items():
            for implementation in implementations:
                match = messages.get(implementation.__name__)
                params.append(pytest.param(check_name, implementation, match,
                                           id=f"{check_name}:{implementation.__name__}"))
    return params


BROKEN = _broken_implementations()


def test_required_checks_have_broken_implementations() -> None:
    covered = {p.values[0] for p in BROKEN}
    required = {"check_cross_entropy", "check_bpe_merge", "check_causal_attention", "check_layer_norm"}
    assert required <= covered, f"no broken implementations for {sorted(required - covered)}"


@pytest.mark.parametrize("check_name, implementation, match", BROKEN)
def test_broken_implementation_fails_its_check(check_name, implementation, match) -> None:
    with pytest.raises(AssertionError, match=match):
        getattr(lal.checks, check_name)(implementation)
