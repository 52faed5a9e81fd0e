"""The self-contained model folder: checks, export/manifest, image reading, preprocessing parity."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from maskface.evaluation.classify import classifier_metadata, fit_and_score, pair_features, save_classifier
from maskface.config import ArcFaceConfig, BackboneConfig, ClassifyConfig, CropConfig, FinetuneConfig, KnnConfig
from maskface.face.crop import crop_dataset, open_crops
from maskface.artifacts import load_embeddings
from maskface.inference.embed import embed_crops
from maskface.imageio import load_rgb
from maskface.inference.model_folder import (
    MANIFEST_FILE,
    ImageError,
    ModelFolderError,
    PairScorer,
    as_rgb,
    export_model_folder,
    load_pair_scorer,
    preprocess_image,
    read_image,
    read_model_folder,
)
from maskface.tables import read_csv


@pytest.fixture(scope="module")
def folder(toy_dataset, tmp_path_factory):
    """A model folder written by the pipeline's own functions (finetune with 0 epochs: no training wait)."""
    from maskface.training.train import finetune

    root = tmp_path_factory.mktemp("model_folder")
    crops = root / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(mode="ratio", keep_ratio=0.75), 64, crops)
    previous = os.getcwd()
    os.chdir(root)  # outside any repository DVCLive only writes files
    try:
        finetune(
            "alexnet", crops, toy_dataset["pairs_dir"] / "val.csv", root / "model" / "backbone", root / "live",
            BackboneConfig(epochs=0, embedding_size=16), ArcFaceConfig(), FinetuneConfig(seed=0, device="cpu"),
        )
    finally:
        os.chdir(previous)
    embed_crops(crops, root / "model" / "backbone", root / "embeddings", batch_size=32, device="cpu", precision="fp32")
    embeddings, index = load_embeddings(root / "embeddings")
    val = read_csv(toy_dataset["pairs_dir"] / "val.csv")
    test = read_csv(toy_dataset["pairs_dir"] / "test.csv")
    classifier, threshold, _, _ = fit_and_score(
        embeddings, index, val, test, "knn", KnnConfig(n_neighbors=5), ClassifyConfig(train_pairs_per_identity=9)
    )
    meta = classifier_metadata("knn", KnnConfig(n_neighbors=5), threshold, embeddings.shape[1])
    save_classifier(classifier, root / "model" / "classifier", meta)
    return {"dir": root / "model", "crops": crops, "threshold": threshold, "root": root, "classifier": classifier}


def _copy(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder["dir"], target)
    return target


def test_folder_reads_without_params_and_reports_its_settings(folder):
    model = read_model_folder(folder["dir"])
    assert model.backbone == "alexnet" and model.classifier == "knn"
    assert model.threshold == pytest.approx(folder["threshold"])
    assert model.input_size == 64
    assert model.preprocess == {"input_size": 64, "crop": {"mode": "ratio", "keep_ratio": 0.75}}
    assert model.manifest is None and model.training["best_epoch"] == 0
    summary = model.summary()
    assert summary["crop"] == {"mode": "ratio", "keep_ratio": 0.75} and summary["embedding_size"] == 16


def test_preprocessing_is_the_crop_stage_transform_byte_for_byte(folder, toy_dataset):
    images, index = open_crops(folder["crops"])
    settings = read_model_folder(folder["dir"]).preprocess
    for row in (0, 17, len(index) - 1):
        path = index.at[row, "path"]
        # The same file three ways in: a path, a PIL image, a uint8 array.
        for given in (path, Image.open(path), np.asarray(load_rgb(path))):
            tensor = preprocess_image(given, settings)
            assert tensor.dtype == np.uint8 and tensor.shape == (3, 64, 64)
            np.testing.assert_array_equal(tensor, images[row])


