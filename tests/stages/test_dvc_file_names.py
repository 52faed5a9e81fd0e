"""Real `dvc repro` on a folder dataset whose names are not UTF-8, and what reruns split.

DVC cannot hash a folder holding such a name, so the stages depend on the `scan` stage's
data/scan.csv instead (see dvc.yaml). Checked here: the whole chain runs and keeps the
names as their bytes; editing, adding, removing or renaming a file reruns split; touching
one (new mtime, same bytes) or nothing at all does not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from dvc_project import make_project, repro, stages_ran
from PIL import Image

pytestmark = pytest.mark.slow

# Latin-1 bytes (é = 0xE9): not UTF-8, as in RMFRD's mojibake names.
ODD_FOLDER = b"ren\xe9e"
ODD_FILE = b"1_mask_caf\xe9.png"

TINY = {
    "data": {"source": "folder", "root": "data/external", "masked_pattern": "mask"},
    "split": {"ratios": [0.5, 0.25, 0.25]},
    "crop": {"preview_images": 4},
    "backbones": {
        "alexnet": {"weights": "none", "input_size": 64, "embedding_size": 16, "epochs": 1, "lr": 0.001, "batch_size": 16},
    },
    "embed": {"batch_size": 32, "device": "cpu"},
    "mlp": {"max_iter": 50},
    "evaluate": {"bootstrap": 50},
    "finetune": {"device": "cpu", "mask_augment_p": 0.0},
}




def _image(identity: int, variant: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(1000 * identity + variant)
    base = np.random.default_rng(identity).integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    pixels = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.float32)) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_image(folder: bytes, name: bytes, identity: int, variant: int) -> bytes:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:  # bytes paths: PIL's own open would decode the name
        _image(identity, variant).save(handle, format="PNG")
    return path


def _dataset(root: Path) -> None:
    """8 identities x 6 images, odd ones masked; one folder and one file named in Latin-1."""
    root_bytes = os.fsencode(root)
    for identity in range(8):
        folder = os.path.join(root_bytes, ODD_FOLDER if identity == 0 else f"id{identity}".encode())
        for variant in range(6):
            name = ODD_FILE if (identity, variant) == (0, 1) else f"{variant}{'_mask' if variant % 2 else ''}.png".encode()
            _write_image(folder, name, identity, variant)








@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root: Path) -> Path:
    project = tmp_path_factory.mktemp("names")
    ran = stages_ran(make_project(project, repo_root, TINY, data=lambda root: _dataset(root / "data" / "external")))
    assert ran == {"scan", "split", "crop@alexnet", "finetune@alexnet", "embed@alexnet", "classify@alexnet", "evaluate"}
    return project


def _odd_path() -> bytes:
    return b"data/external/" + ODD_FOLDER + b"/" + ODD_FILE


def test_names_pass_every_stage_as_their_bytes(project: Path):
    odd = _odd_path()
    assert odd in (project / "data" / "scan.csv").read_bytes()
    assert odd in (project / "data" / "manifest.csv").read_bytes()
    # split.seed 0 puts the Latin-1 identity in the test split: its pairs, and their scores
    # from train/classify, carry the same bytes, and evaluate ran on them.
    folder = b"data/external/" + ODD_FOLDER + b"/"
    assert folder in (project / "data" / "pairs" / "test.csv").read_bytes()
    assert folder in (project / "data" / "scores" / "alexnet" / "test.csv").read_bytes()
    assert (project / "plots" / "worst_pairs" / "alexnet.png").is_file()
    assert (project / "metrics" / "evaluate.json").is_file()


def test_nothing_changed_reruns_only_the_scan(project: Path):
    assert repro(project) == {"scan"}


def test_touching_a_file_does_not_rerun_split(project: Path):
    path = project / os.fsdecode(_odd_path())
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert repro(project, "split") == {"scan"}


def test_editing_a_file_reruns_split(project: Path):
    with open(os.path.join(os.fsencode(project), _odd_path()), "wb") as handle:
        _image(0, 99).save(handle, format="PNG")
    assert repro(project, "split") == {"scan", "split"}
    assert repro(project, "split") == {"scan"}


def test_adding_a_file_reruns_split(project: Path):
    _write_image(os.path.join(os.fsencode(project), b"data/external/id3"), b"9_mask_\xfc.png", 3, 9)
    assert repro(project, "split") == {"scan", "split"}
    assert os.fsdecode(b"data/external/id3/9_mask_\xfc.png") in _manifest_paths(project)


def test_renaming_a_file_reruns_split(project: Path):
    base = os.path.join(os.fsencode(project), b"data/external/id3")
    os.rename(os.path.join(base, b"9_mask_\xfc.png"), os.path.join(base, b"9_mask_\xf6.png"))
    assert repro(project, "split") == {"scan", "split"}
    assert os.fsdecode(b"data/external/id3/9_mask_\xf6.png") in _manifest_paths(project)


def test_removing_a_file_reruns_split(project: Path):
    os.remove(os.path.join(os.fsencode(project), b"data/external/id3/9_mask_\xf6.png"))
    assert repro(project, "split") == {"scan", "split"}
    assert not any("9_mask_" in path for path in _manifest_paths(project))


def _manifest_paths(project: Path) -> list[str]:
    from maskface.data.datasets import read_manifest

    return read_manifest(project / "data" / "manifest.csv")["path"].tolist()
