"""Mask segmentation from colour and texture, checked against the synthetic masks' ground truth."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import jaccard_score

from maskface.face.crop import crop_details
from maskface.face.geometry import FaceDetector, alignment_matrix
from maskface.face.mask_segmentation import (
    NOMINAL_MOUTH_DEPTH,
    mask_iou,
    prior_region,
    rasterise,
    regularise_landmarks,
    segment_mask,
)
from maskface.data.masks import MASK_STYLES
from maskface.data.synthetic import render_face, sample_identity


def _faces(count, masked, seed, size=140, style=None):
    faces = []
    for i in range(count):
        identity = sample_identity(np.random.default_rng([seed, i]))
        faces.append(render_face(identity, np.random.default_rng([seed, 50 + i]), size, masked, style))
    return faces


@pytest.fixture(scope="module")
def masked_faces():
    return [face for k, style in enumerate(MASK_STYLES) for face in _faces(8, True, 20 + k, style=style)]


def test_mask_iou_matches_scikit_learn():
    rng = np.random.default_rng(0)
    a, b = rng.random((30, 40)) < 0.4, rng.random((30, 40)) < 0.5
    assert mask_iou(a, b) == pytest.approx(jaccard_score(b.ravel(), a.ravel()))
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def _distance_to_outline(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def test_rasterise_agrees_with_a_point_in_polygon_oracle():
    """Pixels whose centre is inside; only pixels the outline crosses may differ."""
    from matplotlib.path import Path as MplPath

    polygon = np.array([[10.3, 5.2], [50.7, 12.1], [44.2, 40.9], [8.1, 33.3]])
    ys, xs = np.mgrid[0:50, 0:60]
    centres = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    expected = MplPath(polygon).contains_points(centres).reshape(50, 60)
    differ = (rasterise(polygon, (50, 60)) != expected).ravel()
    assert differ.sum() < 0.03 * expected.sum()
    assert (_distance_to_outline(centres[differ], polygon) < 0.71).all()


def test_segmentation_agrees_with_the_true_mask_region(masked_faces):
    """Ground-truth landmarks: IoU with the drawn mask above 0.8 for every face, every style;
    colour and texture beat the landmark-only prior."""
    ious, priors = [], []
    for image, truth in masked_faces:
        result = segment_mask(np.asarray(image), truth["landmarks"])
        assert result.found
        ious.append(mask_iou(result.region, truth["mask_region"]))
        priors.append(mask_iou(result.prior, truth["mask_region"]))
    assert min(ious) > 0.8 and np.mean(ious) > 0.9
    assert np.mean(ious) > np.mean(priors)


def test_segmentation_is_deterministic_whatever_ran_before(masked_faces):
    """GrabCut's k-means draws from OpenCV's global generator: another OpenCV call in
    between must not change the result (training and inference must agree)."""
    import cv2

    image, truth = masked_faces[0]
    first = segment_mask(np.asarray(image), truth["landmarks"]).region
    cv2.kmeans(np.random.default_rng(0).random((50, 2), dtype=np.float32), 3, None, (3, 10, 1.0), 1, cv2.KMEANS_PP_CENTERS)
    np.testing.assert_array_equal(segment_mask(np.asarray(image), truth["landmarks"]).region, first)


def test_segmentation_with_detected_landmarks(masked_faces):
    """End to end: MTCNN landmarks (with the border), then segmentation; mean IoU above 0.8."""
    images = [image for image, _ in masked_faces[::2]]
    detections = FaceDetector(device="cpu").detect(images)
    ious = [
        mask_iou(segment_mask(np.asarray(image), detection.landmarks).region, truth["mask_region"])
        for (image, truth), detection in zip(masked_faces[::2], detections)
        if detection.detected
    ]
    assert len(ious) >= 0.75 * len(images)
    assert np.mean(ious) > 0.8


def test_unmasked_faces_are_mostly_not_taken_for_masks():
    faces = _faces(16, False, 30)
    found = [segment_mask(np.asarray(image), truth["landmarks"]).found for image, truth in faces]
    assert np.mean(found) <= 0.1
    # Without a mask the region is the prior: where a mask would be.
    image, truth = faces[int(np.argmin(found))]
    result = segment_mask(np.asarray(image), truth["landmarks"])
    np.testing.assert_array_equal(result.region, result.prior)


def test_mask_mode_blanks_the_true_mask_region_of_the_aligned_face(masked_faces):
    """The crop's blanked pixels against the true region warped by an independently built matrix."""
    import cv2

    ious = []
    for image, truth in masked_faces[::3]:
        face = crop_details(image, truth["landmarks"], {"mode": "mask", "align": True, "blank": "constant", "blank_value": 7}, 112)
        matrix = alignment_matrix(truth["landmarks"], 112, "facenet", "eyes")
        expected = cv2.warpAffine(truth["mask_region"].astype(np.uint8), matrix, (112, 112), flags=cv2.INTER_NEAREST) > 0
        assert face.mask_found and (face.image[face.region] == 7).all()
        ious.append(mask_iou(face.region, expected))
    assert min(ious) > 0.8


