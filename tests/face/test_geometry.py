"""Landmark detection (MTCNN with a border), the landmark table, similarity alignment, crop modes."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

import maskface.face.geometry
from maskface.config import CropConfig
from maskface.face.crop import crop_details
from maskface.face.geometry import (
    FaceDetector,
    alignment_matrix,
    detect_table,
    detection_batches,
    detection_rates,
    face_filter,
    ground_truth_table,
    landmark_table,
    process_count,
    pyramid_min_face,
    read_landmark_table,
    similarity_transform,
    template_points,
    transform_points,
    warp_affine,
)
from maskface.imageio import load_rgb
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


def _facenet_scales(min_face: float, shorter: int, factor: float = 0.709) -> list[float]:
    """facenet-pytorch's scale pyramid (detect_face), written out: the oracle for the skipped levels."""
    scale, side, scales = 12.0 / min_face, shorter * 12.0 / min_face, []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def test_min_face_share_keeps_a_tail_of_the_full_pyramid():
    full = _facenet_scales(20, 256)
    assert pyramid_min_face(20, 0.0, 160) == 20
    for share, shorter, skipped in ((0.1, 160, 0), (0.2, 160, 1), (0.25, 160, 2), (0.25, 250, 3), (1.0, 160, 6)):
        kept = _facenet_scales(pyramid_min_face(20, share, shorter), 256)
        # The same levels, the finest `skipped` of them dropped; the next would skip a face the share asks for.
        np.testing.assert_allclose(kept, full[skipped:], rtol=1e-12)
        assert 20 / 0.709**skipped <= max(20, share * shorter) < 20 / 0.709 ** (skipped + 1)


def test_a_face_smaller_than_the_share_is_found_by_the_full_pyramid_retry():
    """A rendered face at a seventh of a 640 x 480 photo's height (a person in a press photo):
    the cut pyramid cannot see it, the retry through the full pyramid finds it where the
    inference detector (full pyramid) does; faces that fill the frame never need the retry."""
    face, truth = _faces(1, masked=False, seed=3, size=70)[0]
    photo = Image.new("RGB", (640, 480), (90, 120, 90))
    photo.paste(face, (400, 150))
    share = FaceDetector(device="cpu", min_face_share=0.25)
    full = FaceDetector(device="cpu", min_face_share=0.0)
    retried, alone = share.detect_one(photo), full.detect_one(photo)
    assert alone.detected and retried.detected
    np.testing.assert_allclose(retried.landmarks, alone.landmarks, atol=1e-3)
    np.testing.assert_allclose(retried.landmarks[:2], truth["landmarks"][:2] + (400, 150), atol=4.0)
    # Without the retry (the pyramid cut alone) there is nothing: the retry is what finds it.
    calls = []
    original = share._detect_groups
    share._detect_groups = lambda images, prepared, indices, results, cut: calls.append((list(indices), cut)) or original(images, prepared, indices, results, cut)
    filling = _faces(1, masked=False, seed=4, size=120)[0][0]
    found = share.detect([photo, filling])
    assert calls == [([0, 1], 0.25), ([0], 0.0)] and all(d.detected for d in found)
    assert "retry=full" in share.settings and "retry" not in full.settings


def test_detection_batches_hold_one_size_each_and_every_image_once(tmp_path):
    sizes = [(100, 100), (120, 90), (100, 100), (120, 90), (100, 100), (64, 64), (100, 100)]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", size, (i * 30, 80, 80)).save(paths[-1])
    batches = detection_batches(paths, batch_size=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(paths)))
    assert all(len({sizes[i] for i in batch}) == 1 and len(batch) <= 3 for batch in batches)
    # Full batches: the four 100 px images make one batch of 3 and one of 1, not four of 1.
    assert sorted(len(batch) for batch in batches) == [1, 1, 2, 3]