def test_preprocessing_matches_for_greyscale_and_transparent_files(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), mode="L").save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (50, 40, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    manifest = pd.DataFrame({"path": [str(grey), str(rgba)], "identity": ["a", "b"], "masked": [False, True], "split": ["test"] * 2})
    crop_dataset(manifest, CropConfig(mode="none"), 32, tmp_path / "crops")
    images, _ = open_crops(tmp_path / "crops")
    settings = json.loads((tmp_path / "crops" / "preprocess.json").read_text())
    np.testing.assert_array_equal(preprocess_image(str(grey), settings), images[0])
    np.testing.assert_array_equal(preprocess_image(str(rgba), settings), images[1])
    # A 2-D greyscale array is the same picture as the greyscale file.
    np.testing.assert_array_equal(preprocess_image(np.asarray(Image.open(grey)), settings), images[0])


def test_export_writes_verifiable_checksums_and_keeps_the_fingerprint(folder, tmp_path):
    out = tmp_path / "exported"
    manifest = export_model_folder(folder["dir"], out)
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk == manifest and on_disk["format_version"] == 1
    assert set(on_disk["files"]) == {
        "backbone/model.pt", "backbone/model.json", "backbone/preprocess.json", "backbone/training.json",
        "classifier/classifier.npz", "classifier/classifier.json",
    }
    for relative, digest in on_disk["files"].items():
        assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest
    exported = read_model_folder(out)
    assert exported.manifest == on_disk
    assert exported.fingerprint() == read_model_folder(folder["dir"]).fingerprint()
    with pytest.raises(ModelFolderError, match="already exists"):
        export_model_folder(folder["dir"], out)
    assert not list(tmp_path.glob(".*partial"))


def test_a_changed_file_fails_its_checksum_naming_the_file(folder, tmp_path):
    out = tmp_path / "exported"
    export_model_folder(folder["dir"], out)
    weights = out / "backbone" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=r"model\.pt: checksum mismatch") as caught:
        read_model_folder(out)
    assert "\n" not in str(caught.value)


def test_an_incompatible_format_version_is_refused(folder, tmp_path):
    out = tmp_path / "exported"
    export_model_folder(folder["dir"], out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="format version 99 is incompatible"):
        read_model_folder(out)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "backbone" / "model.json").unlink(), r"model\.json: missing"),
        (lambda d: (d / "classifier" / "classifier.npz").unlink(), r"classifier\.npz: missing"),
        (lambda d: (d / "backbone" / "preprocess.json").write_text("{not json"), r"preprocess\.json: unreadable JSON"),
        (lambda d: (d / "backbone" / "model.json").write_text('{"backbone": "alexnet"}'), "incompatible maskface version"),
        (lambda d: (d / "backbone" / "preprocess.json").write_text('{"input_size": 80, "crop": {"mode": "none"}}'), "differs from model.json"),
        (lambda d: (d / "backbone" / "model.json").write_text('{"backbone": "resnet", "embedding_size": 16, "input_size": 64}'), "valid: .*alexnet"),
        (lambda d: (d / "classifier" / "classifier.json").write_text('{"classifier": "knn", "threshold": "high"}'), "not a finite number"),
        (lambda d: (d / "classifier" / "classifier.json").write_text('{"format": 3, "classifier": "knn", "threshold": 0.5}'), "classifier format 3 is incompatible"),
        (
            lambda d: (d / "classifier" / "classifier.json").write_text('{"classifier": "knn", "threshold": 0.5, "pair_features": "concat"}'),
            "pair features 'concat' are unknown",
        ),
    ],
)
def test_broken_folders_fail_with_one_line_naming_the_file(folder, tmp_path, change, message):
    broken = _copy(folder, tmp_path)
    change(broken)
    with pytest.raises(ModelFolderError, match=message) as caught:
        read_model_folder(broken)
    assert "\n" not in str(caught.value)


def test_the_backbone_subfolder_is_refused_with_a_hint(folder):
    with pytest.raises(ModelFolderError, match="pass its parent"):
        read_model_folder(folder["dir"] / "backbone")


