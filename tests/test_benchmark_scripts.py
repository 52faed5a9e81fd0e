"""Benchmark scripts that only a GPU session can measure must still run: a CPU smoke run.

benchmarks/gpu_throughput.py (figure 6) is run for real only when a GPU is lent; running
the same code on the CPU at toy sizes here keeps it from rotting in between. No timing
is asserted, only that every figure is produced and positive.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_throughput_script_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--device", "cpu", "--backbones", "alexnet",
         "--batch-size", "2", "--embed-images", "4", "--steps", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("alexnet"))
    rates = [float(value) for value in re.findall(r"([\d.]+) img/s", line)]
    assert len(rates) == 4 and all(rate > 0 for rate in rates), line
    assert "device:" in result.stdout and "mixed precision here" in result.stdout


def test_scale_script_runs_every_pipeline_stage_and_computes_growth(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # stages/ has a `_common` too: the benchmarks' one must be the one `scale` imports.
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    import scale

    monkeypatch.delitem(sys.modules, "scale")
    monkeypatch.delitem(sys.modules, "_common")

    # The commands are dvc.yaml's own, in pipeline order.
    assert [name for name, _ in scale.stage_commands()] == ["scan", "split", "crop", "finetune", "embed", "classify", "evaluate"]
    rows = scale.measure(tmp_path, 200, keep=True)
    assert [row["stage"] for row in rows] == ["scan", "split", "crop", "finetune", "embed", "classify", "evaluate"]
    assert all(row["seconds"] > 0 and row["peak_rss_mib"] > 0 for row in rows)
    assert (tmp_path / "faces-200" / "manifest.csv").is_file()  # rendered once, kept for reuse

    # --stages split classify on the kept project: those two run again, nothing else does.
    project = tmp_path / "project-200"
    untouched = {path: path.stat().st_mtime_ns for path in (project / "data" / "crops" / "alexnet").iterdir()}
    untouched[project / "metrics" / "evaluate.json"] = (project / "metrics" / "evaluate.json").stat().st_mtime_ns
    manifest_written = (project / "data" / "manifest.csv").stat().st_mtime_ns
    rows = scale.measure(tmp_path, 200, ["split", "classify"], keep=True)
    assert [row["stage"] for row in rows] == ["split", "classify"]
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    assert (project / "data" / "manifest.csv").stat().st_mtime_ns > manifest_written
    # Without --keep the project is new, and removed after.
    assert [row["stage"] for row in scale.measure(tmp_path, 200, ["scan"])] == ["scan"]
    assert not project.exists()

    # Growth against hand-computed values: 10x the images in 20x the time is exponent log 20 / log 10.
    import math

    import pandas as pd

    table = pd.DataFrame([
        {"images": 100, "stage": "embed", "seconds": 2.0, "peak_rss_mib": 100.0},
        {"images": 1000, "stage": "embed", "seconds": 40.0, "peak_rss_mib": 150.0},
    ])
    growth = scale.growth(table)
    assert growth.loc[0, "time_exponent"] == pytest.approx(math.log(20) / math.log(10))
    assert growth.loc[0, "time_per_image_ratio"] == pytest.approx(2.0)
    assert growth.loc[0, "peak_rss_ratio"] == pytest.approx(1.5)
    full = scale.extrapolate(table, growth)
    assert full.loc[0, "RMFRD (extrapolated, s)"] == pytest.approx(40.0 * (92_671 / 1000) ** (math.log(20) / math.log(10)))


def test_recipe_variants_scores_against_brute_force(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    import numpy as np
    import recipe_variants as rv

    for name in ("recipe_variants", "generalization", "_common"):
        monkeypatch.delitem(sys.modules, name)
    rng = np.random.default_rng(0)
    a, b, cohort = (rv.unit(rng.normal(size=(n, 8))) for n in (5, 5, 30))
    for k in range(5):
        raw = float(a[k] @ b[k])
        versus_a = [float(a[k] @ c) for c in cohort]
        versus_b = [float(b[k] @ c) for c in cohort]
        expected = 0.5 * ((raw - np.mean(versus_a)) / np.std(versus_a) + (raw - np.mean(versus_b)) / np.std(versus_b))
        assert rv.symmetric_norm(a, b, cohort)[k] == pytest.approx(expected)
    direction = rng.normal(size=8)
    projected = rv.without_direction(a, direction)
    np.testing.assert_allclose(projected @ direction, 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1)

    scores, labels = rng.normal(size=40), rng.random(40) < 0.5
    best = max(np.mean((scores >= t) == labels) for t in scores)
    assert np.mean((scores >= rv.best_threshold(scores, labels)) == labels) == best

    images = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(rv.warp(images, 0, 0, 1.0), images)
    shifted = rv.warp(images, 3, 0, 1.0)  # the face moves 3 px right, the left border repeats
    np.testing.assert_array_equal(shifted[..., 3:], images[..., :-3])
    np.testing.assert_array_equal(shifted[..., :3], np.repeat(images[..., :1], 3, axis=-1))


def test_rmfrd_crossval_variants_differences_and_interpolation(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    import numpy as np
    import pandas as pd
    import rmfrd_crossval as cv
    import torch

    from maskface.models.backbones import create_model

    for name in ("rmfrd_crossval", "recipe_variants", "generalization", "_common"):
        monkeypatch.delitem(sys.modules, name)

    name, changes = cv.parse_variant("deeper:backbones.edgeface.train_layers=last_3,backbones.edgeface.lr=1e-4")
    assert name == "deeper" and set(changes) == {"backbones.edgeface.train_layers", "backbones.edgeface.lr"}
    params = {"backbones": {"edgeface": {"train_layers": "last_2", "lr": 5e-5}}}
    changed = cv.with_changes(params, changes)
    assert set(changed["backbones"]["edgeface"]) == {"train_layers", "lr"}
    from maskface.config import BackboneConfig, section

    parsed = section(changed, BackboneConfig, "backbones.edgeface")
    assert parsed.train_layers == "last_3" and parsed.lr == pytest.approx(1e-4)
    assert params["backbones"]["edgeface"]["train_layers"] == "last_2"  # the recipe itself is untouched
    # A key the params leave at its default can be set; a misspelt one fails in the config's own check.
    from maskface.errors import ConfigError

    full = {"backbones": {"edgeface": {"weights": "none", "embedding_size": 512}}}
    assert cv.checked(cv.with_changes(full, {"backbones.edgeface.mask_direction": True}), "edgeface")
    with pytest.raises(ConfigError, match="epoch"):
        cv.checked(cv.with_changes(full, {"backbones.edgeface.epoch": 3}), "edgeface")
    with pytest.raises(ConfigError, match="nose_lin"):
        cv.checked(cv.with_changes({**full, "crop": {}}, {"crop.nose_lin": 0.2}), "edgeface")
    with pytest.raises(KeyError, match="'backbone' is not a section.*valid here: backbones"):
        cv.with_changes(full, {"backbone.edgeface.epochs": 3})
    with pytest.raises(Exception, match="key=value"):
        cv.parse_variant("nothing-to-change")

    # The paired difference to the untouched network, against a by-hand mean and standard error.
    rng = np.random.default_rng(0)
    rows = [
        {"variant": variant, "seed": seed, "collection": collection, "kfold_accuracy": rng.random(), "auc": rng.random(),
         "own_threshold_accuracy": rng.random(), "gap": rng.random()}
        for variant in ("untouched", "recipe") for seed in range(4) for collection in ("a", "b")
    ]
    table = pd.DataFrame(rows)
    summary = cv.summarise(table).set_index(["variant", "collection"])
    for collection in ("a", "b"):
        base = table[(table["variant"] == "untouched") & (table["collection"] == collection)]["auc"].to_numpy()
        tuned = table[(table["variant"] == "recipe") & (table["collection"] == collection)]["auc"].to_numpy()
        differences = tuned - base
        assert summary.loc[("recipe", collection), "auc"] == pytest.approx(tuned.mean())
        assert summary.loc[("recipe", collection), "auc_vs_untouched"] == pytest.approx(differences.mean())
        assert summary.loc[("recipe", collection), "auc_vs_untouched_se"] == pytest.approx(
            np.sqrt(np.sum((differences - differences.mean()) ** 2) / 3) / 2
        )

    # The mask direction: the training identities' masked mean minus their unmasked mean, nothing
    # else; a training identity photographed unmasked only (row 6, an extra collection's) is no
    # evidence of what a mask does.
    index = pd.DataFrame({
        "split": ["train", "train", "train", "val", "test", "train", "train"],
        "masked": [True, False, True, True, False, False, False],
        "identity": ["a", "a", "b", "c", "d", "b", "lfw/e"],
    })
    vectors = rng.normal(size=(7, 4))
    expected = (vectors[0] + vectors[2]) / 2 - (vectors[1] + vectors[5]) / 2
    np.testing.assert_allclose(cv.mask_direction(index, vectors), expected)

    # Interpolation: weight 1 is the fine-tuned network, 0 the untouched one, 0.5 the midpoint of every tensor.
    torch.manual_seed(0)
    untouched = create_model("edgeface_xxs", weights="none", embedding_size=512).eval()
    untouched.init_head_identity()
    trained = create_model("edgeface_xxs", weights="none", embedding_size=512).eval()
    pixels = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        for weight, expected in ((1.0, trained), (0.0, untouched)):
            torch.testing.assert_close(cv.interpolated(trained, untouched, weight)(pixels), expected(pixels), atol=1e-4, rtol=1e-4)
        midpoint = cv.interpolated(trained, untouched, 0.5)
    assert midpoint.batch_norm_folded and not untouched.batch_norm_folded
    state = cv.interpolated_state(trained, untouched, 0.25)
    for key, value in trained.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(state[key], 0.25 * value + 0.75 * untouched.state_dict()[key])
        else:
            assert torch.equal(state[key], value)

    # A soup of one network is that network; a soup of two is the interpolation halfway between them.
    with torch.no_grad():
        torch.testing.assert_close(cv.souped([trained])(pixels), trained(pixels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            cv.souped([trained, untouched])(pixels), cv.interpolated(trained, untouched, 0.5)(pixels), atol=1e-5, rtol=1e-5
        )
    assert not trained.batch_norm_folded  # the ingredients stay as they were


def test_low_resolution_collection_shrinks_every_full_frame_photo_by_area(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    monkeypatch.delitem(sys.modules, "generalization", raising=False)
    import generalization as gen
    import numpy as np
    from PIL import Image

    for name in ("generalization", "_common"):
        monkeypatch.delitem(sys.modules, name)
    root = tmp_path / "collection"
    # 3 x 3 blocks of a smooth ramp: each block's area average is its one colour, and JPEG
    # keeps a ramp (random colours would be lost to chroma subsampling at this size).
    rows, columns = np.mgrid[0:12, 0:11]
    blocks = np.stack([15 * rows + 8 * columns, np.full_like(rows, 120), 220 - 15 * rows], axis=-1).astype(np.uint8)
    photo = np.repeat(np.repeat(blocks, 3, axis=0), 3, axis=1)  # 36 x 33: the reader's 32 px minimum
    for relative in ("AFDB_face_dataset/Ann/Ann_0001.jpg", "AFDB_masked_face_dataset/Ann/Ann_0002_surgical.png",
                     "AFDB_masked_face_dataset/Ann/crop_Ann_0002_surgical_blue.jpg"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / relative, quality=100)
    (root / "README.txt").write_text("not a photo")

    target = gen._low_resolution_copy(root, tmp_path / "cache")
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    # The tight crop_* copies are left out, as in lfw-masktheface; a PNG becomes a JPEG.
    assert written == ["AFDB_face_dataset/Ann/Ann_0001.jpg", "AFDB_masked_face_dataset/Ann/Ann_0002_surgical.jpg"]
    small = np.asarray(Image.open(target / written[0]), dtype=np.float64)
    assert small.shape == (12, 11, 3)
    assert np.abs(small - blocks).mean() < 6  # JPEG at quality 40: close, not exact
    # Cached: a second call leaves the copies as they are.
    stamp = (target / written[0]).stat().st_mtime_ns
    assert gen._low_resolution_copy(root, tmp_path / "cache") == target
    assert (target / written[0]).stat().st_mtime_ns == stamp


def test_generalization_views_grey_band_and_zoom_against_pil_and_the_template(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    monkeypatch.delitem(sys.modules, "generalization", raising=False)
    import argparse

    import generalization as gen
    import numpy as np
    from PIL import Image

    from maskface.face.geometry import template_points

    for name in ("generalization", "_common"):
        monkeypatch.delitem(sys.modules, name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 112, 112), dtype=np.uint8)

    assert gen.apply_view(images, "plain", "arcface") is images
    grey = gen.apply_view(images, "grey", "arcface")
    for image, seen in zip(images, grey):
        luma = np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L"), dtype=np.int16)
        assert all(np.abs(channel.astype(np.int16) - luma).max() <= 1 for channel in seen)

    # band=0.5: grey above half an eye distance over the template's eye line, the rest untouched.
    eyes = template_points("arcface", 112)[:2]
    line = eyes[:, 1].mean() - 0.5 * np.hypot(*(eyes[1] - eyes[0]))
    banded = gen.apply_view(images, "band=0.5", "arcface")
    above = np.arange(112) < line
    assert (banded[:, :, above] == 128).all()
    assert np.array_equal(banded[:, :, ~above], images[:, :, ~above])
    assert above.sum() == int(np.ceil(line)) and 0 < above.sum() < 112

    # zoom=1 keeps every pixel; zoom=2 shows the centre half blown up, grey comes in on zoom=0.5.
    assert np.array_equal(gen.apply_view(images, "zoom=1", "arcface"), images)
    ramp = np.broadcast_to(np.arange(112, dtype=np.uint8)[None, None, None, :], (1, 3, 112, 112))
    doubled = gen.apply_view(ramp, "zoom=2", "arcface")[0, 0, 0]
    assert np.abs(doubled.astype(float) - (28 + (np.arange(112) - 55.5) / 2 + 27.5)).max() <= 1
    shrunk = gen.apply_view(ramp, "zoom=0.5", "arcface")[0, 0]
    assert (shrunk[:, 0] == 128).all() and (shrunk[0] == 128).all()

    assert gen.parse_view("zoom=1.1") == "zoom=1.1"
    for bad in ("zoom=0", "zoom", "band=x", "sepia", "grey=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="valid: plain, grey, zoom=<scale>, band=<eye distances>"):
            gen.parse_view(bad)
