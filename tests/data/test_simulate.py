"""Mask simulation: the augmentation, the dataset conversion (layout, manifest, seeds) and its CLI."""

import argparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskface.data.datasets import DataConfig, build_manifest, read_manifest
from maskface.data.masks import MASK_STYLES, mask_polygon
from maskface.face.mask_segmentation import rasterise
from maskface.data.simulate import add_simulate_parser, augment_with_mask, simulate_masks
from maskface.data.synthetic import render_face, sample_identity


def _face(seed, size=120, masked=False):
    identity = sample_identity(np.random.default_rng([seed, 0]))
    return render_face(identity, np.random.default_rng([seed, 1]), size, masked, None)


def _eye_boxes(landmarks):
    """Slices around each eye: a quarter eye distance either way."""
    d = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    r = int(0.25 * d)
    return [(slice(int(y) - r, int(y) + r + 1), slice(int(x) - r, int(x) + r + 1)) for x, y in landmarks[:2]]


def test_augment_draws_on_the_lower_face_only_and_is_seeded():
    image, truth = _face(0)
    pixels = np.asarray(image)
    landmarks = truth["landmarks"]
    out = augment_with_mask(pixels, landmarks, np.random.default_rng(5))
    again = augment_with_mask(pixels, landmarks, np.random.default_rng(5))
    np.testing.assert_array_equal(out, again)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    for box in _eye_boxes(landmarks):
        np.testing.assert_array_equal(out[box], pixels[box])
    # Whatever style was drawn, its smallest outline (N95) is painted over.
    inner = rasterise(mask_polygon(landmarks, "n95", image.size), pixels.shape[:2])
    changed = np.abs(out.astype(int) - pixels).sum(axis=2) > 0
    assert changed[inner].mean() > 0.95
    # Different generators give different masks.
    assert not np.array_equal(out, augment_with_mask(pixels, landmarks, np.random.default_rng(6)))


def test_augment_refuses_bad_input():
    image, truth = _face(1)
    with pytest.raises(ValueError, match="surgical, cloth, n95"):
        augment_with_mask(np.asarray(image), truth["landmarks"], np.random.default_rng(0), styles=("bandana",))
    with pytest.raises(ValueError, match="uint8"):
        augment_with_mask(np.asarray(image, dtype=float), truth["landmarks"], np.random.default_rng(0))


@pytest.fixture()
def lfw_like(tmp_path):
    """A tiny LFW-layout folder of synthetic unmasked faces (one greyscale)."""
    root = tmp_path / "src"
    for person in range(2):
        folder = root / f"Person_{person}"
        folder.mkdir(parents=True)
        for k in range(2):
            image, _ = _face(10 * person + k, size=110)
            if person == 1 and k == 1:
                image = image.convert("L")
            image.save(folder / f"Person_{person}_{k + 1:04d}.png")
    return root


def test_simulate_masks_keeps_the_layout_and_writes_a_usable_manifest(lfw_like, tmp_path):
    dst = tmp_path / "dst"
    manifest = simulate_masks(lfw_like, dst, "lfw", seed=3, device="cpu", on_no_face="template", workers=1)
    sources = sorted(p.relative_to(lfw_like).as_posix() for p in lfw_like.rglob("*.png"))
    assert sorted(manifest["path"]) == sources
    assert set(manifest["mask_style"]) <= set(MASK_STYLES) and manifest["masked"].all()
    assert set(manifest["identity"]) == {"Person_0", "Person_1"}
    # Greyscale stays greyscale.
    assert Image.open(dst / "Person_1" / "Person_1_0002.png").mode == "L"
    assert Image.open(dst / "Person_0" / "Person_0_0001.png").mode == "RGB"
    # The manifest is a valid `manifest` data source: every image accepted, all masked.
    result = build_manifest(DataConfig(source="manifest", root=str(dst / "manifest.csv"), workers=1))
    assert len(result.manifest) == len(sources) and result.manifest["masked"].all()
    assert (dst / "preview.png").is_file()
    written = read_manifest(dst / "manifest.csv")
    assert list(written.columns[:4]) == ["path", "identity", "masked", "mask_style"]

    # Same seed -> the same pixels; another seed -> other masks.
    again = simulate_masks(lfw_like, tmp_path / "again", "lfw", seed=3, device="cpu", on_no_face="template", workers=1)
    other = simulate_masks(lfw_like, tmp_path / "other", "lfw", seed=4, device="cpu", on_no_face="template", workers=1)
    pd.testing.assert_frame_equal(manifest.drop(columns="source_path"), again.drop(columns="source_path"))
    for path in sources:
        np.testing.assert_array_equal(np.asarray(Image.open(dst / path)), np.asarray(Image.open(tmp_path / "again" / path)))
    masked_paths = other.loc[other["masked"], "path"].tolist()
    assert masked_paths
    assert any(
        not np.array_equal(np.asarray(Image.open(dst / path)), np.asarray(Image.open(tmp_path / "other" / path)))
        for path in masked_paths
    )
    assert any(
        not np.array_equal(np.asarray(Image.open(dst / p)), np.asarray(Image.open(tmp_path / "other" / p))) for p in sources
    )


