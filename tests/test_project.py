"""The project's set-up files agree with each other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
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
    assert cpu_index < cpu.index('-e ".[notebooks]"')  # torch first, so the package does not pull the CUDA one
    assert "--quiet -e" not in cpu  # the long install shows its progress
    starts_lab = next(line for line in default.splitlines() if "jupyter lab" in line)
    assert starts_lab.endswith("--allow-root") == (os.geteuid() == 0)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_installs_what_the_notebooks_need_and_make_test_the_test_tools() -> None:
    lab = _make_dry_run("lab")
    assert '-e ".[notebooks]"' in lab and "test]" not in lab  # no pytest, nbval, transformers for a learner
    test = _make_dry_run("test")
    assert test.index('-e ".[notebooks]"') < test.index('-e ".[notebooks,test,mlx]"') < test.index("-m pytest")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_serves_the_repository_root_and_opens_chapter_1() -> None:
    """The chapters link to ../exercises/ and ../solutions/: JupyterLab must serve the folder above them."""
    starts_lab = next(line for line in _make_dry_run("lab").splitlines() if "jupyter lab" in line).split()
    assert "--ServerApp.root_dir=." in starts_lab
    opened = [word for word in starts_lab[2:] if not word.startswith("-")]
    assert opened == ["notebooks/01_next_token_prediction.ipynb"] and (ROOT / opened[0]).is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_runs_executes_every_chapter_that_saves_a_run_in_order() -> None:
    recipe = _make_dry_run("runs")
    executed = re.findall(r"notebooks/[0-9]{2}_\w+\.ipynb", recipe.split("for notebook in", 1)[1].split(";", 1)[0])
    training = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                      if "train_or_reuse" in path.read_text(encoding="utf-8"))
    assert executed == training and "notebooks/05_training.ipynb" in executed
    assert "LAL_REUSE_RUNS= " in recipe  # it trains even where the room's shell has LAL_REUSE_RUNS=1


UNREACHABLE_INDEX = "http://127.0.0.1:9/"  # port 9 (discard): nothing listens there


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_torch_cpu_stops_at_once_when_the_cpu_index_cannot_be_reached(tmp_path) -> None:
    venv = tmp_path / "venv"
    start = time.monotonic()
    completed = subprocess.run(["make", "install", "TORCH=cpu", f"CPU_TORCH_INDEX={UNREACHABLE_INDEX}", f"VENV={venv}"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    assert completed.returncode != 0
    assert seconds < 15, f"took {seconds:.0f} s to give up"
    assert not venv.exists()  # it stopped before creating anything
    ours = [line for line in completed.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1, completed.stderr  # one line, no traceback
    assert re.fullmatch(
        rf"Cannot install PyTorch's CPU build: {re.escape(UNREACHABLE_INDEX)}torch/ cannot be reached \(.*refused.*; "
        r"waited at most 10 s\)\. Set CPU_TORCH_INDEX to an index or mirror that serves PyTorch's CPU wheels "
        r"\(make lab TORCH=cpu CPU_TORCH_INDEX=https://\.\.\.\), or leave out TORCH=cpu to take torch from your "
        r"usual index\.", ours[0]), ours[0]


def test_the_cpu_index_check_passes_for_an_index_that_serves_torch(tmp_path) -> None:
    from check_torch_index import problem
    from local_server import LocalServer

    server = LocalServer({"/simple/torch/": (200, "text/html", b"<a href='torch-2.13.0+cpu.whl'>torch</a>")})
    try:
        assert problem(server.url("/simple")) is None
        assert problem(server.url("/simple/")) is None  # with or without the trailing slash
        assert problem(server.url("/other")) == f"{server.url('/other/torch/')} answered HTTP 404"
    finally:
        server.close()
    (tmp_path / "torch").mkdir()
    assert problem(tmp_path.as_uri()) is None  # a folder laid out as an index (pip download + a torch/ page)
    assert problem((tmp_path / "none").as_uri()) == f"the folder {tmp_path / 'none' / 'torch'} does not exist"