def test_learned_scorer_is_predict_proba_of_pair_features_and_cosine_is_the_dot(folder):
    scorer = load_pair_scorer(read_model_folder(folder["dir"]))
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 16)).astype(np.float32)
    b = rng.normal(size=(6, 16)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    # The pipeline fit_and_score returned, never written to disk: the file must rebuild it exactly.
    oracle = folder["classifier"].predict_proba(pair_features(a, b))[:, 1]
    np.testing.assert_allclose(scorer.score(a, b), oracle)
    np.testing.assert_allclose(scorer.score(b, a), oracle)  # symmetric features
    cosine = PairScorer("cosine", 0.5)
    np.testing.assert_allclose(cosine.score(a, b), (a * b).sum(axis=1), rtol=1e-6)


def test_a_cosine_folder_needs_no_fitted_file(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    (copy / "classifier" / "classifier.npz").unlink()
    (copy / "classifier" / "classifier.json").write_text('{"classifier": "cosine", "settings": {}, "threshold": 0.4}')
    scorer = load_pair_scorer(read_model_folder(copy))
    assert scorer.name == "cosine" and scorer.threshold == 0.4 and scorer.model is None


def test_read_image_names_the_reason(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 20), 128, np.uint8), mode="L").save(good)
    assert read_image(good).mode == "RGB"
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a picture at all")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for suffix in ("png", "jpg"):
        whole = tmp_path / f"whole.{suffix}"
        noise.save(whole)
        (tmp_path / f"cut.{suffix}").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cases = {
        "missing.png": "missing",
        "empty.jpg": "empty file",
        "text.jpg": "not an image",
        "cut.png": "truncated or corrupt",
        "cut.jpg": "truncated or corrupt",
        ".": "not a file",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageError) as caught:
            read_image(tmp_path / name)
        assert caught.value.reason.startswith(reason), (name, caught.value.reason)
        assert str(caught.value).startswith(str(tmp_path / name))


def test_arrays_must_be_uint8_images():
    with pytest.raises(ImageError, match="dtype float64"):
        as_rgb(np.zeros((8, 8, 3)), 0)
    with pytest.raises(ImageError, match=r"shape \(8, 8, 2\)"):
        as_rgb(np.zeros((8, 8, 2), np.uint8), 3)
    with pytest.raises(ImageError, match="type int"):
        as_rgb(5, 1)
    assert as_rgb(np.zeros((8, 9), np.uint8)).size == (9, 8)


ALIGNED = {"mode": "none", "align": True, "landmarks": "mtcnn", "detect_device": "cpu"}


def test_a_photo_without_a_face_is_refused_where_alignment_is_on(toy_dataset):
    path = toy_dataset["manifest"]["path"].iloc[0]  # coloured blocks: MTCNN finds no face
    with pytest.raises(ImageError, match="no face found") as caught:
        preprocess_image(path, {"input_size": 64, "crop": ALIGNED})
    assert caught.value.source == path


@pytest.mark.parametrize(
    "crop",
    [ALIGNED, {"mode": "nose", "align": False, "landmarks": "mtcnn", "detect_device": "cpu"}],
    ids=["aligned", "nose-unaligned"],
)
def test_preprocessing_that_finds_the_face_matches_the_crop_stage(tmp_path, crop):
    # Unaligned nose mode greys from the detected nose: inference must detect as training did.
    import pandas as pd

    from maskface.config import SyntheticConfig
    from maskface.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "faces", SyntheticConfig(identities=2, images_per_identity=4, min_size=112, max_size=128))
    paths = sorted(str(p) for p in (tmp_path / "faces").rglob("*.png"))[:3]
    manifest = pd.DataFrame({"path": paths, "identity": "a", "masked": False, "split": "test"})
    crop_dataset(manifest, CropConfig(**crop), 64, tmp_path / "crops")
    images, index = open_crops(tmp_path / "crops")
    assert (index["landmark_source"] == "mtcnn").all() and (index["aligned"] == crop["align"]).all()
    settings = json.loads((tmp_path / "crops" / "preprocess.json").read_text())
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(preprocess_image(path, settings), images[row])


