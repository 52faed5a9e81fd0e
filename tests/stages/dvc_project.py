"""Shared by the tests that run real `dvc repro` on a tiny copy of the project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


def merge_params(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, section by section; ``backbones`` is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "backbones":
            merged[key] = merge_params(base[key], value)
        else:
            merged[key] = value
    return merged


def venv_env() -> dict[str, str]:
    """The environment with this interpreter (the project's venv) first on PATH: stage
    commands call `python`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(cwd: Path, *args: str) -> str:
    """Run a command; its output, decoded leniently (it may print file names of any bytes)."""
    result = subprocess.run(args, cwd=cwd, env=venv_env(), capture_output=True, timeout=900)
    out = (result.stdout + result.stderr).decode("utf-8", "replace")
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{out}")
    return out


def stages_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def repro(project: Path, *targets: str) -> set[str]:
    return stages_ran(run(project, sys.executable, "-m", "dvc", "repro", *targets))


def make_project(
    project: Path, repo_root: Path, tiny: dict, copied: tuple[str, ...] = (), data: Callable[[Path], None] | None = None
) -> str:
    """A git + DVC repository at ``project``: dvc.yaml, stages/, src/ and ``copied`` from the
    repository, params.yaml with ``tiny`` merged in, ``data(project)`` for its dataset; then
    the first `dvc repro`. Returns that run's output."""
    for name in ("dvc.yaml", "stages", "src", *copied):
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, project / name)
    if data is not None:
        data(project)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(merge_params(params, tiny), sort_keys=False))
    run(project, "git", "init", "-q")
    run(project, "git", "config", "user.email", "test@example.com")
    run(project, "git", "config", "user.name", "test")
    run(project, sys.executable, "-m", "dvc", "init", "-q")
    run(project, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    (project / ".gitignore").write_text("/data/*\n!/data/external/\n/models/\n")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "init")
    return run(project, sys.executable, "-m", "dvc", "repro")
