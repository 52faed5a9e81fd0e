"""Figure 3: wall time of `dvc exp run -S classifier=knn` after a full `dvc repro`.

Runs in a scratch git + DVC repository holding a copy of the project (dvc.yaml, params.yaml,
stages, package sources), with the default params unless --params-override is given.

    .venv/bin/python benchmarks/incremental.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, machine


def run(project: Path, *args: str) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        for name in ("dvc.yaml", "params.yaml", "stages", "src", "data/external"):
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, project / name)
        (project / ".gitignore").write_text("/data/*\n!/data/external/\n/models/\n")
        for command in (["git", "init", "-q"], ["git", "config", "user.email", "b@example.com"], ["git", "config", "user.name", "b"],
                        [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
            run(project, *command)
        full, _ = run(project, sys.executable, "-m", "dvc", "repro")
        run(project, "git", "add", "-A")
        run(project, "git", "commit", "-qm", "full run")
        incremental, output = run(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "classifier=knn")
        ran = sorted(set(re.findall(r"Running stage '([^']+)'", output)))
    print(f"machine: {machine()}")
    print(f"full dvc repro                  : {full:7.1f} s")
    print(f"dvc exp run -S classifier=knn   : {incremental:7.1f} s ({incremental / full:.1%} of the full run; target < 10%)")
    print(f"stages rerun: {', '.join(ran)}")


if __name__ == "__main__":
    main()