class _WritesFile:
    """Unpickling this runs code: it writes ``target`` (what a malicious model folder would do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('code from the folder ran')",))


def _live(payload_writer, reader, canary):
    """Write the payload and prove it is live: the unsafe reader runs it (then clean up)."""
    payload_writer()
    reader()
    assert canary.exists(), "the crafted payload must really run when unpickled, or the test proves nothing"
    canary.unlink()


def test_a_pickled_classifier_from_an_old_folder_is_refused_never_unpickled(folder, tmp_path):
    import joblib

    from maskface.api import load_model

    copy = _copy(folder, tmp_path)
    canary = tmp_path / "canary.txt"
    pickled = copy / "classifier" / "classifier.joblib"
    _live(lambda: joblib.dump(_WritesFile(canary), pickled), lambda: joblib.load(pickled), canary)
    (copy / "classifier" / "classifier.npz").unlink()
    meta = json.loads((copy / "classifier" / "classifier.json").read_text())
    meta.update(format=1, model_file="classifier.joblib")  # what maskface wrote before format 2
    (copy / "classifier" / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match=r"classifier\.joblib: a pickled classifier .* unpickling runs code") as caught:
        load_model(copy, device="cpu")
    assert "\n" not in str(caught.value)
    assert not canary.exists()


def test_a_classifier_file_with_pickled_arrays_is_refused_unread(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    canary = tmp_path / "canary.txt"
    target = copy / "classifier" / "classifier.npz"
    with np.load(target, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["0/mean_"] = np.array([_WritesFile(canary)], dtype=object)

    def write():
        with open(target, "wb") as handle:
            np.savez(handle, **arrays)

    def unsafe_read():
        with np.load(target, allow_pickle=True) as data:
            data["0/mean_"]

    _live(write, unsafe_read, canary)
    with pytest.raises(ModelFolderError, match=r"classifier\.npz: not a readable classifier file.*allow_pickle"):
        load_pair_scorer(read_model_folder(copy))
    assert not canary.exists()


def test_stray_pickles_in_a_folder_are_never_opened(folder, tmp_path):
    import pickle

    copy = _copy(folder, tmp_path)
    canary = tmp_path / "canary.txt"
    payload = pickle.dumps(_WritesFile(canary))
    _live(lambda: None, lambda: pickle.loads(payload), canary)
    for name in ("classifier/classifier.joblib", "classifier/classifier.pkl", "backbone/extra.pkl", "backbone/model.pkl"):
        (copy / name).write_bytes(payload)
    np.save(copy / "backbone" / "features.npy", np.array([_WritesFile(canary)], dtype=object), allow_pickle=True)
    scorer = load_pair_scorer(read_model_folder(copy))
    a = np.eye(16, dtype=np.float32)[:3]
    np.testing.assert_allclose(scorer.score(a, a[::-1]), folder["classifier"].predict_proba(pair_features(a, a[::-1]))[:, 1])
    assert not canary.exists()


def test_a_classifier_naming_a_class_outside_the_allow_list_is_refused(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    target = copy / "classifier" / "classifier.npz"
    with np.load(target, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    spec = json.loads(str(arrays["spec"]))
    spec["steps"][0]["class"] = "FunctionTransformer"  # would call any function named in its params
    arrays["spec"] = np.array(json.dumps(spec))
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ModelFolderError, match="'FunctionTransformer', which is not allowed; allowed: StandardScaler"):
        load_pair_scorer(read_model_folder(copy))


# --------------------------------------------------------------------------- export --overwrite


def _tree(root):
    """Every file below ``root`` with its bytes: what must survive a refused export."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def models_dir(folder, tmp_path):
    """A models/ folder as the pipeline leaves it: a model folder beside unrelated files."""
    models = tmp_path / "models"
    shutil.copytree(folder["dir"], models / "facenet")
    (models / "other").mkdir()
    (models / "other" / "keep.txt").write_text("unrelated")
    return models


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda m: m, "a folder holding the source"),  # the report: models/ was deleted
        (lambda m: m.parent, "a folder holding the source"),
        (lambda m: m / "facenet", "the source folder itself"),
        (lambda m: m / "facenet" / "backbone", "inside the source folder"),
        (lambda m: m / "other", "holds no maskface manifest.json"),
    ],
)
def test_export_overwrite_refuses_what_it_did_not_make(models_dir, target, message):
    before = _tree(models_dir.parent)
    with pytest.raises(ModelFolderError, match=message) as caught:
        export_model_folder(models_dir / "facenet", target(models_dir), overwrite=True)
    assert "\n" not in str(caught.value)
    assert _tree(models_dir.parent) == before


