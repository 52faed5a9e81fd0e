"""The real DVC pipeline on a tiny synthetic dataset: what reruns when a param changes.

These run `dvc repro` in a scratch git repository holding a copy of the project's
dvc.yaml, stages and package, with params shrunk so that the whole chain takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import make_project, repro, stages_ran

pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"identities": 12, "images_per_identity": 6, "min_size": 64, "max_size": 72}},
    "split": {"ratios": [0.5, 0.25, 0.25]},
    "crop": {"preview_images": 4},
    "backbones": {
        "alexnet": {"weights": "none", "input_size": 64, "embedding_size": 16, "epochs": 1, "lr": 0.001, "batch_size": 16},
        "facenet": {"weights": "none", "input_size": 80, "embedding_size": 16, "epochs": 1, "lr": 0.001, "batch_size": 16},
    },
    "embed": {"batch_size": 32, "device": "cpu"},
    "mlp": {"max_iter": 50},
    "evaluate": {"bootstrap": 50},
    "finetune": {"device": "cpu", "mask_augment_p": 0.0},
}








def _set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root: Path) -> Path:
    project = tmp_path_factory.mktemp("pipeline")
    output = make_project(project, repo_root, TINY, copied=("data/external",))
    assert stages_ran(output) == {
        "scan", "split", "crop@alexnet", "crop@facenet", "finetune@alexnet", "finetune@facenet",
        "embed@alexnet", "embed@facenet", "classify@alexnet", "classify@facenet", "evaluate",
    }
    return project




def test_full_run_writes_metrics_and_plots(project: Path):
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert set(metrics) == {"alexnet", "facenet", "recommended"}
    assert metrics["recommended"]["backbone"] in ("alexnet", "facenet")
    assert (project / "models" / metrics["recommended"]["backbone"] / "classifier" / "classifier.json").is_file()
    for backbone in (metrics["alexnet"], metrics["facenet"]):
        assert {"tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "roc_auc"} <= set(backbone)
    assert (project / "plots" / "confusion" / "alexnet.csv").is_file()
    assert (project / "plots" / "roc" / "facenet.csv").is_file()
    assert (project / "plots" / "crop_preview" / "alexnet.png").is_file()
    # The default cosine classifier is a threshold in classifier.json; learned ones add classifier.npz.
    meta = json.loads((project / "models" / "facenet" / "classifier" / "classifier.json").read_text())
    assert meta["classifier"] == "cosine" and meta["embedding"]["flip"] is True
    # The test-time augmentations the embed stage used travel with the folder, for the API.
    assert meta["embedding"]["shift"] == yaml.safe_load((project / "params.yaml").read_text())["embed"]["shift"] > 0
    data = json.loads((project / "metrics" / "data.json").read_text())
    assert data["split"]["train"]["identities"] == 6


def test_second_repro_runs_only_the_scan(project: Path):
    # scan always runs (dvc.yaml says why); its unchanged output reruns nothing after it.
    assert repro(project) == {"scan"}


def test_classifier_change_reruns_only_classify_and_evaluate(project: Path):
    _set_params(project, classifier="knn")
    assert repro(project) == {"scan", "classify@alexnet", "classify@facenet", "evaluate"}


def test_one_backbone_learning_rate_reruns_only_its_chain(project: Path):
    _set_params(project, **{"backbones.alexnet.lr": 0.002})
    assert repro(project) == {"scan", "finetune@alexnet", "embed@alexnet", "classify@alexnet", "evaluate"}


def test_crop_ratio_reruns_crop_and_after_but_not_split(project: Path):
    _set_params(project, **{"crop.mode": "ratio", "crop.keep_ratio": 0.6})
    ran = repro(project)
    assert "split" not in ran
    assert {"crop@alexnet", "crop@facenet", "finetune@alexnet", "embed@facenet", "classify@alexnet", "evaluate"} <= ran


def test_bad_params_stop_before_any_work(project: Path):
    _set_params(project, **{"crop.keep_ratio": 1.5})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert "crop.keep_ratio = 1.5 is invalid; valid: a number in (0, 1]" in result.stderr + result.stdout
    _set_params(project, **{"crop.keep_ratio": 0.6})