def test_mean_blank_fills_with_the_visible_mean():
    image, truth = _faces(1, True, 40)[0]
    face = crop_details(image, truth["landmarks"], {"mode": "mask"}, 96)
    unblanked = crop_details(image, truth["landmarks"], {"mode": "none"}, 96).image
    expected = np.rint(unblanked[~face.region].mean(axis=0))
    np.testing.assert_array_equal(face.image[face.region], np.broadcast_to(expected, face.image[face.region].shape))
    np.testing.assert_array_equal(face.image[~face.region], unblanked[~face.region])


def test_blank_without_mask_off_leaves_unmasked_faces_whole():
    faces = _faces(6, False, 30)
    for image, truth in faces:
        face = crop_details(image, truth["landmarks"], {"mode": "mask", "blank_without_mask": False}, 96)
        if not face.mask_found:
            np.testing.assert_array_equal(face.image, crop_details(image, truth["landmarks"], {"mode": "none"}, 96).image)
            return
    pytest.fail("every unmasked face was taken for a masked one")


def test_regularise_replaces_only_implausible_points():
    good = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 68.0], [45.0, 84.0], [75.0, 84.0]])
    np.testing.assert_array_equal(regularise_landmarks(good), good)
    bad = good.copy()
    bad[3:] = [[45.0, 52.0], [75.0, 52.0]]  # mouth on the eye line
    fixed = regularise_landmarks(bad)
    np.testing.assert_array_equal(fixed[:3], good[:3])
    assert fixed[3:, 1] == pytest.approx([50.0 + NOMINAL_MOUTH_DEPTH * 40.0] * 2)
    with pytest.raises(ValueError, match="coincide"):
        regularise_landmarks(np.array([[5.0, 5.0]] * 5))


def test_prior_covers_every_style_outline():
    from maskface.data.masks import mask_polygon

    landmarks = np.array([[70.0, 80.0], [130.0, 80.0], [100.0, 115.0], [78.0, 142.0], [122.0, 142.0]])
    prior = prior_region(landmarks, (220, 200))
    for style in MASK_STYLES:
        outline = rasterise(mask_polygon(landmarks, style, (200, 220)), (220, 200))
        assert (outline & ~prior).sum() == 0
    assert not prior[80, 70] and not prior[80, 130]  # the eyes stay visible


@pytest.mark.realdata
def test_real_masks_are_found_on_rmfrd(datasets_root):
    """rmfrd-dev sample: masks are found on most masked faces and on few unmasked ones."""
    root = datasets_root / "rmfrd-dev"
    detector = FaceDetector(device="cpu")
    rates = {}
    for side, folder in (("masked", "AFDB_masked_face_dataset"), ("unmasked", "AFDB_face_dataset")):
        paths = sorted((root / folder).glob("*/*"))[::60]
        images = [Image.open(p).convert("RGB") for p in paths]
        found = [
            segment_mask(np.asarray(image), detection.landmarks).found
            for image, detection in zip(images, detector.detect(images))
            if detection.detected
        ]
        rates[side] = float(np.mean(found))
    print("rmfrd-dev sample, mask found:", rates)
    assert rates["masked"] >= 0.8 and rates["unmasked"] <= 0.35
