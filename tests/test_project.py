"""The project's set-up files agree with each other."""

from __future__ import annotations

import re
import tomllib

from notebook_cells import ROOT


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_environment_yml_has_the_same_dependencies_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= _names(extra)
    conda = set()
    environment = (ROOT / "environment.yml").read_text(encoding="utf-8")
    for line in environment.split("dependencies:", 1)[1].splitlines():
        match = re.match(r"\s+-\s+([A-Za-z0-9_.-]+)", line)
        if match and match.group(1) not in ("python", "pip"):
            conda.add(match.group(1).lower())
    conda = {"torch" if name == "pytorch" else name for name in conda}
    assert conda == declared


def test_ci_installs_the_cpu_torch_first_then_runs_the_readme_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ci.index("torch==2.13.0") < ci.index("make test")
    assert "make test" in readme and "make lab" in readme


def test_the_package_never_reads_the_shared_folder() -> None:
    for path in (ROOT / "lal").rglob("*.py"):
        assert "../shared" not in path.read_text(encoding="utf-8"), path
