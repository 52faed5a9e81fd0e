import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _datasets_root() -> Path | None:
    configured = os.environ.get("MASKFACE_DATASETS")
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """The real-data folder (../shared/datasets or $MASKFACE_DATASETS); skips where absent."""
    root = _datasets_root()
    if root is None:
        pytest.skip("real datasets not found: set MASKFACE_DATASETS or place ../shared/datasets")
    return root


@pytest.fixture(scope="session")
def decoder_spy() -> str:
    """Python source for a probe run in a fresh interpreter: it records, in ``started``,
    whether torch was imported when maskface.api's decoder started, then whether it runs
    worker processes."""
    return (
        "import json, sys\n"
        "import maskface.api as api\n"
        "started = []\n"
        "class Spy(api._Decoder):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        started.append('torch' in sys.modules)\n"
        "        super().__init__(*args, **kwargs)\n"
        "        started.append(self.processes is not None)\n"
        "api._Decoder = Spy\n"
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _toy_face(identity: int, variant: int, size: int = 48):
    """A procedural stand-in image: identity = colour layout, variant = noise and shift."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1000 * identity + variant)
    base = np.random.default_rng(identity).integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    image = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.float32))
    image = np.roll(image, int(rng.integers(-3, 4)), axis=1)
    image += rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """12 identities x 6 images (3 masked) on disk, with a manifest, splits and pairs."""
    import pandas as pd

    from maskface.data.split import split_dataset

    root = tmp_path_factory.mktemp("toy")
    rows = []
    for identity in range(12):
        folder = root / f"id{identity:02d}"
        folder.mkdir()
        for variant in range(6):
            path = folder / f"{variant}.png"
            _toy_face(identity, variant).save(path)
            rows.append({"path": str(path), "identity": f"id{identity:02d}", "masked": variant % 2 == 0})
    manifest, pairs = split_dataset(pd.DataFrame(rows), (0.5, 0.25, 0.25), 0, "identity", ["masked-unmasked"], 9)
    pairs_dir = root / "pairs"
    pairs_dir.mkdir()
    for name, table in pairs.items():
        table.to_csv(pairs_dir / f"{name}.csv", index=False)
    return {"root": root, "manifest": manifest, "pairs_dir": pairs_dir}


@pytest.fixture(scope="session")
def build_toy_model_folder(toy_dataset):
    """A function ``root -> dict`` that builds a model folder with the pipeline's own writers.

    Crop -> an (untrained) alexnet -> embed -> a KNN pair classifier, in ``root``. A
    function rather than one shared folder: test modules that damage files get their own.
    Returns ``dir`` (the model folder), ``crops``, ``root``, ``embeddings``, ``index``,
    ``threshold``.
    """
    import shutil

    import torch

    from maskface.artifacts import load_embeddings
    from maskface.models.backbones import create_model
    from maskface.evaluation.classify import fit_and_score, save_classifier
    from maskface.config import ClassifyConfig, CropConfig, KnnConfig
    from maskface.face.crop import PREPROCESS_FILE, crop_dataset
    from maskface.inference.embed import embed_crops, save_model
    from maskface.tables import read_csv

    def build(root: Path) -> dict:
        crops = root / "crops"
        crop_dataset(toy_dataset["manifest"], CropConfig(mode="ratio", keep_ratio=0.75), 64, crops)
        torch.manual_seed(0)
        network = create_model("alexnet", weights="none", embedding_size=16, input_size=64)
        folder = root / "model"
        save_model(network, folder / "backbone", {"weights": "none", "train_layers": "all"})
        shutil.copyfile(crops / PREPROCESS_FILE, folder / "backbone" / PREPROCESS_FILE)
        embed_crops(crops, folder / "backbone", root / "embeddings", batch_size=32, device="cpu", precision="fp32")
        embeddings, index = load_embeddings(root / "embeddings")
        val = read_csv(toy_dataset["pairs_dir"] / "val.csv")
        test = read_csv(toy_dataset["pairs_dir"] / "test.csv")
        classifier, threshold, _, _ = fit_and_score(
            embeddings, index, val, test, "knn", KnnConfig(n_neighbors=5), ClassifyConfig(train_pairs_per_identity=9)
        )
        meta = {"classifier": "knn", "settings": {"n_neighbors": 5}, "threshold": threshold}
        save_classifier(classifier, folder / "classifier", meta)
        return {"dir": folder, "crops": crops, "root": root, "embeddings": embeddings, "index": index, "threshold": threshold}

    return build
