"""A fusion backbone through the real DVC pipeline: its chain, its model folder, and the
rerun of its fine-tuning when one member's pretrained file appears.

Needs the real weight files (../shared/weights or $MASKFACE_WEIGHTS_DIR); skipped where absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from dvc_project import make_project, repro, stages_ran

pytestmark = pytest.mark.slow

FUSION = "edgeface+mobilefacenet"
# One epoch: with both files (second run) the anchor pulls toward the pretrained fused embedding.
TINY = {
    "data": {"synthetic": {"identities": 12, "images_per_identity": 6, "min_size": 64, "max_size": 72}},
    "split": {"ratios": [0.5, 0.25, 0.25]},
    "crop": {"preview_images": 4},
    "backbones": {
        FUSION: {
            "weights": "auto", "input_size": None, "embedding_size": 640, "head_init": "identity", "epochs": 1, "batch_size": 16,
            "lr": 0.0001, "head_lr": 0.001, "train_layers": "last_5", "anchor": 1.0,
        },
    },
    "embed": {"batch_size": 32, "device": "cpu"},
    "evaluate": {"bootstrap": 50},
    "finetune": {"device": "cpu", "mask_augment_p": 0.0},
}


def _shared_weights(repo_root: Path) -> Path:
    configured = os.environ.get("MASKFACE_WEIGHTS_DIR")
    folder = Path(configured) if configured else repo_root.parent / "shared" / "weights"
    if not all((folder / name).is_file() for name in ("edgeface_xs_q.pt", "mobilefacenet_ms1m.pt")):
        pytest.skip("pretrained weight files not found: set MASKFACE_WEIGHTS_DIR or place ../shared/weights")
    return folder


def test_a_fusion_runs_its_chain_and_reruns_fine_tuning_when_a_member_file_appears(tmp_path, repo_root, monkeypatch):
    shared = _shared_weights(repo_root)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    monkeypatch.setenv("MASKFACE_WEIGHTS_DIR", str(weights))
    project = tmp_path / "project"
    project.mkdir()
    # Only EdgeFace's file at first: `auto` starts the whole fusion from scratch.
    shutil.copyfile(shared / "edgeface_xs_q.pt", weights / "edgeface_xs_q.pt")
    output = make_project(project, repo_root, TINY, copied=("data/external",))
    assert {f"crop@{FUSION}", f"finetune@{FUSION}", f"embed@{FUSION}", f"classify@{FUSION}", "evaluate"} <= stages_ran(output)
    assert "mobilefacenet_ms1m.pt" in output and "random initialisation" in output
    record = json.loads((project / "data" / "weights" / f"{FUSION}.json").read_text())
    assert record["spec"] is None
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics["recommended"]["backbone"] == FUSION and metrics[FUSION]["started_from"] is None

    # The second member's file appears: the scan record changes, and the fusion's fine-tuning
    # reruns (crops and split do not).
    shutil.copyfile(shared / "mobilefacenet_ms1m.pt", weights / "mobilefacenet_ms1m.pt")
    ran = repro(project)
    assert ran == {"scan", f"finetune@{FUSION}", f"embed@{FUSION}", f"classify@{FUSION}", "evaluate"}
    record = json.loads((project / "data" / "weights" / f"{FUSION}.json").read_text())
    assert [m["file"] for m in record["members"]] == ["edgeface_xs_q.pt", "mobilefacenet_ms1m.pt"]
    model_json = json.loads((project / "models" / FUSION / "backbone" / "model.json").read_text())
    assert {k: v for k, v in model_json["started_from"].items() if k != "weights"} == {
        k: v for k, v in record.items() if k != "weights"
    }
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics[FUSION]["started_from"]["members"] == record["members"]
    report = (project / "metrics" / "report.md").read_text()
    assert f"| {FUSION} | edgeface:webface12m (official, sha256 {record['members'][0]['sha256'][:12]}) + mobilefacenet:ms1m" in report

    # The model folder works from the command line like any other.
    from maskface.api import load_model

    model = load_model(project / "models" / FUSION, device="cpu", precision="fp32")
    assert model.backbone == FUSION and model.embedding_size == 640
