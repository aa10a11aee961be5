"""The project's set-up files agree with each other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib

import pytest

from notebook_cells import ROOT


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].strip().lower() for r in requirements}


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


def _requirement(text: str, extra: str | None = None) -> tuple[str, str, str | None]:
    """("torch", ">=2.4", None) from "torch>=2.4": name, specifier, extra (the package's own ``[extras]``
    and an environment marker after ``;`` are left out, as uv.lock records them apart)."""
    text = text.split("#")[0].split(";")[0].strip()
    name, specifier = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*)", text).groups()
    return name.lower().replace("_", "-"), specifier.replace(" ", ""), extra


def test_uv_lock_matches_pyproject() -> None:
    """uv.lock records the requirements it was resolved for; after editing pyproject.toml, run `uv lock`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        declared |= {_requirement(r, extra) for r in requirements}
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    lal = next(p for p in lock["package"] if p["name"] == "lal")
    locked = set()
    for entry in lal["metadata"]["requires-dist"]:
        extra = re.search(r"extra == '([^']+)'", entry.get("marker", ""))
        locked.add((entry["name"], entry.get("specifier", ""), extra.group(1) if extra else None))
    assert locked == declared, "uv.lock is out of date: run `uv lock` and commit uv.lock"
    assert lal["version"] == project["version"]
    uv = shutil.which("uv")
    if uv is not None:  # uv's own check too, where uv is installed (it needs no network with --offline)
        completed = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr


def _make_dry_run(*args: str) -> str:
    completed = subprocess.run(["make", "-n", "--always-make", *args, "VENV=/nonexistent/venv"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    return completed.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_installs_cpu_torch_on_request_and_starts_as_root() -> None:
    default = _make_dry_run("lab")
    assert "download.pytorch.org" not in default  # GPU owners keep PyPI's default build
    cpu = _make_dry_run("lab", "TORCH=cpu")
    cpu_index = cpu.index("--index-url https://download.pytorch.org/whl/cpu")
    assert cpu_index < cpu.index('-e ".[notebooks,test,mlx]"')  # torch first, so the package does not pull the CUDA one
    assert "--quiet -e" not in cpu  # the long install shows its progress
    starts_lab = next(line for line in default.splitlines() if "jupyter lab" in line)
    assert starts_lab.endswith("--allow-root") == (os.geteuid() == 0)