def test_export_overwrite_never_replaces_home_or_the_working_folder(models_dir, tmp_path, monkeypatch):
    # Home and the working folder look exactly like an earlier export: refused all the same.
    users = tmp_path / "users"
    home = users / "home"
    export_model_folder(models_dir / "facenet", home)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ModelFolderError, match="is your home folder"):
        export_model_folder(models_dir / "facenet", home, overwrite=True)
    with pytest.raises(ModelFolderError, match="a folder holding your home folder"):
        export_model_folder(models_dir / "facenet", users, overwrite=True)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(home)
    with pytest.raises(ModelFolderError, match="is the working folder"):
        export_model_folder(models_dir / "facenet", ".", overwrite=True)
    with pytest.raises(ModelFolderError, match="a folder holding the working folder"):
        export_model_folder(models_dir / "facenet", users, overwrite=True)
    with pytest.raises(ModelFolderError, match="--out /: is a folder holding"):  # the root holds everything
        export_model_folder(models_dir / "facenet", "/", overwrite=True)
    assert _tree(home) == _tree(models_dir / "facenet") | {MANIFEST_FILE: (home / MANIFEST_FILE).read_bytes()}


def test_export_overwrite_replaces_an_earlier_export_and_only_that(models_dir, tmp_path):
    out = tmp_path / "exported"
    export_model_folder(models_dir / "facenet", out)
    (out / "backbone" / "training.json").write_text('{"stale": true}')  # an earlier export, since edited
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["files"]["backbone/training.json"] = hashlib.sha256(b'{"stale": true}').hexdigest()
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    export_model_folder(models_dir / "facenet", out, overwrite=True)
    assert _tree(out)["backbone/training.json"] == (models_dir / "facenet" / "backbone" / "training.json").read_bytes()
    read_model_folder(out)  # checksums verify
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "models"]  # no staging or old copy left
    # A file the manifest does not list is somebody else's: refused, and the folder kept as it is.
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    with pytest.raises(ModelFolderError, match="holds notes.txt, which its manifest.json does not list"):
        export_model_folder(models_dir / "facenet", out, overwrite=True)
    assert _tree(out) == before


def test_an_interrupted_export_leaves_the_earlier_one_intact(models_dir, tmp_path, monkeypatch):
    import maskface.inference.model_folder as model_folder

    out = tmp_path / "exported"
    export_model_folder(models_dir / "facenet", out)
    before = _tree(out)

    copyfile = shutil.copyfile

    def crash(source, target):  # the copy dies half way (disk full, Ctrl-C)
        if "classifier" in str(source):
            raise KeyboardInterrupt
        return copyfile(source, target)

    monkeypatch.setattr(model_folder.shutil, "copyfile", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model_folder(models_dir / "facenet", out, overwrite=True)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "models"]
