"""Past one machine with DVC's own engines: a shared remote and a queue of experiments.

A team or CI shares results through a DVC remote (here a local folder; S3, GCS, SSH or
Azure work the same way): a second clone that pulls runs none of the work again. Sweeps go
through `dvc exp run --queue` and `dvc queue start -j N`, each experiment in its own
temporary copy of the repository, results in `dvc exp show`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dvc_project import make_project, repro, run, venv_env

pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"identities": 10, "images_per_identity": 6, "min_size": 64, "max_size": 72}},
    "split": {"ratios": [0.5, 0.25, 0.25]},
    "crop": {"preview_images": 2},
    "backbones": {
        "alexnet": {"weights": "none", "input_size": 64, "embedding_size": 16, "epochs": 1, "lr": 0.001, "batch_size": 16},
    },
    "embed": {"batch_size": 32, "device": "cpu"},
    "mlp": {"max_iter": 50},
    "evaluate": {"bootstrap": 20},
    "finetune": {"device": "cpu", "mask_augment_p": 0.0},
}


def dvc(project: Path, *args: str) -> str:
    return run(project, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root: Path) -> Path:
    project = tmp_path_factory.mktemp("team") / "project"
    project.mkdir()
    make_project(project, repo_root, TINY, copied=("data/external",))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "first run")
    return project


def test_second_clone_pulls_from_the_remote_and_reruns_nothing(project: Path, tmp_path: Path):
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-f", "-d", "shared", str(remote))
    dvc(project, "push")
    run(project, "git", "commit", "-qam", "the shared remote")
    assert any(remote.rglob("*")), "dvc push stored nothing in the remote"

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "models").exists()
    dvc(clone, "pull")
    assert (clone / "models" / "alexnet" / "backbone" / "model.pt").read_bytes() == (
        project / "models" / "alexnet" / "backbone" / "model.pt"
    ).read_bytes()
    # Only `scan` runs (always_changed: it re-lists the data folder); its table is the same,
    # so nothing after it does.
    assert repro(clone) == {"scan"}
    assert dvc(clone, "status").split() == ["scan:", "always", "changed"]


def test_queued_experiments_run_two_at_a_time_and_show_up(project: Path):
    for classifier in ("knn", "lda"):
        dvc(project, "exp", "run", "--queue", "-S", f"classifier={classifier}", "--name", f"with-{classifier}")
    # The workers outlive `dvc queue start` and would hold a captured pipe open: a log file instead.
    with open(project / "queue-start.log", "wb") as log:
        subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=project, stdout=log, stderr=subprocess.STDOUT,
            env=venv_env(),
            check=True, timeout=120,
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status")
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(2)
    assert "Failed" not in status, status
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    experiments = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs", []):
                data = revision.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                metrics = data.get("metrics", {}).get("metrics/evaluate.json", {}).get("data", {})
                experiments[revision.get("name")] = (params.get("classifier"), metrics)
    assert set(experiments) >= {"with-knn", "with-lda"}
    for name in ("with-knn", "with-lda"):
        classifier, metrics = experiments[name]
        assert classifier == name.removeprefix("with-")
        assert 0.0 <= metrics["alexnet"]["accuracy"] <= 1.0
    dvc(project, "queue", "stop", "--kill")