def test_simulate_masks_skips_masked_images_and_faceless_files(tmp_path):
    root = tmp_path / "folder"
    (root / "alice").mkdir(parents=True)
    _face(2)[0].save(root / "alice" / "plain.png")
    _face(3, masked=True)[0].save(root / "alice" / "mask_1.png")
    Image.new("RGB", (100, 100), (120, 120, 120)).save(root / "alice" / "wall.png")
    dst = tmp_path / "out"
    manifest = simulate_masks(root, dst, "folder", device="cpu", workers=1)
    assert list(manifest["path"]) == ["alice/plain.png"]
    skipped = pd.read_csv(dst / "skipped.csv")
    assert dict(zip(skipped["source_path"].map(lambda p: p.rsplit("/", 1)[-1]), skipped["reason"])) == {
        "mask_1.png": "already_masked",
        "wall.png": "no_face",
    }


def test_simulate_masks_refuses_unsafe_outputs(lfw_like, tmp_path):
    with pytest.raises(ValueError, match="overlaps"):
        simulate_masks(lfw_like, lfw_like / "out", "lfw", device="cpu")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        simulate_masks(lfw_like, busy, "lfw", device="cpu")
    with pytest.raises(ValueError, match="rmfrd, smfrd, lfw, folder, manifest"):
        simulate_masks(lfw_like, tmp_path / "new", "synthetic")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="maskface")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate-masks", *argv])
    return args.func(args)


def test_cli_runs_and_fails_with_one_line(lfw_like, tmp_path, capsys):
    assert _cli([str(lfw_like), str(tmp_path / "cli"), "--source", "lfw", "--device", "cpu", "--styles", "n95", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 masked images" in out and "n95 2" in out
    assert _cli([str(lfw_like), str(tmp_path / "bad"), "--styles", "scarf", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("maskface simulate-masks: error:") and "scarf" in error and "\n" not in error


@pytest.mark.realdata
def test_lfw_gray_masks_change_the_lower_face_and_leave_the_eyes(datasets_root, tmp_path):
    """lfw-gray-20, two people: the lower face changes, the eyes do not (beyond JPEG re-encoding)."""
    source = tmp_path / "lfw"
    people = sorted(p for p in (datasets_root / "lfw-gray-20").iterdir() if p.is_dir())[:2]
    for person in people:
        (source / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.jpg"))[:2]:
            (source / person.name / image.name).symlink_to(image)
    dst = tmp_path / "masked"
    manifest = simulate_masks(source, dst, "lfw", device="cpu", workers=1)
    assert len(manifest) >= 3
    for row in manifest.itertuples():
        before = np.asarray(Image.open(row.source_path), dtype=float)
        after = np.asarray(Image.open(dst / row.path), dtype=float)
        assert after.shape == before.shape  # greyscale in, greyscale out
        landmarks = np.array([[getattr(row, f"{p}_{a}") for a in "xy"] for p in ("le", "re", "nose", "ml", "mr")])
        for box in _eye_boxes(landmarks):
            assert np.abs(after[box] - before[box]).mean() < 3.0
        mouth = ((landmarks[3] + landmarks[4]) / 2).astype(int)
        lower = (slice(mouth[1] - 5, mouth[1] + 6), slice(mouth[0] - 10, mouth[0] + 11))
        assert np.abs(after[lower] - before[lower]).mean() > 15.0


def test_simulated_copies_name_their_source_and_never_pair_with_it(lfw_like, tmp_path, monkeypatch):
    from maskface.data.split import make_pairs

    dst = tmp_path / "dst"
    written = simulate_masks(lfw_like, dst, "lfw", seed=3, device="cpu", on_no_face="template", workers=1)
    assert (dst / written["derived_from"]).map(lambda p: p.resolve()).tolist() == [
        (lfw_like / p).resolve() for p in written["path"]
    ]
    # Read from another working directory, copies and originals together: every copy's
    # derived_from is its original's own manifest path.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = DataConfig(source="manifest", root=str(dst / "manifest.csv"), extra_sources=(f"lfw:{lfw_like}",), workers=1)
    manifest = build_manifest(config).manifest
    copies, originals = manifest[manifest["masked"]], manifest[~manifest["masked"]]
    assert len(copies) == len(originals) == 4
    assert set(copies["derived_from"]) == set(originals["path"])
    assert (originals["derived_from"] == "").all()
    for path, source in zip(copies["path"], copies["derived_from"]):
        assert path.rsplit("/", 1)[-1] == source.rsplit("/", 1)[-1]  # the same file name, masked
    # One person under both sources' labels: each copy has one genuine partner left, the
    # other photo of its person; its own source is never its partner.
    manifest["identity"] = manifest["identity"].str.split("/", n=1).str[1]
    pairs = make_pairs(manifest, ["masked-unmasked"], 100, seed=0, n_folds=1)
    origin = {p: (d or p) for p, d in zip(manifest["path"], manifest["derived_from"])}
    assert int(pairs["label"].sum()) == 4 and len(pairs) == 8
    assert not (pairs["path_a"].map(origin) == pairs["path_b"].map(origin)).any()
