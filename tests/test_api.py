"""maskface.load_model: embed / verify / enroll / identify over a model folder, checked against the pipeline."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskface import api
from maskface.api import UNKNOWN, Gallery, GalleryError, expand_paths, load_gallery, load_model
from maskface.models.backbones import create_model
from maskface.evaluation.classify import pair_features
from maskface.face.crop import open_crops
from maskface.inference.embed import embed_array, save_model
from maskface.errors import UserError
from maskface.inference.model_folder import ImageError, ModelFolderError


def as_cosine_folder(folder, target, threshold):
    shutil.copytree(folder, target)
    (target / "classifier" / "classifier.npz").unlink()
    (target / "classifier" / "classifier.json").write_text(json.dumps({"classifier": "cosine", "settings": {}, "threshold": threshold}))
    return target


@pytest.fixture(scope="module")
def built(build_toy_model_folder, tmp_path_factory):
    return build_toy_model_folder(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def model(built):
    return load_model(built["dir"], device="cpu", batch_size=32, precision="fp32")


def test_embeddings_equal_the_pipeline_embed_stage(model, built):
    """Same images, same model: the API reaches the pipeline's embeddings (preprocessing included)."""
    paths = built["index"]["path"].tolist()
    vectors = model.embed(paths)
    assert vectors.shape == (len(paths), 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, built["embeddings"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_paths_pil_images_and_arrays_embed_alike(model, built):
    path = built["index"].at[3, "path"]
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    together = model.embed([path, pil, array])
    np.testing.assert_allclose(together, np.repeat(built["embeddings"][3:4], 3, axis=0), atol=1e-5)
    np.testing.assert_allclose(model.embed(array), together[:1], atol=1e-6)  # one array, one image
    np.testing.assert_allclose(model.embed(np.stack([array, array])), together[:2], atol=1e-6)  # a stack


def test_preprocess_is_the_crop_stage_tensor(model, built):
    images, index = open_crops(built["crops"])
    np.testing.assert_array_equal(model.preprocess(index.at[5, "path"]), images[5])


def test_verify_scores_with_the_folder_classifier(model, built):
    from maskface.evaluation.classify import read_classifier_file

    index = built["index"]
    a, b = index.at[0, "path"], index.at[len(index) - 1, "path"]
    result = model.verify(a, b)
    ea, eb = built["embeddings"][[0]], built["embeddings"][[len(index) - 1]]
    classifier = read_classifier_file(built["dir"] / "classifier" / "classifier.npz")
    expected = classifier.predict_proba(pair_features(ea, eb))[:, 1][0]
    assert result.score == pytest.approx(expected, abs=1e-6)
    assert result.same == (expected >= model.threshold)
    assert result.cosine == pytest.approx(float(ea[0] @ eb[0]), abs=1e-5)
    assert model.verify(b, a).score == pytest.approx(result.score)
    # An operating point of the caller's own overrides the folder's threshold.
    assert model.verify(a, b, threshold=expected + 1e-3).same is False
    assert model.verify(a, b, threshold=expected - 1e-3).same is True
    with pytest.raises(ValueError, match="threshold nan"):
        model.verify(a, b, threshold=float("nan"))


def test_a_bad_image_raises_naming_it_and_batches_skip_it(model, built, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("shopping list")
    good = built["index"].at[2, "path"]
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        model.verify(good, bad)
    result = model.embed_many([good, bad, tmp_path / "gone.png", good])
    assert result.positions == [0, 3]
    assert [f.reason.split(":")[0] for f in result.failures] == ["not an image", "missing"]
    np.testing.assert_allclose(result.embeddings, built["embeddings"][[2, 2]], atol=1e-5)


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (2, 3), (3, 2)])
def test_overlapped_decoding_keeps_order_and_failures_across_batches(built, tmp_path, batch_size, workers):
    bad = tmp_path / "notes.jpg"
    bad.write_text("shopping list")
    paths = built["index"]["path"].tolist()[:7]
    mixed = [paths[0], bad, *paths[1:4], tmp_path / "gone.png", *paths[4:]]
    model = load_model(built["dir"], device="cpu", batch_size=batch_size, precision="fp32", decode_workers=workers)
    result = model.embed_many(mixed)
    assert result.positions == [0, 2, 3, 4, 6, 7, 8]
    assert [f.source for f in result.failures] == [str(bad), str(tmp_path / "gone.png")]
    np.testing.assert_allclose(result.embeddings, built["embeddings"][:7], atol=1e-5)
    with pytest.raises(ValueError, match="decode_workers 0 is invalid"):
        load_model(built["dir"], device="cpu", decode_workers=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_decoding_processes_keep_order_and_report_every_failure(built, tmp_path, monkeypatch, workers):
    # Chunks of 3 files and a window of 7 images: failures fall at the start, middle and end
    # of chunks and of batches, and an array between files is prepared in a thread.
    monkeypatch.setattr(api, "DECODE_CHUNK", 3)
    bad = tmp_path / "notes.jpg"
    bad.write_text("shopping list")
    gone = tmp_path / "gone.png"
    paths = built["index"]["path"].tolist()
    array = np.asarray(Image.open(paths[5]).convert("RGB"))
    mixed = [bad, *paths[:10], gone, *paths[10:40], array, *paths[40:], bad]
    rows = [*range(10), *range(10, 40), 5, *range(40, len(paths))]
    model = load_model(built["dir"], device="cpu", batch_size=8, precision="fp32", decode_workers=workers)
    with api._Decoder(mixed, model.folder.preprocess, workers, window=7) as decoder:
        assert decoder.processes is not None  # files went to worker processes
        prepared = list(decoder.results())
    assert [position for position, _ in prepared] == list(range(len(mixed)))
    images, _ = open_crops(built["crops"])
    usable = [pixels for _, pixels in prepared if not isinstance(pixels, ImageError)]
    np.testing.assert_array_equal(np.stack(usable), images[rows])  # the crop stage's own tensors
    result = model.embed_many(mixed)
    assert result.positions == [k for k, item in enumerate(mixed) if not (isinstance(item, Path) and item in (bad, gone))]
    assert [(f.source, f.reason.split(":")[0]) for f in result.failures] == [
        (str(bad), "not an image"), (str(gone), "missing"), (str(bad), "not an image"),
    ]
    assert result.sources[40] == "array #42" and result.positions[40] == 42  # after 40 usable files
    np.testing.assert_allclose(result.embeddings, built["embeddings"][rows], atol=1e-5)


def test_models_that_detect_faces_decode_in_threads(tmp_path):
    # MTCNN runs in torch, which the command's process loads anyway; a worker would load it again.
    aligned = {"input_size": 64, "crop": {"mode": "none", "align": True, "landmarks": "mtcnn", "detect_device": "cpu"}}
    plain = {"input_size": 64, "crop": {"mode": "ratio", "keep_ratio": 0.75}}
    gone = [tmp_path / f"gone{k}.png" for k in range(api.PROCESS_MIN_FILES)]
    for settings, in_processes in ((aligned, False), (plain, True)):
        with api._Decoder(gone, settings, None, window=8) as decoder:
            assert (decoder.processes is not None) == in_processes
            assert [str(error) for _, error in decoder.results()] == [f"{path}: missing: no such file" for path in gone]
    with api._Decoder(gone[1:], plain, None, window=8) as decoder:
        assert decoder.processes is None  # too few files to pay for worker processes


def test_the_face_detector_is_built_before_the_decoding_threads_start(monkeypatch):
    # Threads that import torchvision (MTCNN) while the caller imports it (loading the model)
    # can meet it half-initialised: the detector must exist before any decoding thread runs.
    import functools
    import threading

    from maskface.face import crop

    built_in = []

    class NoFace:
        def detect_one(self, image):
            return type("Detection", (), {"landmarks": None})()

    @functools.lru_cache(maxsize=4)
    def recording_detector(*key):
        built_in.append(threading.current_thread())
        return NoFace()

    monkeypatch.setattr(crop, "_cached_detector", recording_detector)
    settings = {"input_size": 64, "crop": {"mode": "nose", "align": True, "landmarks": "mtcnn", "detect_device": "cpu"}}
    photos = [np.full((80, 80, 3), 100 + k, dtype=np.uint8) for k in range(6)]
    with api._Decoder(photos, settings, 3, window=6) as decoder:
        failures = [error for _, error in decoder.results()]
    assert built_in == [threading.current_thread()]
    assert [error.reason for error in failures] == ["no face found (alignment needs the face's landmarks)"] * 6


def _die(chunk):
    os._exit(3)


def test_a_decoding_process_that_dies_is_a_one_line_error_naming_its_files(built, monkeypatch):
    # What a file that crashes the image decoder does: the worker vanishes mid-chunk.
    monkeypatch.setattr(api, "_decode_files", _die)
    paths = built["index"]["path"].tolist()
    model = load_model(built["dir"], device="cpu", precision="fp32")
    with pytest.raises(UserError, match=rf"a process decoding images died abruptly .* one of {api.DECODE_CHUNK} files: {re.escape(paths[0])} \.\.\. "):
        model.embed_many(paths)


def test_a_lazy_model_decodes_before_torch_loads_and_embeds_alike(built, decoder_spy):
    """In a fresh interpreter: load_model(lazy=True) imports no torch; the first embedding call
    starts the decoding processes before torch loads, and gives the eager model's embeddings."""
    probe = decoder_spy + (
        "model = api.load_model(sys.argv[1], device='cpu', precision='fp32', lazy=True)\n"
        "loaded = 'torch' in sys.modules\n"
        "vectors = model.embed(sys.argv[2:])\n"
        "print(json.dumps({'torch_at_load': loaded, 'decoder': started, 'vectors': vectors.tolist()}))\n"
    )
    paths = built["index"]["path"].tolist()
    result = subprocess.run([sys.executable, "-c", probe, str(built["dir"]), *paths], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["torch_at_load"] is False
    assert report["decoder"] == [False, True]  # no torch yet when the worker processes started
    np.testing.assert_allclose(np.array(report["vectors"]), built["embeddings"], atol=1e-5)


def test_a_lazy_model_reports_bad_weights_at_first_use(built, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(built["dir"], broken)
    (broken / "backbone" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFolderError, match="cannot load the weights"):
        load_model(broken, device="cpu")
    lazy = load_model(broken, device="cpu", lazy=True)
    with pytest.raises(ModelFolderError, match="model.pt: cannot load the weights"):
        lazy.embed_many(built["index"]["path"].tolist())
    config = json.loads((broken / "backbone" / "model.json").read_text())
    (broken / "backbone" / "model.json").write_text(json.dumps({**config, "backbone": "resnet9000"}))
    with pytest.raises(ModelFolderError, match="backbone 'resnet9000' is unknown"):
        load_model(broken, device="cpu")
    with pytest.raises(ModelFolderError, match="backbone 'resnet9000' is unknown"):
        load_model(broken, device="cpu", lazy=True).embed(built["index"].at[0, "path"])


def test_a_failing_crop_is_an_image_error_naming_the_file(model, built, monkeypatch):
    import maskface.face.crop

    def no_face(*args, **kwargs):
        raise ValueError("no face found (alignment on)")

    monkeypatch.setattr(maskface.face.crop, "crop_details", no_face)
    with pytest.raises(ImageError, match="preprocessing failed: no face found"):
        model.embed(built["index"].at[0, "path"])


def test_enroll_then_identify_open_set(built, tmp_path):
    index, embeddings = built["index"], built["embeddings"]
    gallery_dir = tmp_path / "gallery"
    enrolled = {}
    for identity in ("id00", "id01", "id02"):
        rows = index.index[index["identity"] == identity][:3]
        (gallery_dir / identity).mkdir(parents=True)
        for row in rows:
            target = gallery_dir / identity / f"{row}.png"
            shutil.copyfile(index.at[row, "path"], target)
            enrolled[row] = identity
    # Oracle: cosine scores from the pipeline's own embeddings, best per identity.
    probe_known = list(enrolled)[4]  # an enrolled picture of id01
    probe_unknown = int(index.index[index["identity"] == "id09"][0])

    def best_by_identity(row):
        scores = {}
        for gallery_row, identity in enrolled.items():
            scores[identity] = max(scores.get(identity, -2.0), float(embeddings[row] @ embeddings[gallery_row]))
        return sorted(scores.items(), key=lambda item: -item[1])

    unknown_best = best_by_identity(probe_unknown)[0][1]
    assert unknown_best < 0.99999  # the threshold below sits between the two probes
    model = load_model(as_cosine_folder(built["dir"], tmp_path / "cosine", threshold=0.99999), device="cpu", precision="fp32")
    gallery = model.enroll(gallery_dir)
    assert len(gallery) == 9 and gallery.identity_names == ["id00", "id01", "id02"]
    saved = load_gallery(gallery.save(tmp_path / "gallery"))  # .npz appended
    np.testing.assert_array_equal(saved.embeddings, gallery.embeddings)
    assert list(saved.identities) == list(gallery.identities)

    known, unknown = model.identify([index.at[probe_known, "path"], index.at[probe_unknown, "path"]], saved, top=2)
    assert known.identity == "id01" and known.known and known.score == pytest.approx(1.0, abs=1e-5)
    assert unknown.identity == UNKNOWN and not unknown.known
    expected = best_by_identity(probe_unknown)[:2]
    assert [c.identity for c in unknown.candidates] == [name for name, _ in expected]
    np.testing.assert_allclose([c.score for c in unknown.candidates], [score for _, score in expected], atol=1e-5)


def test_a_gallery_from_another_model_is_refused(built, tmp_path):
    model = load_model(built["dir"], device="cpu")
    gallery = model.enroll({"x": [built["index"].at[0, "path"]], "y": [built["index"].at[9, "path"]]})
    other_dir = tmp_path / "retrained"
    shutil.copytree(built["dir"], other_dir)
    torch.manual_seed(1)
    save_model(create_model("alexnet", weights="none", embedding_size=16, input_size=64), other_dir / "backbone", {"weights": "none"})
    other = load_model(other_dir, device="cpu")
    with pytest.raises(GalleryError, match="enrolled with another model"):
        other.identify([built["index"].at[0, "path"]], gallery)
    path = gallery.save(tmp_path / "g.npz")
    assert load_gallery(path).meta["model_fingerprint"] == model.folder.fingerprint()


def test_gallery_files_are_checked(tmp_path):
    with pytest.raises(GalleryError, match="missing"):
        load_gallery(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("a list of names")
    with pytest.raises(GalleryError, match="not a maskface gallery"):
        load_gallery(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", values=np.zeros(3))
    with pytest.raises(GalleryError, match="not a maskface gallery"):
        load_gallery(tmp_path / "other.npz")
    Gallery(np.zeros((1, 4)), ["a"], ["a.png"], {"format": "maskface-gallery", "format_version": 9}).save(tmp_path / "new.npz")
    with pytest.raises(GalleryError, match="format version 9"):
        load_gallery(tmp_path / "new.npz")


class _WritesFile:
    """Unpickling this runs code: it writes ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('code from the gallery ran')",))


@pytest.mark.parametrize("field", ["identities", "meta", "embeddings"])
def test_a_gallery_with_pickled_arrays_is_refused_unread(tmp_path, field):
    canary = tmp_path / "canary.txt"
    path = tmp_path / "evil.npz"
    meta = json.dumps({"format": "maskface-gallery", "format_version": 1})
    arrays = {"embeddings": np.zeros((1, 4), np.float32), "identities": np.array(["a"]), "paths": np.array(["a.png"]), "meta": np.array(meta)}
    arrays[field] = np.array([_WritesFile(canary)], dtype=object)
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=True) as data:  # the payload is live: an unsafe reader runs it
        data[field]
    assert canary.exists()
    canary.unlink()
    with pytest.raises(GalleryError, match=r"evil\.npz: not a maskface gallery: .*allow_pickle") as caught:
        load_gallery(path)
    assert "\n" not in str(caught.value)
    assert not canary.exists()


def test_expand_paths_walks_folders_for_images_only(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_paths([tmp_path / "a", tmp_path / "absent.jpg"])
    assert found == [str(tmp_path / "a" / "1.jpg"), str(tmp_path / "a" / "b" / "2.PNG"), str(tmp_path / "absent.jpg")]


def test_batch_size_and_precision_are_checked(built):
    with pytest.raises(ValueError, match="batch_size 0"):
        load_model(built["dir"], device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="precision 'fp8' is invalid"):
        load_model(built["dir"], device="cpu", precision="fp8")


def test_embedding_through_the_pipeline_embed_array_is_identical_in_batches(model, built):
    images, _ = open_crops(built["crops"])
    direct = embed_array(model.embedder, images, np.arange(10), batch_size=10, progress=False)
    np.testing.assert_allclose(model.embed(built["index"]["path"][:10].tolist(), batch_size=3), direct, atol=1e-5)


def test_package_exposes_load_model_lazily():
    import maskface
    from maskface.api import load_model as api_load_model

    assert maskface.load_model is api_load_model


def test_flip_recorded_by_the_pipeline_is_applied_by_the_api(build_toy_model_folder, tmp_path):
    """A folder whose embeddings were flip-augmented embeds new photos the same way."""
    import json

    import torch

    from maskface.inference.embed import embed_crops, load_model as load_backbone

    built = build_toy_model_folder(tmp_path)
    embed_crops(built["crops"], built["dir"] / "backbone", tmp_path / "flipped", batch_size=32, device="cpu", precision="fp32", flip=True)
    settings = json.loads((tmp_path / "flipped" / "embed.json").read_text())
    assert settings["flip"] is True
    meta_path = built["dir"] / "classifier" / "classifier.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "embedding": settings}))
    flipped = load_model(built["dir"], device="cpu", batch_size=32, precision="fp32")
    assert flipped.folder.flip and flipped.summary()["flip"]
    images, index = open_crops(built["crops"])
    # Oracle: the stage's own flip embeddings, and by hand the head output of image + mirror.
    expected = np.load(tmp_path / "flipped" / "embeddings.npy")
    np.testing.assert_allclose(flipped.embed(index["path"].tolist()), expected, atol=1e-5)
    network = load_backbone(built["dir"] / "backbone", fold_batch_norm=False)
    pixels = torch.from_numpy(np.asarray(images[:4]))
    with torch.no_grad():
        raw = network.head(network.features(pixels)) + network.head(network.features(pixels.flip(-1)))
    np.testing.assert_allclose(expected[:4], torch.nn.functional.normalize(raw, dim=1).numpy(), atol=1e-5)


def test_shift_recorded_by_the_pipeline_is_applied_by_the_api(build_toy_model_folder, tmp_path):
    """A folder whose embeddings were shift-augmented embeds new photos the same way, and its
    fingerprint differs from the flip-only folder's (a gallery must not mix the two)."""
    import json

    import torch

    from maskface.inference.embed import embed_crops, load_model as load_backbone
    from maskface.models.backbones import shifted

    built = build_toy_model_folder(tmp_path)
    embed_crops(built["crops"], built["dir"] / "backbone", tmp_path / "shifted", batch_size=32, device="cpu", precision="fp32",
                flip=True, shift=0.05)
    settings = json.loads((tmp_path / "shifted" / "embed.json").read_text())
    assert settings["flip"] is True and settings["shift"] == 0.05
    meta_path = built["dir"] / "classifier" / "classifier.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "embedding": {**settings, "shift": 0.0}}))
    flip_only = load_model(built["dir"], device="cpu")
    meta_path.write_text(json.dumps({**meta, "embedding": settings}))
    moved = load_model(built["dir"], device="cpu", batch_size=32, precision="fp32")
    assert moved.folder.shift == 0.05 and moved.summary()["shift"] == 0.05
    assert moved.folder.fingerprint() != flip_only.folder.fingerprint()
    images, index = open_crops(built["crops"])
    expected = np.load(tmp_path / "shifted" / "embeddings.npy")
    np.testing.assert_allclose(moved.embed(index["path"].tolist()), expected, atol=1e-5)
    # Oracle by hand: the head outputs of the crop and its four moved copies, each plus its mirror.
    network = load_backbone(built["dir"] / "backbone", fold_batch_norm=False)
    pixels = torch.from_numpy(np.asarray(images[:4]))
    step = round(0.05 * pixels.shape[-1])
    views = [pixels] + [shifted(pixels, right * step, down * step) for right, down in [(1, 0), (-1, 0), (0, 1), (0, -1)]]
    with torch.no_grad():
        raw = sum(network.head(network.features(view)) + network.head(network.features(view.flip(-1))) for view in views)
    np.testing.assert_allclose(expected[:4], torch.nn.functional.normalize(raw, dim=1).numpy(), atol=1e-5)


def test_a_fusion_model_folder_round_trips_through_load_and_embed(toy_dataset, tmp_path, monkeypatch):
    """edgeface+mobilefacenet trained by the pipeline's own finetune (one epoch, both members'
    last groups), embedded by the embed stage, loaded through the API: same embeddings, and
    the API's cosine is the fused one."""
    from maskface.artifacts import load_embeddings
    from maskface.evaluation.classify import classifier_metadata, fit_and_score
    from maskface.config import ArcFaceConfig, BackboneConfig, ClassifyConfig, CropConfig, FinetuneConfig
    from maskface.face.crop import PREPROCESS_FILE, crop_dataset
    from maskface.inference.embed import embed_crops, load_model as load_embedder
    from maskface.evaluation.classify import save_classifier
    from maskface.tables import read_csv
    from maskface.training.train import finetune

    monkeypatch.chdir(tmp_path)  # outside any repository DVCLive only writes files
    crops = tmp_path / "crops"
    crop_dataset(toy_dataset["manifest"], CropConfig(mode="ratio", keep_ratio=0.75, template="arcface"), 112, crops)
    folder = tmp_path / "edgeface+mobilefacenet"
    config = BackboneConfig(
        epochs=1, embedding_size=640, head_init="identity", train_layers="last_5", batch_size=16, lr=1e-3, warmup_epochs=0,
    )
    summary = finetune(
        "edgeface+mobilefacenet", crops, toy_dataset["pairs_dir"] / "val.csv", folder / "backbone", tmp_path / "live",
        config, ArcFaceConfig(), FinetuneConfig(seed=0, device="cpu"), progress=False,
    )
    assert summary["started_from"] is None  # weights none: from scratch
    assert (folder / "backbone" / PREPROCESS_FILE).is_file()
    embed_crops(crops, folder / "backbone", tmp_path / "embeddings", batch_size=32, device="cpu", precision="fp32")
    embeddings, index = load_embeddings(tmp_path / "embeddings")
    val = read_csv(toy_dataset["pairs_dir"] / "val.csv")
    test = read_csv(toy_dataset["pairs_dir"] / "test.csv")
    _, threshold, _, _ = fit_and_score(embeddings, index, val, test, "cosine", None, ClassifyConfig(train_pairs_per_identity=9))
    save_classifier(None, folder / "classifier", classifier_metadata("cosine", None, threshold, embeddings.shape[1]))

    model = load_model(folder, device="cpu", batch_size=16, precision="fp32")
    assert model.backbone == "edgeface+mobilefacenet" and model.embedding_size == 640 and model.input_size == 112
    paths = index["path"].tolist()
    rows = [0, 1, 2, 3, 40, len(paths) - 1]
    vectors = model.embed([paths[k] for k in rows])
    np.testing.assert_allclose(vectors, embeddings[rows], atol=1e-5)
    result = model.verify(paths[0], paths[-1])
    assert result.cosine == pytest.approx(float(embeddings[0] @ embeddings[-1]), abs=1e-5)
    assert result.same == (result.score >= threshold)
    # The saved weights are what training kept: the unfolded network from the folder agrees too.
    unfolded = load_embedder(folder / "backbone", fold_batch_norm=False)
    with torch.no_grad():
        again = unfolded(torch.from_numpy(np.stack([model.preprocess(p) for p in paths[:4]]))).numpy()
    np.testing.assert_allclose(again, embeddings[:4], atol=1e-5)