def test_process_count_is_one_per_core_on_the_cpu_only_when_worth_it(monkeypatch):
    monkeypatch.setattr(maskface.face.geometry, "MIN_IMAGES_PER_PROCESS", 10)
    monkeypatch.setattr(maskface.face.geometry.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert process_count(0, 1000, "cpu") == 4 and process_count(2, 1000, "cpu") == 2
    assert process_count(0, 25, "cpu") == 2 and process_count(0, 5, "cpu") == 1
    assert process_count(0, 1000, "cuda") == 1
    with pytest.raises(ValueError, match="valid: 0"):
        process_count(-1, 10, "cpu")


def test_table_rounding_is_pythons_round_exactly():
    """The landmark table's vectorised rounding against Python's own round, value by value,
    ties and near-ties included (np.round differs on some of these)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.uniform(-500, 2000, 20000),
        np.arange(-2000, 2000) / 200 + 0.005,  # x.xx5: decimal ties, most not exact in binary
        np.array([2.675, 1.005, 0.125, -0.125, 1e-9, -1e-9, 0.0, -0.0, 1e15 + 0.125, 3e300, np.nan, np.inf, -np.inf]),
    ])
    for digits in (2, 6):
        got = maskface.face.geometry._rounded(values, digits)
        expected = np.array([round(v, digits) if np.isfinite(v) else np.nan for v in values.tolist()])
        np.testing.assert_array_equal(got, expected)
    # The values hold cases where numpy's own rounding is not Python's: what the fallback is for.
    assert not np.array_equal(np.round(values, 2), [round(v, 2) for v in values.tolist()], equal_nan=True)


def _one_by_one(paths: list[str]) -> list:
    """The oracle: each image alone through the full pyramid, as inference detects a new photo."""
    alone = FaceDetector(device="cpu", min_face_share=0.0)
    return [alone.detect_one(load_rgb(path)) for path in paths]


def _assert_same_as_one_by_one(table: pd.DataFrame, paths: list[str]) -> None:
    oracle = _one_by_one(paths)
    assert table["path"].tolist() == paths
    assert table["detected"].tolist() == [d.detected for d in oracle]
    points = table[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(-1, 5, 2)
    for row, detection in enumerate(oracle):
        if detection.detected:
            # The table keeps 2 decimals; a batch and a lone image differ by < 1e-4 px in float.
            np.testing.assert_allclose(points[row], detection.landmarks, atol=0.0051 + 1e-4)
            assert abs(table["confidence"].iloc[row] - detection.confidence) < 1e-4


def test_grouped_processes_give_the_landmarks_of_one_image_at_a_time(tmp_path, monkeypatch):
    """Synthetic faces of three sizes, shuffled: batched by size, the default min_face_share,
    two worker processes, against each image alone through the full pyramid."""
    monkeypatch.setattr(maskface.face.geometry, "MIN_IMAGES_PER_PROCESS", 1)
    faces = _faces(2, masked=False, seed=11, size=120) + _faces(2, masked=True, seed=12, size=150) + _faces(2, masked=False, seed=13, size=136)
    order = np.random.default_rng(0).permutation(len(faces))
    paths = []
    for k in order:
        paths.append(str(tmp_path / f"face{k}.png"))
        faces[k][0].save(paths[-1])
    detector = FaceDetector(device="cpu", min_face_share=CropConfig().detect_min_face_share, batch_size=2)
    table = detect_table(paths, detector, workers=2)
    assert table["detected"].sum() >= 5  # MTCNN finds most rendered faces, or this test proves little
    _assert_same_as_one_by_one(table, paths)


@pytest.mark.realdata
def test_real_faces_batched_by_size_match_one_at_a_time(datasets_root):
    """rmfrd-dev (160 px, masked and unmasked) and lfw-masktheface (250 px photos, 128 px
    crops): the split stage's default detection (batched by size, fewer pyramid levels)
    against one image at a time, full pyramid. One process: the test above covers several."""
    rmfrd = datasets_root / "rmfrd-dev"
    lfw = datasets_root / "lfw-masktheface"
    paths = [
        *map(str, sorted((rmfrd / "AFDB_face_dataset").glob("*/*"))[::100]),
        *map(str, sorted((rmfrd / "AFDB_masked_face_dataset").glob("*/*"))[::75]),
        *map(str, sorted((lfw / "AFDB_masked_face_dataset").glob("*/*"))[::500]),
    ]
    table = landmark_table(paths, CropConfig(landmarks="mtcnn", detect_device="cpu", detect_workers=1))
    assert len({load_rgb(p).size for p in paths}) >= 2 and table["detected"].mean() > 0.8
    _assert_same_as_one_by_one(table, paths)


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

    # Other detector settings: nothing is reused; the first settings' rows stay.
    detected.clear()
    landmark_table(changed, CropConfig(landmarks="mtcnn", detect_batch_size=2, detect_pad=0.2), cache)
    assert sum(detected) == len(changed)
    detected.clear()
    pd.testing.assert_frame_equal(landmark_table(changed, config, cache), again)
    assert detected == []

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
