"""Landmark detection (MTCNN with a border), the landmark table, similarity alignment, crop modes."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from maskface.config import CropConfig
from maskface.face.crop import crop_details
from maskface.face.geometry import (
    FaceDetector,
    alignment_matrix,
    detection_rates,
    face_filter,
    ground_truth_table,
    landmark_table,
    read_landmark_table,
    similarity_transform,
    template_points,
    transform_points,
    warp_affine,
)
from maskface.data.synthetic import LANDMARK_COLUMNS, render_face, sample_identity
from maskface.tables import write_csv


def _random_similarity(rng):
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.3, 3.0)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([rotation, rng.uniform(-50, 50, (2, 1))], axis=1)


def _faces(count, masked, seed=0, size=150):
    """Synthetic faces with their ground truth (landmarks, mask region)."""
    out = []
    for i in range(count):
        identity = sample_identity(np.random.default_rng([seed, i]))
        image, truth = render_face(identity, np.random.default_rng([seed, 100 + i]), size, masked, None)
        out.append((image, truth))
    return out


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(device="cpu", pad=0.3)


def test_similarity_transform_recovers_a_known_transform_exactly():
    rng = np.random.default_rng(0)
    for _ in range(5):
        matrix = _random_similarity(rng)
        source = rng.uniform(0, 200, (5, 2))
        target = source @ matrix[:, :2].T + matrix[:, 2]
        np.testing.assert_allclose(similarity_transform(source, target), matrix, atol=1e-9)
        # Two points determine a similarity.
        np.testing.assert_allclose(similarity_transform(source[:2], target[:2]), matrix, atol=1e-9)


def test_similarity_transform_never_reflects():
    source = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    mirrored = source * np.array([-1.0, 1.0])
    matrix = similarity_transform(source, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_eye_alignment_puts_the_eyes_exactly_on_the_template():
    landmarks = np.array([[40.0, 70.0], [95.0, 58.0], [70.0, 95.0], [50.0, 120.0], [92.0, 112.0]])
    for template in ("facenet", "arcface"):
        matrix = alignment_matrix(landmarks, 160, template, "eyes")
        np.testing.assert_allclose(transform_points(landmarks[:2], matrix), template_points(template, 160)[:2], atol=1e-9)


def test_warp_moves_pixels_to_where_the_matrix_sends_them():
    """Oracle: centroids of Gaussian blobs drawn at the landmarks, found again after the warp."""
    template = template_points("facenet", 160)
    # A rotated (21 degrees), slightly shrunk and shifted face in a 260 x 260 image.
    pose = np.array([[0.9, -0.35, 60.0], [0.35, 0.9, 20.0]])
    truth = transform_points(template, pose)
    ys, xs = np.mgrid[0:260, 0:260].astype(float)
    blobs = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2)) for x, y in truth)
    image = np.repeat(np.round(blobs * 230)[..., None], 3, axis=2).astype(np.uint8)
    matrix = alignment_matrix(truth, 160, "facenet", "all")
    warped = warp_affine(image, matrix, (160, 160))[..., 0].astype(float)
    for expected in template:
        x0, y0 = np.round(expected).astype(int)
        window = warped[y0 - 7 : y0 + 8, x0 - 7 : x0 + 8]
        wy, wx = np.mgrid[y0 - 7 : y0 + 8, x0 - 7 : x0 + 8]
        centroid = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
        assert np.linalg.norm(centroid - expected) < 0.3


def test_strong_reduction_does_not_alias():
    """A fine stripe pattern shrunk 6x must come out flat grey, not as moire."""
    stripes = np.zeros((600, 600, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    matrix = np.array([[1 / 6, 0, 0], [0, 1 / 6, 0]])
    out = warp_affine(stripes, matrix, (100, 100)).astype(float)
    assert abs(out.mean() - 127.5) < 3 and out[5:-5, 5:-5].std() < 3


def test_mtcnn_aligns_synthetic_faces_to_within_a_few_pixels(detector):
    """Detected landmarks -> eye alignment; the true eyes land within a few px of the template at 160 px."""
    faces = _faces(12, masked=False)
    detections = detector.detect([image for image, _ in faces])
    errors = []
    for (image, truth), detection in zip(faces, detections):
        if detection.detected:
            matrix = alignment_matrix(detection.landmarks, 160, "facenet", "eyes")
            aligned_truth = transform_points(truth["landmarks"][:2], matrix)
            errors.append(np.linalg.norm(aligned_truth - template_points("facenet", 160)[:2], axis=1))
    assert len(errors) >= 11  # MTCNN finds the cartoon faces
    errors = np.concatenate(errors)
    # Eye distance at 160 px is 58 px: 3 px is 5 % of it.
    assert np.median(errors) < 3.0 and np.percentile(errors, 90) < 6.0


def test_eye_alignment_ignores_the_nose_and_mouth_a_mask_displaces():
    """With nose and mouth points pushed off (as MTCNN guesses them under a mask), the eyes
    still land exactly on the template with points='eyes', but not with all five."""
    rng = np.random.default_rng(7)
    template = template_points("facenet", 160)
    for _ in range(5):
        truth = transform_points(template, _random_similarity(rng))
        d = np.linalg.norm(truth[1] - truth[0])
        corrupted = truth.copy()
        corrupted[2:] += rng.normal(0, 0.3 * d, (3, 2))
        eyes_only = transform_points(truth[:2], alignment_matrix(corrupted, 160, "facenet", "eyes"))
        all_five = transform_points(truth[:2], alignment_matrix(corrupted, 160, "facenet", "all"))
        np.testing.assert_allclose(eyes_only, template[:2], atol=1e-6)
        assert np.abs(all_five - template[:2]).max() > 1.0


def test_border_and_downscale_results_map_back_to_original_pixels():
    image, truth = _faces(1, masked=False, seed=2, size=150)[0]
    plain = FaceDetector(device="cpu", pad=0.0).detect_one(image)
    padded = FaceDetector(device="cpu", pad=0.5).detect_one(image)
    big = image.resize((450, 450), Image.Resampling.BICUBIC)
    capped = FaceDetector(device="cpu", pad=0.3, max_side=160).detect_one(big)
    assert plain.detected and padded.detected and capped.detected
    for detection, scale in ((plain, 1.0), (padded, 1.0), (capped, 3.0)):
        # Pixel centres: a point x in the small image is (x + 0.5) * 3 - 0.5 in the big one.
        expected = (truth["landmarks"][:2] + 0.5) * scale - 0.5
        assert np.abs(detection.landmarks[:2] - expected).max() < 3.0 * scale
    assert padded.padded == 0.5 and np.isnan(FaceDetector(device="cpu").detect_one(Image.new("RGB", (120, 120), (90, 90, 90))).confidence)


def test_batched_detection_equals_detection_one_by_one(detector):
    """A dataset batch and inference on one photo must agree (the crop stage vs the CLI)."""
    images = [image for image, _ in _faces(2, masked=False, seed=8, size=120) + _faces(2, masked=True, seed=9, size=136)]
    batched = detector.detect(images)
    for image, detection in zip(images, batched):
        alone = detector.detect_one(image)
        assert alone.detected == detection.detected
        if alone.detected:
            np.testing.assert_allclose(detection.landmarks, alone.landmarks, atol=1e-3)


def test_landmark_table_round_trip_filter_and_rates(tmp_path, detector):
    faces = _faces(3, masked=False, seed=4)
    paths = []
    for i, (image, _) in enumerate(faces):
        paths.append(str(tmp_path / f"face{i}.png"))
        image.save(paths[-1])
    paths.append(str(tmp_path / "blank.png"))
    Image.new("RGB", (120, 120), (90, 90, 90)).save(paths[-1])
    table = landmark_table(paths, CropConfig(landmarks="mtcnn"))
    write_csv(table, tmp_path / "landmarks.csv")
    again = read_landmark_table(tmp_path / "landmarks.csv")
    assert list(again["detected"]) == [True, True, True, False]
    np.testing.assert_allclose(again[list(LANDMARK_COLUMNS)].to_numpy(float)[:3], table[list(LANDMARK_COLUMNS)].to_numpy(float)[:3])
    assert set(again["landmark_source"]) == {"mtcnn"} and (again["padded"] == 0.3).all()

    threshold = float(np.sort(again["confidence"].to_numpy()[:3])[1])  # drops the least confident face
    dropped = face_filter(again, threshold)
    assert list(dropped["reason"]) == ["low_confidence", "no_face"]
    assert dropped["path"].iloc[1] == paths[-1]
    rates = detection_rates(again, [False, True, False, True])
    assert rates["rate"] == 0.75 and rates["masked"]["rate"] == 0.5 and rates["unmasked"]["rate"] == 1.0

    # No stage needs landmarks: nothing is detected.
    skipped = landmark_table(paths, CropConfig())
    assert not skipped["detected"].any() and set(skipped["landmark_source"]) == {"none"}


def test_landmark_cache_detects_only_new_or_edited_images(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, (image, _) in enumerate(_faces(3, masked=False, seed=5)):
        paths.append(str(folder / f"face{i}.png"))
        image.save(paths[-1])
    paths.append(str(folder / "blank.png"))
    Image.new("RGB", (120, 120), (90, 90, 90)).save(paths[-1])
    detected: list[int] = []
    real_detect = FaceDetector.detect

    def counting_detect(self, images):
        detected.append(len(images))
        return real_detect(self, images)

    monkeypatch.setattr(FaceDetector, "detect", counting_detect)
    config = CropConfig(landmarks="mtcnn", detect_batch_size=2)
    cache = tmp_path / "landmark-cache.csv"
    uncached = landmark_table(paths, config)
    first = landmark_table(paths, config, cache)
    pd.testing.assert_frame_equal(first, uncached)
    assert cache.is_file()

    detected.clear()
    pd.testing.assert_frame_equal(landmark_table(paths, config, cache), uncached)
    assert detected == []  # every image from the cache
    # The caller's digests (the split stage passes the manifest's) key the same entries.
    digests = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths]
    pd.testing.assert_frame_equal(landmark_table(paths, config, cache, digests), uncached)
    assert detected == []
    with pytest.raises(ValueError, match="3 digests for 4 paths"):
        landmark_table(paths, config, cache, digests[:3])

    # A renamed copy is found by its content; an edited image is detected again.
    renamed = str(folder / "renamed.png")
    Path(paths[0]).rename(renamed)
    _faces(1, masked=False, seed=9)[0][0].save(paths[1])
    changed = [renamed, *paths[1:]]
    detected.clear()
    again = landmark_table(changed, config, cache)
    assert sum(detected) == 1
    pd.testing.assert_frame_equal(again, landmark_table(changed, config))
    assert again["path"].tolist() == changed

    # Other detector settings: nothing is reused.
    detected.clear()
    landmark_table(changed, CropConfig(landmarks="mtcnn", detect_batch_size=2, detect_pad=0.2), cache)
    assert sum(detected) == len(changed)

    # A damaged cache only costs time.
    cache.write_text("not,a\ncache,file\n")
    detected.clear()
    pd.testing.assert_frame_equal(landmark_table(changed, config, cache), again)
    assert sum(detected) == len(changed)


def test_ground_truth_table_reads_the_renderer_landmarks(tmp_path):
    from maskface.config import SyntheticConfig
    from maskface.data.synthetic import generate_dataset

    truth = generate_dataset(tmp_path / "synthetic", SyntheticConfig(identities=2, images_per_identity=4, min_size=64, max_size=72))
    paths = [str(tmp_path / "synthetic" / p) for p in truth["path"]]
    table = ground_truth_table(paths)
    np.testing.assert_allclose(table[list(LANDMARK_COLUMNS)].to_numpy(float), truth[list(LANDMARK_COLUMNS)].to_numpy(float))
    assert table["detected"].all() and (table["landmark_source"] == "ground_truth").all()
    with pytest.raises(ValueError, match="synthetic"):
        ground_truth_table([str(tmp_path / "elsewhere" / "x" / "a.png")])


def _marked(image, points, colour=(255, 0, 255)):
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    for x, y in points:
        draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=colour)
    return marked


def _found(pixels, colour=(255, 0, 255)):
    return int((np.abs(pixels.astype(int) - colour).sum(axis=2) < 120).sum())


@pytest.mark.parametrize("align", [False, True])
def test_eyes_mode_never_removes_an_eye_where_the_half_crop_does(align):
    """Markers on both eyes and a quarter eye-distance below them must survive the eyes crop."""
    cut_by_ratio = 0
    for image, truth in _faces(24, masked=False, seed=5, size=140):
        eyes = truth["landmarks"][:2]
        d = float(np.linalg.norm(eyes[1] - eyes[0]))
        lower_lids = eyes + np.array([0.0, 0.25 * d])
        marked = _marked(image, np.concatenate([eyes, lower_lids]))
        crop = {"mode": "eyes", "align": align, "eye_line": 0.4}
        out = crop_details(marked, truth["landmarks"], crop, 96).image
        # 4 markers of 3x3 px, shrunk by up to ~1.5: every one leaves visible pixels.
        assert _found(out) >= 4
        for point in lower_lids:
            alone = crop_details(_marked(image, [point]), truth["landmarks"], crop, 96).image
            assert _found(alone) >= 1
        half = crop_details(_marked(image, lower_lids), truth["landmarks"], {"mode": "ratio", "keep_ratio": 0.5, "align": align}, 96).image
        cut_by_ratio += _found(half) == 0
    if not align:
        # Unaligned, the study's half crop loses the lower eyelids of some faces (where the
        # eye line falls low in the frame): the same check has teeth. Aligned, its cut sits
        # at a fixed place below the eyes.
        assert cut_by_ratio >= 1


def test_no_face_falls_back_to_the_unaligned_image():
    image, _ = _faces(1, masked=False, seed=6, size=120)[0]
    face = crop_details(image, None, {"mode": "none", "align": True}, 64)
    assert not face.face_found and not face.aligned
    np.testing.assert_array_equal(face.image, np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=3.0)))


@pytest.mark.realdata
def test_rmfrd_detection_rate_with_and_without_border(datasets_root, record_property):
    """A sample of rmfrd-dev: the border and low thresholds find masked faces MTCNN's defaults miss."""
    root = datasets_root / "rmfrd-dev"
    sides = {
        "unmasked": sorted((root / "AFDB_face_dataset").glob("*/*"))[::60],
        "masked": sorted((root / "AFDB_masked_face_dataset").glob("*/*"))[::45],
    }
    settings = {"default": FaceDetector(device="cpu", pad=0.0, thresholds=(0.6, 0.7, 0.7)), "border": FaceDetector(device="cpu")}
    rates = {}
    for side, paths in sides.items():
        images = [Image.open(p).convert("RGB") for p in paths]
        for name, found in settings.items():
            table = pd.DataFrame({"detected": [d.detected for d in found.detect(images)]})
            rates[f"{side}/{name}"] = detection_rates(table)["rate"]
    record_property("rmfrd_detection_rates", rates)
    print("rmfrd-dev sample detection rates:", rates)
    # Unmasked faces are found either way (full rmfrd-dev: 99.0 % and 100 %); masked ones far
    # more often with the border and low thresholds (full set: 68.6 % -> 94.7 %).
    assert rates["unmasked/default"] >= 0.75 and rates["unmasked/border"] >= 0.9
    assert rates["masked/border"] >= rates["masked/default"] + 0.2 and rates["masked/border"] >= 0.8
