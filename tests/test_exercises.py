"""The exercise machinery, in both directions.

* ``exercises/`` is exactly what ``tools/make_exercises.py`` generates from ``solutions/``;
* every solution passes its check;
* every generated stub fails its check with an ``AssertionError`` (not a crash);
* every deliberately broken implementation in ``tests/broken/`` fails its check with a message that
  matches the mistake it is named after (a pattern each one declares: see tests/broken/README.md).

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
import torch

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


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_check_a_key_result(path) -> None:
    """Beyond the checks, each solutions notebook compares a result CI can verify (nbval) and asserts it."""
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    checked = [source for source in cells if source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked, f"{path.name}: mark a cell whose output is a key result with # NBVAL_CHECK_OUTPUT"
    assert any("assert " in source for source in checked), f"{path.name}: assert the key result in its cell"


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


def _pattern_of(implementation) -> tuple:
    """(function, pattern): ``(function, "regex")`` in BROKEN, or a function with a ``match`` attribute."""
    if isinstance(implementation, tuple):
        function, pattern = implementation
    else:
        function, pattern = implementation, getattr(implementation, "match", None)
    return function, pattern


def _broken_implementations():
    params = []
    for module_path in sorted((ROOT / "tests" / "broken").glob("ch*.py")):
        spec = importlib.util.spec_from_file_location(f"broken_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for check_name, implementations in module.BROKEN.items():
            for implementation in implementations:
                function, pattern = _pattern_of(implementation)
                params.append(
                    pytest.param(check_name, function, pattern, id=f"{module_path.stem}:{check_name}:{function.__name__}")
                )
    return params


BROKEN = _broken_implementations()


def test_required_checks_have_broken_implementations() -> None:
    covered = {p.values[0] for p in BROKEN}
    required = {"check_cross_entropy", "check_bpe_merge", "check_causal_attention", "check_layer_norm"}
    assert required <= covered, f"no broken implementations for {sorted(required - covered)}"


def test_every_check_has_broken_implementations() -> None:
    checked = {check for path in SOLUTIONS for check, *_ in _exercises(path)}
    covered = {p.values[0] for p in BROKEN}
    assert checked <= covered, f"no broken implementations for {sorted(checked - covered)}"


@pytest.mark.parametrize("check_name, implementation, pattern", BROKEN)
def test_broken_implementation_fails_its_check(check_name, implementation, pattern) -> None:
    assert pattern, (
        f"{implementation.__name__}: declare the message its check must give, as "
        f"({implementation.__name__}, r\"pattern\") in BROKEN (see tests/broken/README.md)"
    )
    with pytest.raises(AssertionError, match=pattern) as failure:
        getattr(lal.checks, check_name)(implementation)
    assert "Traceback" not in str(failure.value)


def test_llama_reference_counts_real_modules() -> None:
    """The parameter-count check's arithmetic equals the parameters of real modules of that design."""
    from lal.checks.ch04 import llama_reference
    from lal.model import GPTConfig

    config, hidden = GPTConfig(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=12), 20
    C, V = config.n_embd, config.vocab_size
    linear = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
    block = lambda: torch.nn.ModuleDict({  # noqa: E731
        "attention": torch.nn.ModuleList([linear(C, C) for _ in range(4)]),
        "mlp": torch.nn.ModuleList([linear(C, hidden), linear(C, hidden), linear(hidden, C)]),
        "norms": torch.nn.ModuleList([torch.nn.RMSNorm(C), torch.nn.RMSNorm(C)]),
    })
    blocks = [block() for _ in range(config.n_layer)]
    numel = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    real = {
        "embeddings": numel([torch.nn.Embedding(V, C)]),
        "attention": numel([b["attention"] for b in blocks]),
        "mlp": numel([b["mlp"] for b in blocks]),
        "norms": numel([b["norms"] for b in blocks] + [torch.nn.RMSNorm(C)]),
        "head": numel([linear(C, V)]),
    }
    real["total"] = sum(real.values())
    assert llama_reference(config, hidden) == real


def _junk_answers():
    """Answers of the wrong kind: each must get an AssertionError from the check, never a crash inside it."""

    def returns_none(*args, **kwargs):
        return None

    def returns_text(*args, **kwargs):
        return "42"

    def returns_empty_tensor(*args, **kwargs):
        return torch.empty(0)

    def returns_integers(*args, **kwargs):
        return torch.zeros(2, 3, dtype=torch.long)

    def returns_nan(*args, **kwargs):
        return torch.tensor(float("nan"))

    def raises_key_error(*args, **kwargs):
        raise KeyError("oops")

    return [returns_none, returns_text, returns_empty_tensor, returns_integers, returns_nan, raises_key_error]


@pytest.mark.parametrize("check_name", sorted({p.values[1] for p in ALL_EXERCISES}))
@pytest.mark.parametrize("junk", _junk_answers(), ids=lambda f: f.__name__)
def test_a_wrong_kind_of_answer_gets_a_message_not_a_crash(check_name, junk) -> None:
    with pytest.raises(AssertionError) as failure:
        getattr(lal.checks, check_name)(junk)
    assert str(failure.value).strip(), "an empty message helps nobody"
