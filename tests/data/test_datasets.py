"""Dataset sources: every file under every root is accepted or rejected exactly once, for a reason."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskface.config import ConfigError, SyntheticConfig, parse_section
from maskface.data.datasets import (
    MANIFEST_COLUMNS,
    REJECT_REASONS,
    REJECTED_COLUMNS,
    DataConfig,
    DatasetError,
    build_manifest,
    marks_masked,
    read_manifest,
    scan_files,
    validate_image,
)
from maskface.imageio import load_rgb
from maskface.tables import write_csv

NON_UTF8_NAME = os.fsdecode(b"\xe9\xa6\x96\xff.jpg")


def _pixels(seed: int, width: int = 48, height: int = 40, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, image: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def _face(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str | None = None) -> Path:
    return _save(path, Image.fromarray(_pixels(seed, *size)), fmt)


def _jpeg_bytes(seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(seed, size, size)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _config(**overrides) -> DataConfig:
    raw = {"source": "folder", "workers": 1, "min_side": 16}
    raw.update(overrides)
    return parse_section(DataConfig, raw, "data")


def _files_on_disk(root: Path) -> set[str]:
    """Every non-folder entry below root, listed with bytes paths (independent of scan_files)."""
    found = set()
    for folder, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            found.add(Path(os.fsdecode(os.path.join(folder, name))).as_posix())
    return found


def _accounted(result) -> Counter:
    return Counter(list(result.manifest["path"]) + list(result.rejected["path"]))


def _reason_of(result) -> dict[str, str]:
    return dict(zip(result.rejected["path"], result.rejected["reason"]))


# --- configuration -------------------------------------------------------------------


def test_defaults_parse_and_nested_synthetic_is_strict():
    cfg = parse_section(DataConfig, None, "data")
    assert (cfg.source, cfg.root, cfg.extra_sources, cfg.unmasked_root) == ("synthetic", "data/external", (), None)
    assert (cfg.masked_pattern, cfg.min_side, cfg.max_pixels, cfg.workers) == ("mask", 32, Image.MAX_IMAGE_PIXELS, 2)
    assert cfg.min_images_per_identity == 2 and cfg.synthetic == SyntheticConfig()
    nested = parse_section(DataConfig, {"synthetic": {"identities": 3}}, "data")
    assert nested.synthetic.identities == 3
    with pytest.raises(ConfigError, match=r"data\.synthetic\.identities"):
        parse_section(DataConfig, {"synthetic": {"identities": 1}}, "data")
    with pytest.raises(ConfigError, match="valid keys of data: source, root"):
        parse_section(DataConfig, {"sourse": "lfw"}, "data")


@pytest.mark.parametrize(
    "raw, key, valid",
    [
        ({"source": "imagenet"}, "data.source", "synthetic, rmfrd, smfrd, lfw, folder, manifest"),
        ({"root": " "}, "data.root", "non-empty"),
        ({"extra_sources": ["lfw"]}, r"data.extra_sources\[0\]", "kind one of rmfrd, smfrd, lfw, folder, manifest"),
        ({"extra_sources": ["lfw:a", "synthetic:b"]}, r"data.extra_sources\[1\]", "<kind>:<root>"),
        ({"extra_sources": ["folder:"]}, r"data.extra_sources\[0\]", "<kind>:<root>"),
        ({"source": "lfw", "unmasked_root": "x"}, "data.unmasked_root", "null unless data.source is smfrd"),
        ({"masked_pattern": ""}, "data.masked_pattern", "non-empty"),
        ({"min_side": 0}, "data.min_side", ">= 1"),
        ({"max_pixels": 0}, "data.max_pixels", ">= 1"),
        ({"min_side": 100, "max_pixels": 9999}, "data.max_pixels", "min_side\\*\\*2 = 10000"),
        ({"workers": 0}, "data.workers", ">= 1"),
        ({"min_images_per_identity": 0}, "data.min_images_per_identity", ">= 1"),
        ({"workers": "2"}, "data.workers", "an integer"),
    ],
)
def test_invalid_values_name_the_key_and_valid_choices(raw, key, valid):
    with pytest.raises(ConfigError, match=key) as error:
        parse_section(DataConfig, raw, "data")
    assert re.search(valid, str(error.value))


# --- per-file validation -------------------------------------------------------------


def test_validate_image_accepts_and_hashes_the_content(tmp_path):
    path = _face(tmp_path / "a.png", seed=1)
    info, reason, detail = validate_image(path, min_side=16)
    assert reason is None and detail == ""
    assert (info.width, info.height, info.mode, info.format) == (48, 40, "RGB", "PNG")
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_validate_image_reasons(tmp_path):
    jpeg = _jpeg_bytes(3)
    cases = {
        "empty.jpg": b"",
        "text.jpg": b"this is not a picture\n",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "header_only.jpg": jpeg[:3],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    _face(tmp_path / "tiny.png", seed=2, size=(10, 40))
    _face(tmp_path / "big.png", seed=3, size=(60, 60))
    _face(tmp_path / "huge.png", seed=4, size=(200, 200))  # > 2 * max_pixels: Pillow raises outright
    limit = Image.MAX_IMAGE_PIXELS

    def check(name):
        return validate_image(tmp_path / name, min_side=16, max_pixels=50 * 50)

    assert check("empty.jpg")[1:] == ("zero_bytes", "the file is empty")
    assert check("text.jpg")[1] == "not_an_image"
    assert check("truncated.jpg")[1] == "truncated_or_corrupt"
    reason, detail = check("header_only.jpg")[1:]
    assert reason == "truncated_or_corrupt" and "JPEG signature" in detail
    reason, detail = check("tiny.png")[1:]
    assert reason == "too_small" and "10x40" in detail
    assert check("big.png")[1] == "decompression_bomb"
    assert check("huge.png")[1] == "decompression_bomb"
    assert check("missing.png")[1] == "unreadable"
    # The pixel limit is scoped to the call; Pillow's global is left as it was.
    assert Image.MAX_IMAGE_PIXELS == limit


def test_truncated_images_are_refused_even_when_pillow_is_told_to_pad_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    jpeg = _jpeg_bytes(5)
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    assert validate_image(tmp_path / "cut.jpg", min_side=16)[1] == "truncated_or_corrupt"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    # Opening a FIFO with no writer would block forever; returning at all proves it was not opened.
    assert validate_image(tmp_path / "pipe.jpg")[1] == "not_a_regular_file"
    entries = list(scan_files(tmp_path))
    assert [(e.relpath, e.problem[0]) for e in entries] == [("pipe.jpg", "not_a_regular_file")]


def test_scan_files_follows_folder_links_once_and_reports_broken_links(tmp_path):
    _face(tmp_path / "real" / "a.png", seed=1)
    (tmp_path / "hidden_dir").mkdir()
    (tmp_path / "hidden_dir" / ".secret").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "real" / "loop")  # a cycle back to the root
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    entries = {e.relpath: e.problem for e in scan_files(tmp_path)}
    assert entries == {
        "dangling.png": ("unreadable", "broken symbolic link"),
        "hidden_dir/.secret": None,
        "real/a.png": None,
    }


@pytest.mark.parametrize(
    "name, masked",
    [
        ("0_0_mask.jpg", True),
        ("Masked", True),
        ("with_mask", True),
        ("faceMASK01.png", True),
        ("unmasked", False),
        ("img_unmasked_3.jpg", False),
        ("no_mask", False),
        ("NoMask", False),
        ("without-mask", False),
        ("non masked", False),
        ("plain_face.jpg", False),
        ("fun_mask.jpg", True),
    ],
)
def test_marks_masked(name, masked):
    assert marks_masked(name, "mask") is masked


# --- the bad-files fixture: every file accounted once, each reason right ---------------


@pytest.fixture()
def messy_tree(tmp_path) -> tuple[Path, dict[str, str], dict[str, bool]]:
    """A folder-layout dataset with every kind of bad file.

    Returns (root, expected reason per rejected path, expected masked flag per accepted path).
    """
    root = tmp_path / "messy"
    reasons: dict[str, str] = {}
    accepted: dict[str, bool] = {}

    def p(rel: str) -> str:
        return (root / rel).as_posix()

    rgb = _pixels(10)
    _save(root / "alice" / "a_first.png", Image.fromarray(rgb))
    accepted[p("alice/a_first.png")] = False
    shutil.copyfile(root / "alice" / "a_first.png", root / "alice" / "b_copy.png")
    reasons[p("alice/b_copy.png")] = "duplicate"
    _save(root / "alice" / "cmyk.tiff", Image.fromarray(_pixels(11, channels=4), mode="RGBA").convert("CMYK"))
    _save(root / "alice" / "palette.png", Image.fromarray(_pixels(12)).convert("P"))
    _save(root / "alice" / "grey_alpha.png", Image.fromarray(_pixels(13, channels=2), mode="LA"))
    _save(root / "alice" / "rgba.png", Image.fromarray(_pixels(14, channels=4)))
    _save(root / "alice" / "deep.png", Image.fromarray(_pixels(15, channels=1).astype(np.uint16) * 257))
    _save(root / "alice" / "grey.pgm", Image.fromarray(_pixels(16, channels=1)))
    _save(root / "alice" / "masked" / "m1.png", Image.fromarray(_pixels(17)))
    _save(root / "alice" / "alice_Mask_2.jpg", Image.fromarray(_pixels(18)))
    _save(root / "alice" / ".hidden_face.png", Image.fromarray(_pixels(19)))
    for rel in ("cmyk.tiff", "palette.png", "grey_alpha.png", "rgba.png", "deep.png", "grey.pgm", ".hidden_face.png"):
        accepted[p(f"alice/{rel}")] = False
    accepted[p("alice/masked/m1.png")] = True
    accepted[p("alice/alice_Mask_2.jpg")] = True

    shared = _face(root / "alice" / "shared.png", seed=20)
    (root / "bob").mkdir()
    shutil.copyfile(shared, root / "bob" / "same_photo.png")
    accepted[p("alice/shared.png")] = False
    accepted[p("bob/same_photo.png")] = False
    _face(root / "bob" / "own.png", seed=21)
    accepted[p("bob/own.png")] = False
    (root / "bob" / NON_UTF8_NAME).write_bytes(_jpeg_bytes(22))
    accepted[p(f"bob/{NON_UTF8_NAME}")] = False
    (root / "bob" / "zero.jpg").write_bytes(b"")
    reasons[p("bob/zero.jpg")] = "zero_bytes"
    (root / "bob" / "notes.jpg").write_text("a text file wearing a .jpg name\n")
    reasons[p("bob/notes.jpg")] = "not_an_image"
    jpeg = _jpeg_bytes(23)
    (root / "bob" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    reasons[p("bob/truncated.jpg")] = "truncated_or_corrupt"
    _face(root / "bob" / "tiny.png", seed=24, size=(12, 12))
    reasons[p("bob/tiny.png")] = "too_small"
    _face(root / "bob" / "bomb.png", seed=25, size=(80, 80))
    reasons[p("bob/bomb.png")] = "decompression_bomb"
    (root / "bob" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    reasons[p("bob/.DS_Store")] = "not_an_image"

    _face(root / "carol" / "only.png", seed=26)
    accepted[p("carol/only.png")] = False
    (root / "README.txt").write_text("about this dataset\n")
    reasons[p("README.txt")] = "not_an_image"
    _face(root / "stray.png", seed=27)
    reasons[p("stray.png")] = "outside_layout"
    return root, reasons, accepted


def test_every_file_is_accounted_exactly_once_with_the_right_reason(messy_tree):
    root, reasons, accepted = messy_tree
    result = build_manifest(_config(root=str(root), max_pixels=60 * 60))

    on_disk = _files_on_disk(root)
    counts = _accounted(result)
    assert set(counts) == on_disk and set(counts.values()) == {1}
    assert set(reasons) | set(accepted) == on_disk, "the fixture's own bookkeeping"
    assert _reason_of(result) == reasons
    assert dict(zip(result.manifest["path"], result.manifest["masked"])) == accepted

    report = result.report
    assert report["files_seen"] == len(on_disk) == report["accepted"] + report["rejected"]
    assert report["rejected_by_reason"] == {r: sum(v == r for v in reasons.values()) for r in REJECT_REASONS}
    assert tuple(result.manifest.columns) == MANIFEST_COLUMNS
    assert tuple(result.rejected.columns) == REJECTED_COLUMNS


def test_duplicates_label_noise_modes_and_thin_identities(messy_tree):
    root, _, _ = messy_tree
    result = build_manifest(_config(root=str(root), max_pixels=60 * 60))
    manifest = result.manifest.set_index("path")
    rejected = result.rejected.set_index("path")

    kept = (root / "alice" / "a_first.png").as_posix()
    assert rejected.loc[(root / "alice" / "b_copy.png").as_posix(), "detail"] == f"same content as {kept}"

    noisy = {(root / "alice" / "shared.png").as_posix(), (root / "bob" / "same_photo.png").as_posix()}
    assert set(manifest.index[manifest["label_noise"]]) == noisy
    assert result.report["label_noise"] == {
        "images": 2,
        "groups": 1,
        "list": [
            {
                "sha256": hashlib.sha256((root / "alice" / "shared.png").read_bytes()).hexdigest(),
                "identities": ["folder/alice", "folder/bob"],
                "paths": sorted(noisy),
            }
        ],
    }

    modes = {Path(p).name: m for p, m in manifest["mode"].items()}
    expected_modes = {
        "cmyk.tiff": "CMYK",
        "palette.png": "P",
        "grey_alpha.png": "LA",
        "rgba.png": "RGBA",
        "deep.png": "I;16",
        "grey.pgm": "L",
    }
    assert {name: modes[name] for name in expected_modes} == expected_modes
    for path in manifest.index:
        assert manifest.loc[path, "sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        with Image.open(path) as image:
            assert image.size == (manifest.loc[path, "width"], manifest.loc[path, "height"])
        assert load_rgb(path).mode == "RGB"

    assert set(manifest["identity"]) == {"folder/alice", "folder/bob", "folder/carol"}
    assert result.report["identities_below_min_images"] == ["folder/carol"]
    assert result.report["identities_unmasked_only"] == ["folder/bob", "folder/carol"]
    assert result.report["identities_masked_only"] == []


def test_non_utf8_file_name_round_trips_through_the_csv(messy_tree, tmp_path):
    root, _, _ = messy_tree
    result = build_manifest(_config(root=str(root), max_pixels=60 * 60))
    csv_path = tmp_path / "out" / "manifest.csv"
    write_csv(result.manifest, csv_path)
    assert b"bob/\xe9\xa6\x96\xff.jpg" in csv_path.read_bytes()

    back = read_manifest(csv_path)
    pd.testing.assert_frame_equal(back, result.manifest, check_dtype=False)
    assert back["masked"].dtype == bool and back["width"].dtype == np.int64
    (odd,) = [p for p in back["path"] if p.endswith(NON_UTF8_NAME)]
    assert os.fsencode(odd).endswith(b"\xe9\xa6\x96\xff.jpg")
    assert load_rgb(odd).size == (40, 40)


def test_two_runs_write_byte_identical_csvs_serial_or_parallel(messy_tree, tmp_path):
    root, _, _ = messy_tree
    outputs = []
    for run, workers in enumerate((1, 2, 2)):
        result = build_manifest(_config(root=str(root), max_pixels=60 * 60, workers=workers))
        write_csv(result.manifest, tmp_path / f"m{run}.csv")
        write_csv(result.rejected, tmp_path / f"r{run}.csv")
        outputs.append(((tmp_path / f"m{run}.csv").read_bytes(), (tmp_path / f"r{run}.csv").read_bytes()))
        assert list(result.manifest["path"]) == sorted(result.manifest["path"])
    assert outputs[0] == outputs[1] == outputs[2]


def test_paths_are_relative_to_the_working_directory_when_under_it(tmp_path, monkeypatch):
    _face(tmp_path / "data" / "ann" / "1.png", seed=1)
    _face(tmp_path / "data" / "ann" / "2.png", seed=2)
    monkeypatch.chdir(tmp_path)
    relative = build_manifest(_config(root="data"))
    absolute = build_manifest(_config(root=str(tmp_path / "data")))
    assert list(relative.manifest["path"]) == ["data/ann/1.png", "data/ann/2.png"]
    assert list(absolute.manifest["path"]) == list(relative.manifest["path"])
    monkeypatch.chdir(tmp_path / "data" / "ann")
    outside = build_manifest(_config(root="../../data"))
    assert list(outside.manifest["path"]) == ["1.png", "2.png"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    given = build_manifest(_config(root="../data"))
    assert list(given.manifest["path"]) == ["../data/ann/1.png", "../data/ann/2.png"]
    assert all(Path(p).is_file() for p in given.manifest["path"])


def test_nothing_usable_raises_naming_root_and_rejections(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.jpg").write_bytes(b"")
    (tmp_path / "x" / "b.jpg").write_text("nope")
    expected = r"no usable image in data\.root = .*x'.*2 files seen.*not_an_image': 1, 'zero_bytes': 1"
    with pytest.raises(DatasetError, match=expected):
        build_manifest(_config(root=str(tmp_path / "x")))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.root = .*nope' does not exist"):
        build_manifest(_config(root=str(tmp_path / "nope")))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        build_manifest(_config(root=str(tmp_path / "file.txt")))


# --- source layouts -----------------------------------------------------------------


def _rmfrd_tree(base: Path) -> None:
    _face(base / "AFDB_face_dataset" / "anna" / "0_0_anna_0001.jpg", seed=1, fmt="JPEG")
    _face(base / "AFDB_face_dataset" / "anna" / "0_0_anna_0002.jpg", seed=2, fmt="JPEG")
    _face(base / "AFDB_face_dataset" / "ben" / "0_0_ben_0001.jpg", seed=3, fmt="JPEG")
    _face(base / "AFDB_masked_face_dataset" / "anna" / "0_0_0.jpeg", seed=4, fmt="JPEG")
    _face(base / "AFDB_masked_face_dataset" / "anna" / "1_0_1.png", seed=5)
    _face(base / "AFDB_masked_face_dataset" / "cleo" / "0_0_0.jpg", seed=6, fmt="JPEG")
    _face(base / "AFDB_face_dataset" / "loose.jpg", seed=7, fmt="JPEG")


@pytest.mark.parametrize("wrapped", [False, True])
def test_rmfrd_layout_and_one_sided_identities(tmp_path, wrapped):
    base = tmp_path / "self-built-masked-face-recognition-dataset" if wrapped else tmp_path
    _rmfrd_tree(base)
    (tmp_path / "LICENSE").write_text("research use\n")
    result = build_manifest(_config(source="rmfrd", root=str(tmp_path)))
    rows = {
        Path(p).relative_to(base).as_posix(): (i, m)
        for p, i, m in result.manifest[["path", "identity", "masked"]].itertuples(index=False)
    }
    assert rows == {
        "AFDB_face_dataset/anna/0_0_anna_0001.jpg": ("rmfrd/anna", False),
        "AFDB_face_dataset/anna/0_0_anna_0002.jpg": ("rmfrd/anna", False),
        "AFDB_face_dataset/ben/0_0_ben_0001.jpg": ("rmfrd/ben", False),
        "AFDB_masked_face_dataset/anna/0_0_0.jpeg": ("rmfrd/anna", True),
        "AFDB_masked_face_dataset/anna/1_0_1.png": ("rmfrd/anna", True),
        "AFDB_masked_face_dataset/cleo/0_0_0.jpg": ("rmfrd/cleo", True),
    }
    assert _reason_of(result) == {
        (base / "AFDB_face_dataset" / "loose.jpg").as_posix(): "outside_layout",
        (tmp_path / "LICENSE").as_posix(): "not_an_image",
    }
    report = result.report
    assert report["identities_masked_only"] == ["rmfrd/cleo"]
    assert report["identities_unmasked_only"] == ["rmfrd/ben"]
    assert report["by_source"]["rmfrd"]["images"] == {"total": 6, "masked": 3, "unmasked": 3}
    assert report["by_source"]["rmfrd"]["identities"] == {"total": 3, "masked": 2, "unmasked": 2}


def test_rmfrd_without_its_folders_is_an_error(tmp_path):
    _face(tmp_path / "faces" / "x.png", seed=1)
    with pytest.raises(DatasetError, match="neither AFDB_face_dataset/ nor AFDB_masked_face_dataset/"):
        build_manifest(_config(source="rmfrd", root=str(tmp_path)))


def test_smfrd_pairs_masked_and_unmasked_roots(tmp_path):
    for k, name in enumerate(["Ann_Lee", "Bo_Chen"]):
        _face(tmp_path / "masked" / name / f"{name}_0001.jpg", seed=k, fmt="JPEG")
    for k, name in enumerate(["Ann_Lee", "Dee_Ray"]):
        _face(tmp_path / "plain" / name / f"{name}_0001.jpg", seed=10 + k, fmt="JPEG")
    cfg = _config(source="smfrd", root=str(tmp_path / "masked"), unmasked_root=str(tmp_path / "plain"))
    result = build_manifest(cfg)
    got = sorted(zip(result.manifest["identity"], result.manifest["masked"]))
    assert got == [("smfrd/Ann_Lee", False), ("smfrd/Ann_Lee", True), ("smfrd/Bo_Chen", True), ("smfrd/Dee_Ray", False)]
    assert result.report["identities_masked_only"] == ["smfrd/Bo_Chen"]
    assert result.report["identities_unmasked_only"] == ["smfrd/Dee_Ray"]
    alone = build_manifest(_config(source="smfrd", root=str(tmp_path / "masked")))
    assert alone.manifest["masked"].all() and len(alone.manifest) == 2


def test_lfw_layout_checks_file_names_against_folders(tmp_path):
    _face(tmp_path / "Ann_Lee" / "Ann_Lee_0001.jpg", seed=1, fmt="JPEG")
    _face(tmp_path / "Ann_Lee" / "Ann_Lee_0002.jpg", seed=2, fmt="JPEG")
    _face(tmp_path / "Ann_Lee" / "Bo_Chen_0001.jpg", seed=3, fmt="JPEG")
    _face(tmp_path / "Ann_Lee" / "extra" / "Ann_Lee_0003.jpg", seed=4, fmt="JPEG")
    (tmp_path / "lfw-names.txt").write_text("Ann_Lee\t2\n")
    result = build_manifest(_config(source="lfw", root=str(tmp_path)))
    assert [Path(p).name for p in result.manifest["path"]] == ["Ann_Lee_0001.jpg", "Ann_Lee_0002.jpg"]
    assert set(result.manifest["identity"]) == {"lfw/Ann_Lee"} and not result.manifest["masked"].any()
    assert _reason_of(result) == {
        (tmp_path / "Ann_Lee" / "Bo_Chen_0001.jpg").as_posix(): "outside_layout",
        (tmp_path / "Ann_Lee" / "extra" / "Ann_Lee_0003.jpg").as_posix(): "outside_layout",
        (tmp_path / "lfw-names.txt").as_posix(): "not_an_image",
    }


def test_folder_masked_flag_from_names_and_sub_folders(tmp_path):
    files = {
        "ann/plain.png": False,
        "ann/ann_MASK.png": True,
        "ann/unmasked_1.png": False,
        "ann/masked/a.png": True,
        "ann/Masked_photos/b.png": True,
        "ann/unmasked/c.png": False,
        "bo/with_mask/d.png": True,
        "bo/without_mask/e.png": False,
        "bo/deep/er/mask_f.png": True,
    }
    for k, rel in enumerate(files):
        _face(tmp_path / rel, seed=k)
    result = build_manifest(_config(root=str(tmp_path)))
    got = {
        Path(p).relative_to(tmp_path).as_posix(): m for p, m in zip(result.manifest["path"], result.manifest["masked"])
    }
    assert got == files
    custom = build_manifest(_config(root=str(tmp_path), masked_pattern="photos"))
    assert {Path(p).name for p in custom.manifest.loc[custom.manifest["masked"], "path"]} == {"b.png"}


def test_manifest_source_resolves_paths_and_rejects_bad_rows(tmp_path):
    images = tmp_path / "imgs"
    a = _face(images / "a.png", seed=1)
    b = _face(images / "b.png", seed=2)
    c = _face(tmp_path / "elsewhere" / "c.png", seed=3)
    csv = images / "list.csv"
    pd.DataFrame(
        {
            "path": ["a.png", "b.png", str(c), "gone.png", "a.png", "b.png", "", "a.png"],
            "identity": ["p1", "p2", "p2", "p1", "p1", "", "p3", "p9"],
            "masked": ["true", "0", "yes", "1", "false", "1", "0", "maybe"],
            "extra": range(8),
        }
    ).to_csv(csv, index=False)
    result = build_manifest(_config(source="manifest", root=str(csv)))
    got = sorted(zip(result.manifest["path"], result.manifest["identity"], result.manifest["masked"]))
    assert got == sorted(
        [(a.as_posix(), "manifest/p1", True), (b.as_posix(), "manifest/p2", False), (c.as_posix(), "manifest/p2", True)]
    )
    reasons = sorted(zip(result.rejected["path"], result.rejected["reason"]))
    assert reasons == sorted(
        [
            ((images / "gone.png").as_posix(), "missing"),
            (a.as_posix(), "listed_twice"),
            (b.as_posix(), "bad_manifest_row"),
            (f"{csv.as_posix()} row 7", "bad_manifest_row"),
            (a.as_posix(), "bad_manifest_row"),
        ]
    )
    assert result.report["files_seen"] == 8
    assert "maybe" in result.rejected.loc[result.rejected["detail"].str.contains("row 8"), "detail"].item()

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"file": ["a.png"], "identity": ["p"]}).to_csv(bad, index=False)
    with pytest.raises(DatasetError, match="lacks column.*path, masked"):
        build_manifest(_config(source="manifest", root=str(bad)))


def _fake_generator(calls: list):
    """Stands in for maskface.data.synthetic.generate_dataset: two identities plus a stale listing."""

    def generate_dataset(out_dir: Path, config: SyntheticConfig) -> pd.DataFrame:
        calls.append((Path(out_dir), config))
        rows = []
        for i in range(2):
            for k in range(3):
                rel = f"id{i:02d}/id{i:02d}_{k}.png"
                _face(Path(out_dir) / rel, seed=10 * i + k, size=(64, 64))
                rows.append({"path": rel, "identity": f"id{i:02d}", "masked": k == 0, "size": 64})
        rows.append({"path": "id01/id01_9.png", "identity": "id01", "masked": False, "size": 64})
        table = pd.DataFrame(rows)
        table.to_csv(Path(out_dir) / "ground_truth.csv", index=False)
        return table

    return generate_dataset


def test_synthetic_source_uses_ground_truth_flags(tmp_path, monkeypatch):
    calls: list = []
    fake = types.ModuleType("maskface.data.synthetic")
    fake.generate_dataset = _fake_generator(calls)
    monkeypatch.setitem(sys.modules, "maskface.data.synthetic", fake)
    out = tmp_path / "synthetic"
    out.mkdir()
    _face(out / "leftover.png", seed=99)
    cfg = parse_section(DataConfig, {"workers": 2, "synthetic": {"identities": 2, "seed": 5}}, "data")
    result = build_manifest(cfg, synthetic_dir=out)

    assert calls == [(out, cfg.synthetic)]
    assert len(result.manifest) == 6 and set(result.manifest["source"]) == {"synthetic"}
    masked = {Path(p).name for p in result.manifest.loc[result.manifest["masked"], "path"]}
    assert masked == {"id00_0.png", "id01_0.png"}
    assert set(result.manifest["identity"]) == {"synthetic/id00", "synthetic/id01"}
    assert _reason_of(result) == {
        (out / "ground_truth.csv").as_posix(): "metadata",
        (out / "leftover.png").as_posix(): "outside_layout",
        (out / "id01" / "id01_9.png").as_posix(): "missing",
    }
    assert result.report["files_seen"] == 9


def test_synthetic_source_with_the_real_generator(tmp_path):
    pytest.importorskip("maskface.data.synthetic")
    synthetic = {"identities": 2, "images_per_identity": 4, "min_size": 64, "max_size": 64}
    cfg = parse_section(DataConfig, {"workers": 1, "synthetic": synthetic}, "data")
    result = build_manifest(cfg, synthetic_dir=tmp_path / "synthetic")
    truth = pd.read_csv(tmp_path / "synthetic" / "ground_truth.csv")
    expected = {
        ((tmp_path / "synthetic" / p).as_posix(), f"synthetic/{i}", bool(m))
        for p, i, m in truth[["path", "identity", "masked"]].itertuples(index=False)
    }
    got = set(result.manifest[["path", "identity", "masked"]].itertuples(index=False, name=None))
    assert got == expected and len(expected) == 8
    assert list(result.rejected["reason"]) == ["metadata"]


def test_extra_sources_are_combined_and_kept_apart(tmp_path):
    _face(tmp_path / "one" / "ann" / "1.png", seed=1)
    _face(tmp_path / "two" / "ann" / "1.png", seed=2)
    _face(tmp_path / "faces" / "Ann" / "Ann_0001.jpg", seed=3, fmt="JPEG")
    cfg = _config(root=str(tmp_path / "one"), extra_sources=[f"folder:{tmp_path / 'two'}", f"lfw:{tmp_path / 'faces'}"])
    result = build_manifest(cfg)
    assert sorted(zip(result.manifest["source"], result.manifest["identity"])) == [
        ("folder", "folder/ann"),
        ("folder-2", "folder-2/ann"),
        ("lfw", "lfw/Ann"),
    ]
    assert set(result.report["by_source"]) == {"folder", "folder-2", "lfw"}
    assert all(v["files_seen"] == 1 for v in result.report["by_source"].values())

    nested = _config(root=str(tmp_path), extra_sources=[f"folder:{tmp_path / 'two'}"])
    with pytest.raises(DatasetError, match="overlap"):
        build_manifest(nested)


# --- the real datasets --------------------------------------------------------------


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.realdata
def test_real_rmfrd_dev(datasets_root):
    root = datasets_root / "rmfrd-dev"
    result = build_manifest(_config(source="rmfrd", root=str(root), min_side=32, workers=2))
    report = result.report
    # The dataset README: 103 identities, 883 images (507 unmasked, 376 masked), all decodable.
    assert report["files_seen"] == len(_image_files(root)) == 883
    assert report["rejected"] == 0
    assert report["images"] == {"total": 883, "masked": 376, "unmasked": 507}
    assert report["identities"] == 103
    assert report["identity_sides"] == {"total": 103, "masked": 103, "unmasked": 103}
    assert len(_image_files(root / "AFDB_masked_face_dataset")) == report["images"]["masked"]
    assert set(result.manifest["mode"]) == {"RGB"}
    # Not in the README: a few masked photos are filed under two celebrities. The oracle is a
    # plain hash of every file, grouped by its identity folder.
    folders: dict[str, set[str]] = {}
    for path in _image_files(root):
        folders.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), set()).add(path.parent.name)
    shared = {sha for sha, names in folders.items() if len(names) > 1}
    assert shared, "rmfrd-dev is known to hold cross-identity copies"
    assert {g["sha256"] for g in report["label_noise"]["list"]} == shared
    assert report["label_noise"]["images"] == int(result.manifest["label_noise"].sum()) == 2 * len(shared)


@pytest.mark.realdata
def test_real_lfw_gray_20(datasets_root):
    root = datasets_root / "lfw-gray-20"
    result = build_manifest(_config(source="lfw", root=str(root), min_side=32, workers=2))
    report = result.report
    assert report["files_seen"] == report["accepted"] == 3023
    assert report["identities"] == 62
    assert report["images"] == {"total": 3023, "masked": 0, "unmasked": 3023}
    assert set(result.manifest["mode"]) == {"L"}
    assert len(report["identities_unmasked_only"]) == 62
    first = result.manifest["path"].iloc[0]
    rgb = np.asarray(load_rgb(first))
    assert rgb.shape == (250, 250, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.realdata
def test_real_orl_as_folder(datasets_root):
    root = datasets_root / "orl"
    result = build_manifest(_config(source="folder", root=str(root), min_side=32, workers=2))
    report = result.report
    assert report["accepted"] == 400 and report["identities"] == 40
    assert report["images"]["masked"] == 0
    assert set(result.manifest.groupby("identity").size()) == {10}
    assert list(result.rejected["reason"]) == ["not_an_image"]
    assert Path(result.rejected["path"].item()).name == "README"
    assert (result.manifest["width"] == 92).all() and (result.manifest["height"] == 112).all()


# --- simulated copies know their source ---------------------------------------------


def _number_of(path: str) -> tuple[str, str]:
    """(person, NNNN) read from a MaskTheFace / LFW file name alone: the oracle for 'same photo'."""
    match = re.fullmatch(r"(?:crop_)?(.+?)_(\d{4})(?:_[A-Za-z].*)?", Path(path).stem)
    assert match, path
    return match.group(1), match.group(2)


def test_masked_copies_name_their_source_photo(tmp_path):
    from maskface.data.split import make_pairs

    plain, masked = tmp_path / "AFDB_face_dataset", tmp_path / "AFDB_masked_face_dataset"
    for k, person in enumerate(["Ann_Lee", "Bo_Chen", "Cy_Dow"]):
        for n in (1, 2, 3):
            _face(plain / person / f"{person}_{n:04d}.jpg", seed=10 * k + n, fmt="JPEG")
        _face(masked / person / f"{person}_0001_surgical.jpg", seed=100 + k, fmt="JPEG")
        _face(masked / person / f"crop_{person}_0002_surgical_blue.jpg", seed=200 + k, fmt="JPEG")
        _face(masked / person / f"crop_{person}_0002_KN95.png", seed=300 + k)
        _face(masked / person / f"{person}_0009_surgical.jpg", seed=400 + k, fmt="JPEG")  # no such original
        _face(masked / person / "0_0_3.jpg", seed=500 + k, fmt="JPEG")  # a real masked photo (RMFRD name)
    _face(plain / "Bo_Chen" / "0_0.jpg", seed=600)  # must not adopt "0_0_3.jpg" of anyone
    manifest = build_manifest(_config(source="rmfrd", root=str(tmp_path))).manifest
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    derived = {Path(p).relative_to(tmp_path).as_posix(): d for p, d in zip(manifest["path"], manifest["derived_from"])}
    for person in ["Ann_Lee", "Bo_Chen", "Cy_Dow"]:
        first, second = (Path(tmp_path, "AFDB_face_dataset", person, f"{person}_{n:04d}.jpg").as_posix() for n in (1, 2))
        assert derived[f"AFDB_masked_face_dataset/{person}/{person}_0001_surgical.jpg"] == first
        assert derived[f"AFDB_masked_face_dataset/{person}/crop_{person}_0002_surgical_blue.jpg"] == second
        assert derived[f"AFDB_masked_face_dataset/{person}/crop_{person}_0002_KN95.png"] == second
        assert derived[f"AFDB_masked_face_dataset/{person}/{person}_0009_surgical.jpg"] == ""
        assert derived[f"AFDB_masked_face_dataset/{person}/0_0_3.jpg"] == ""
    assert all(d == "" for p, d in derived.items() if p.startswith("AFDB_face_dataset/"))
    # Copies and sources are in the pool, and pairs still form, but never of one photo.
    pairs = make_pairs(manifest, ["masked-unmasked", "masked-masked"], 100, seed=0, n_folds=1)
    origin = {p: (d or p) for p, d in zip(manifest["path"], manifest["derived_from"])}
    assert int(pairs["label"].sum()) > 0
    assert not (pairs["path_a"].map(origin) == pairs["path_b"].map(origin)).any()


def test_smfrd_copy_with_the_original_name_is_linked(tmp_path):
    _face(tmp_path / "masked" / "Ann_Lee" / "Ann_Lee_0001.jpg", seed=1, fmt="JPEG")
    _face(tmp_path / "plain" / "Ann_Lee" / "Ann_Lee_0001.jpg", seed=2, fmt="JPEG")
    _face(tmp_path / "plain" / "Ann_Lee" / "Ann_Lee_0002.jpg", seed=3, fmt="JPEG")
    cfg = _config(source="smfrd", root=str(tmp_path / "masked"), unmasked_root=str(tmp_path / "plain"))
    manifest = build_manifest(cfg).manifest.set_index("path")
    copy = (tmp_path / "masked" / "Ann_Lee" / "Ann_Lee_0001.jpg").as_posix()
    assert manifest.at[copy, "derived_from"] == (tmp_path / "plain" / "Ann_Lee" / "Ann_Lee_0001.jpg").as_posix()


@pytest.mark.realdata
def test_real_lfw_masktheface_pairs_never_join_a_copy_with_its_source(datasets_root):
    from maskface.data.split import make_pairs, split_dataset

    root = datasets_root / "lfw-masktheface"
    manifest = build_manifest(_config(source="rmfrd", root=str(root), min_side=32, workers=2)).manifest
    masked = manifest[manifest["masked"]]
    assert len(masked) > 2000 and (masked["derived_from"] != "").all()
    # Each copy's source, read independently from the two file names: same person, same NNNN.
    for path, source in zip(masked["path"], masked["derived_from"]):
        assert _number_of(path) == _number_of(source) and "/AFDB_face_dataset/" in source
    types = ["masked-unmasked", "masked-masked"]

    def same_photo(pairs: pd.DataFrame) -> int:
        return sum(_number_of(a) == _number_of(b) for a, b in zip(pairs["path_a"], pairs["path_b"]))

    everyone = make_pairs(manifest, types, 20, seed=0)
    _, split = split_dataset(manifest, (0.7, 0.1, 0.2), 0, "identity", types, 20)
    for pairs in (everyone, split["val"], split["test"]):
        assert int(pairs["label"].sum()) > 0 and same_photo(pairs) == 0
    # The guard is what keeps them out: without derived_from such pairs are drawn.
    assert same_photo(make_pairs(manifest.drop(columns="derived_from"), types, 20, seed=0)) > 100
