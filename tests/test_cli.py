"""`maskface` end to end on a toy model folder: outputs, exit codes, and one-line errors on bad input."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maskface.models.backbones import create_model
from maskface.evaluation.classify import fit_and_score, save_classifier
from maskface.cli import main
from maskface.config import ClassifyConfig, CropConfig, KnnConfig
from maskface.face.crop import crop_dataset
from maskface.data.datasets import read_manifest
from maskface.artifacts import load_embeddings
from maskface.inference.embed import embed_crops, save_model
from maskface.evaluation.metrics import confusion_at_threshold, kfold_accuracy, roc_auc
from maskface.data.split import make_pairs
from maskface.tables import read_csv

COMMANDS = ("verify", "embed", "enroll", "identify", "eval", "export", "info", "weights", "simulate-masks")


@pytest.fixture(scope="module")
def built(build_toy_model_folder, tmp_path_factory):
    """The toy model folder (see conftest) plus bad inputs of every kind."""
    built = build_toy_model_folder(tmp_path_factory.mktemp("cli"))
    root = built["root"]
    # Bad inputs of every kind the issue names.
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("not an image")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    noise.save(bad / "whole.png")
    (bad / "truncated.png").write_bytes((bad / "whole.png").read_bytes()[:900])
    (bad / "whole.png").unlink()
    return {**built, "bad": bad}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *needles):
    """No traceback; the error is one ``maskface <command>: error: ...`` line holding every needle."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors and all(line.startswith("maskface ") for line in errors), err
    assert any(all(n in line for n in needles) for line in errors), err


def path_of(built, row):
    return built["index"].at[row, "path"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: maskface {command}")


def test_verify_prints_the_decision_and_json(capsys, built):
    a, b = path_of(built, 0), path_of(built, 40)
    code, out, err = run(capsys, "verify", a, b, "--model", built["dir"], "--json", "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    result = json.loads(out)
    assert result["threshold"] == pytest.approx(built["threshold"])
    assert result["same"] == (result["score"] >= result["threshold"])
    # Oracle: the embed stage's own vectors.
    assert result["cosine"] == pytest.approx(float(built["embeddings"][0] @ built["embeddings"][40]), abs=1e-5)


def test_an_image_verified_against_itself_is_the_same_person(capsys, built, tmp_path):
    # Cosine scores a self-pair 1 (identical unit embeddings), above any threshold below 1.
    model = _cosine_model(built, tmp_path / "cosine", threshold=0.999)
    a = path_of(built, 0)
    code, out, err = run(capsys, "verify", a, a, "--model", model, "--precision", "fp32")
    assert code == 0, err
    assert out.startswith("same person: score 1.0000 >= threshold 0.9990 (alexnet, cosine)")
    code, out, _ = run(capsys, "verify", a, a, "--model", model, "--precision", "fp32", "--json")
    result = json.loads(out)
    assert result["same"] is True and result["score"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "name, reason",
    [("missing.png", "missing"), ("text.jpg", "not an image"), ("truncated.png", "truncated or corrupt")],
)
def test_verify_bad_image_is_one_line_exit_2(capsys, built, name, reason):
    code, out, err = run(capsys, "verify", path_of(built, 0), built["bad"] / name, "--model", built["dir"])
    assert code == 2 and out == ""
    assert_one_line_error(err, "maskface verify: error:", name, reason)


def test_verify_image_without_a_face_is_one_line_exit_2(capsys, built, tmp_path):
    """A model trained with alignment: MTCNN finds no face in a colour-block toy image."""
    aligned = tmp_path / "aligned"
    shutil.copytree(built["dir"], aligned)
    settings = {"input_size": 64, "crop": {"mode": "none", "keep_ratio": 0.5, "align": True, "align_points": "eyes",
                                           "template": "facenet", "landmarks": "mtcnn", "detect_device": "cpu"}}
    (aligned / "backbone" / "preprocess.json").write_text(json.dumps(settings))
    code, out, err = run(capsys, "verify", path_of(built, 0), path_of(built, 1), "--model", aligned)
    assert code == 2 and out == ""
    assert_one_line_error(err, Path(path_of(built, 0)).name, "no face found (alignment needs the face's landmarks)")


def test_bad_model_folders_are_one_line_exit_2(capsys, built, tmp_path):
    exported = tmp_path / "exported"
    assert run(capsys, "export", "--model", built["dir"], "--out", exported)[0] == 0
    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported, corrupt)
    with open(corrupt / "classifier" / "classifier.json", "a") as handle:
        handle.write(" ")
    newer = tmp_path / "newer"
    shutil.copytree(exported, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    cases = [
        (corrupt, "classifier.json: checksum mismatch"),
        (newer, "format version 2 is incompatible"),
        (tmp_path / "nowhere", "model folder missing"),
    ]
    for folder, message in cases:
        code, out, err = run(capsys, "verify", path_of(built, 0), path_of(built, 1), "--model", folder)
        assert code == 2 and out == ""
        assert_one_line_error(err, str(folder), message)


def test_embed_writes_npy_and_index_and_lists_failures(capsys, built, tmp_path):
    folder = tmp_path / "faces"
    shutil.copytree(Path(path_of(built, 0)).parent, folder)
    inputs = [folder, built["bad"] / "text.jpg", tmp_path / "gone.jpg", built["bad"] / "truncated.png", path_of(built, 30)]
    out = tmp_path / "vectors.npy"
    code, stdout, err = run(capsys, "embed", *inputs, "--model", built["dir"], "--out", out, "--json", "--batch-size", "4", "--precision", "fp32")
    assert code == 2  # failures listed, the rest written
    result = json.loads(stdout)
    index = read_csv(tmp_path / "vectors.csv")
    vectors = np.load(out)
    expected_paths = sorted(str(p) for p in folder.iterdir()) + [path_of(built, 30)]
    assert index["path"].tolist() == expected_paths and index["row"].tolist() == list(range(len(expected_paths)))
    assert result["embedded"] == len(expected_paths) == len(vectors)
    assert sorted(Path(f["source"]).name for f in result["failed"]) == ["gone.jpg", "text.jpg", "truncated.png"]
    for name in ("gone.jpg", "text.jpg", "truncated.png"):
        assert_one_line_error(err, "maskface embed: error:", name)
    # Oracle: the embed stage's rows for the same files.
    row_of = {p: r for r, p in enumerate(built["index"]["path"])}
    np.testing.assert_allclose(vectors[-1], built["embeddings"][row_of[path_of(built, 30)]], atol=1e-5)
    code, stdout, _ = run(capsys, "embed", path_of(built, 1), "--model", built["dir"], "--out", tmp_path / "one.npy")
    assert code == 0 and "wrote 1 embeddings" in stdout


def test_embed_parquet(capsys, built, tmp_path):
    out = tmp_path / "vectors.parquet"
    code, _, err = run(capsys, "embed", path_of(built, 1), path_of(built, 2), "--model", built["dir"], "--out", out, "--precision", "fp32")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert code == 2 and not out.exists()
        assert_one_line_error(err, "needs pyarrow or fastparquet")
        return
    assert code == 0
    table = pd.read_parquet(out)
    assert table["path"].tolist() == [path_of(built, 1), path_of(built, 2)]
    np.testing.assert_allclose(np.stack(table["embedding"]), built["embeddings"][[1, 2]], atol=1e-5)


def test_embed_refuses_an_unknown_output_format(capsys, built, tmp_path):
    code, _, err = run(capsys, "embed", path_of(built, 1), "--model", built["dir"], "--out", tmp_path / "v.txt")
    assert code == 2
    assert_one_line_error(err, "v.txt", ".npy", ".parquet")


def _cosine_model(built, target, threshold):
    shutil.copytree(built["dir"], target)
    (target / "classifier" / "classifier.npz").unlink()
    (target / "classifier" / "classifier.json").write_text(json.dumps({"classifier": "cosine", "settings": {}, "threshold": threshold}))
    return target


def test_enroll_and_identify_with_unknowns(capsys, built, tmp_path):
    index = built["index"]
    gallery_dir = tmp_path / "gallery"
    for identity in ("id03", "id04"):
        (gallery_dir / identity).mkdir(parents=True)
        for row in index.index[index["identity"] == identity][:2]:
            shutil.copyfile(path_of(built, row), gallery_dir / identity / f"{row}.png")
    shutil.copyfile(built["bad"] / "text.jpg", gallery_dir / "id04" / "broken.jpg")
    model = _cosine_model(built, tmp_path / "cosine", threshold=0.99999)
    gallery = tmp_path / "people.npz"
    code, out, err = run(capsys, "enroll", gallery_dir, "--model", model, "--out", gallery, "--json", "--precision", "fp32")
    assert code == 2  # one failure, four enrolled
    enrolled = json.loads(out)
    assert enrolled["images"] == 4 and enrolled["images_per_identity"] == {"id03": 2, "id04": 2}
    assert_one_line_error(err, "broken.jpg", "not an image")

    known = path_of(built, int(index.index[index["identity"] == "id04"][1]))
    stranger = path_of(built, int(index.index[index["identity"] == "id10"][0]))
    code, out, err = run(capsys, "identify", known, stranger, "--gallery", gallery, "--top", "2", "--json", "--precision", "fp32")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["identity"] == "id04" and results[0]["known"]
    assert results[1]["identity"] == "unknown" and len(results[1]["candidates"]) == 2
    # Oracle for the stranger: best cosine per gallery identity from the embed stage's vectors.
    vectors, rows = built["embeddings"], {p: r for r, p in enumerate(index["path"])}
    best = {
        identity: max(float(vectors[rows[stranger]] @ vectors[r]) for r in index.index[index["identity"] == identity][:2])
        for identity in ("id03", "id04")
    }
    top = sorted(best, key=lambda k: -best[k])
    assert [c["identity"] for c in results[1]["candidates"]] == top
    assert results[1]["score"] == pytest.approx(best[top[0]], abs=1e-5)
    code, out, _ = run(capsys, "identify", stranger, "--gallery", gallery, "--precision", "fp32")
    assert code == 0 and "unknown (best score" in out
    # Below the stranger's best score, the same probe is taken for that identity.
    code, out, _ = run(
        capsys, "identify", stranger, "--gallery", gallery, "--threshold", str(best[top[0]] - 1e-3), "--json", "--precision", "fp32"
    )
    assert code == 0 and json.loads(out)["results"][0]["identity"] == top[0]


def test_identify_refuses_a_gallery_of_another_model(capsys, built, tmp_path):
    gallery = tmp_path / "g.npz"
    assert run(capsys, "enroll", Path(path_of(built, 0)).parent, "--model", built["dir"], "--out", gallery)[0] == 0
    other = tmp_path / "other"
    shutil.copytree(built["dir"], other)
    torch.manual_seed(5)
    save_model(create_model("alexnet", weights="none", embedding_size=16, input_size=64), other / "backbone", {"weights": "none"})
    code, out, err = run(capsys, "identify", path_of(built, 0), "--gallery", gallery, "--model", other)
    assert code == 2 and out == ""
    assert_one_line_error(err, "enrolled with another model")
    code, _, err = run(capsys, "identify", path_of(built, 0), "--gallery", tmp_path / "none.npz")
    assert code == 2
    assert_one_line_error(err, "none.npz", "gallery file missing")


def test_eval_on_a_folder_dataset_writes_the_evaluate_metrics(capsys, built, toy_dataset, tmp_path):
    out = tmp_path / "eval"
    # The toy images marked masked carry "mask" in their folder for the folder layout.
    data = tmp_path / "data"
    manifest = toy_dataset["manifest"]
    for path, identity, masked in manifest[["path", "identity", "masked"]].itertuples(index=False):
        target = data / identity / ("mask" if masked else "plain") / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    code, stdout, err = run(capsys, "eval", "--model", built["dir"], "--data", data, "--source", "folder", "--out", out, "--json", "--workers", "1", "--bootstrap", "20")
    assert code == 0, err
    report = json.loads(stdout)
    saved = json.loads((out / "metrics.json").read_text())
    assert report["threshold"] == saved["threshold"] == pytest.approx(built["threshold"])
    pairs = read_csv(out / "pairs.csv")
    # Pair rules of the split stage over every identity (no train/val/test split here).
    expected = make_pairs(read_manifest(out / "manifest.csv"), ["masked-unmasked"], 20, 0)
    assert pairs[["path_a", "path_b", "label", "fold"]].equals(expected[["path_a", "path_b", "label", "fold"]])
    assert {name.split("/")[-1] for name in pairs["identity_a"]} == set(manifest["identity"])  # "folder/id00"
    # Metrics recomputed from the written scores with the metrics module directly.
    scores, labels = pairs["score"].to_numpy(), pairs["label"].to_numpy()
    at = confusion_at_threshold(scores, labels, built["threshold"])
    for key in ("tp", "fp", "tn", "fn", "accuracy"):
        assert saved[key] == pytest.approx(at[key])
    assert saved["roc_auc"] == pytest.approx(roc_auc(scores, labels))
    assert saved["kfold"]["mean"] == pytest.approx(kfold_accuracy(scores, labels, pairs["fold"].to_numpy())["mean"])
    assert saved["n_genuine"] == int(labels.sum()) and saved["dataset"]["identities"] == 12
    assert set(saved["by_pair_type"]) == {"masked-unmasked"}
    confusion = read_csv(out / "confusion.csv")
    assert ((confusion["actual"] == "same") & (confusion["predicted"] == "same")).sum() == saved["tp"]
    roc = read_csv(out / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr"] and roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1
    assert saved["bootstrap"]["accuracy"]["n_used"] + saved["bootstrap"]["accuracy"]["n_skipped"] == 20
    det = read_csv(out / "det.csv")
    np.testing.assert_allclose(det["fnr"], 1 - roc["tpr"], atol=1e-5)  # CSVs hold 6 digits
    for figure in ("curves.png", "worst_pairs.png"):
        assert Image.open(out / figure).size[0] > 100
    # A second run refuses to mix its files into the first's folder.
    code, _, err = run(capsys, "eval", "--model", built["dir"], "--data", data, "--source", "folder", "--out", out)
    assert code == 2
    assert_one_line_error(err, "already holds files", "--overwrite")


def test_eval_with_a_masked_copy_shows_each_photo_once(capsys, built, toy_dataset, tmp_path):
    """--masked-copy (the output of simulate-masks): half of each identity's photos are swapped for their copy."""
    data, copy = tmp_path / "plain", tmp_path / "copy"
    rows = []
    for path, identity in toy_dataset["manifest"][["path", "identity"]].itertuples(index=False):
        relative = f"{identity}/{Path(path).name}"
        (data / identity).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, data / relative)
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        pixels[pixels.shape[0] // 2 :] = (200, 220, 240)  # a crude "mask" over the lower half
        (copy / identity).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(copy / relative)
        rows.append({"path": relative, "identity": identity, "masked": True})
    pd.DataFrame(rows).to_csv(copy / "manifest.csv", index=False)
    out = tmp_path / "eval"
    code, stdout, err = run(
        capsys, "eval", "--model", built["dir"], "--data", data, "--source", "folder", "--out", out,
        "--masked-copy", copy, "--bootstrap", "0", "--worst-pairs", "0", "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["dataset"]["pair_types"] == ["masked-unmasked"] and report["dataset"]["masked_images"] == 36
    manifest = read_manifest(out / "manifest.csv")
    for _, group in manifest.groupby("identity"):
        assert group["masked"].sum() == 3 and len(group) == 6
        assert all(p.startswith(str(copy)) == m for p, m in zip(group["path"], group["masked"]))
        assert group["path"].map(lambda p: Path(p).name).is_unique  # no photo both masked and unmasked
    assert not (out / "worst_pairs.png").exists()
    code, _, err = run(capsys, "eval", "--model", built["dir"], "--data", data, "--source", "folder", "--out", tmp_path / "e2", "--masked-copy", data)
    assert code == 2
    assert_one_line_error(err, "manifest.csv: missing", "simulate-masks")


def test_eval_bad_dataset_is_one_line_exit_2(capsys, built, tmp_path):
    code, _, err = run(capsys, "eval", "--model", built["dir"], "--data", tmp_path / "none", "--source", "lfw", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "maskface eval: error:", "does not exist")
    code, _, err = run(capsys, "eval", "--model", built["dir"], "--data", tmp_path, "--source", "casia")
    assert code == 2 and "invalid choice: 'casia'" in err


def test_export_and_info(capsys, built, tmp_path):
    out = tmp_path / "shipped"
    code, stdout, _ = run(capsys, "export", "--model", built["dir"], "--out", out, "--json")
    assert code == 0 and json.loads(stdout)["format_version"] == 1
    code, stdout, _ = run(capsys, "info", "--model", out, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["checksums"] == "verified" and info["backbone"] == "alexnet"
    assert info["crop"] == {"mode": "ratio", "keep_ratio": 0.75}
    code, _, err = run(capsys, "export", "--model", built["dir"], "--out", out)
    assert code == 2
    assert_one_line_error(err, "already exists")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_overwrite_onto_the_folder_holding_the_source_deletes_nothing(capsys, built, tmp_path):
    # The report: `maskface export --model models/facenet --out models --overwrite` deleted models/.
    models = tmp_path / "models"
    shutil.copytree(built["dir"], models / "facenet")
    (models / "other").mkdir()
    (models / "other" / "keep.txt").write_text("unrelated")
    before = _tree(tmp_path)
    code, out, err = run(capsys, "export", "--model", models / "facenet", "--out", models, "--overwrite")
    assert code == 2 and out == ""
    assert_one_line_error(err, "maskface export: error: --out", "a folder holding the source")
    code, _, err = run(capsys, "export", "--model", models / "facenet", "--out", models / "other", "--overwrite")
    assert code == 2
    assert_one_line_error(err, "holds no maskface manifest.json")
    assert _tree(tmp_path) == before
    # An earlier export is what --overwrite replaces.
    assert run(capsys, "export", "--model", models / "facenet", "--out", tmp_path / "shipped")[0] == 0
    assert run(capsys, "export", "--model", models / "facenet", "--out", tmp_path / "shipped", "--overwrite")[0] == 0


def test_embed_and_enroll_replace_an_output_only_with_overwrite(capsys, built, tmp_path):
    out = tmp_path / "vectors.npy"
    index = tmp_path / "vectors.csv"
    index.write_text("somebody's table\n")  # the index file counts as an output too
    code, stdout, err = run(capsys, "embed", path_of(built, 1), "--model", built["dir"], "--out", out)
    assert code == 2 and stdout == "" and not out.exists()
    assert_one_line_error(err, "vectors.csv", "already exists", "--overwrite")
    assert index.read_text() == "somebody's table\n"
    code, _, err = run(capsys, "embed", path_of(built, 1), "--model", built["dir"], "--out", out, "--overwrite", "--precision", "fp32")
    assert code == 0, err
    assert read_csv(index)["path"].tolist() == [path_of(built, 1)] and np.load(out).shape == (1, 16)

    gallery = tmp_path / "people.npz"
    gallery.write_bytes(b"an older gallery")
    faces = Path(path_of(built, 0)).parent
    code, _, err = run(capsys, "enroll", faces, "--model", built["dir"], "--out", tmp_path / "people")  # .npz appended
    assert code == 2
    assert_one_line_error(err, "people.npz", "already exists")
    assert gallery.read_bytes() == b"an older gallery"
    code, _, err = run(capsys, "enroll", faces, "--model", built["dir"], "--out", gallery, "--overwrite", "--precision", "fp32")
    assert code == 0, err
    assert len(np.load(gallery)["identities"]) == len(list(faces.iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.npz", "vectors.csv", "vectors.npy"]  # no temporary left


def test_a_failed_write_leaves_the_earlier_output_and_no_partial_file(capsys, built, tmp_path, monkeypatch):
    from maskface.api import Gallery

    gallery = tmp_path / "people.npz"
    gallery.write_bytes(b"an older gallery")

    def disk_full(self, path):
        Path(path).write_bytes(b"half a gallery")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(Gallery, "save", disk_full)
    code, _, err = run(capsys, "enroll", Path(path_of(built, 0)).parent, "--model", built["dir"], "--out", gallery, "--overwrite")
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    assert gallery.read_bytes() == b"an older gallery"
    assert [p.name for p in tmp_path.iterdir()] == ["people.npz"]


class _WritesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('code from the folder ran')",))


def test_identify_without_model_opens_the_gallery_folder_only_after_the_checks(capsys, built, tmp_path):
    import joblib

    model = _cosine_model(built, tmp_path / "cosine", threshold=0.5)
    gallery = tmp_path / "g.npz"
    assert run(capsys, "enroll", Path(path_of(built, 0)).parent, "--model", model, "--out", gallery)[0] == 0
    probe = path_of(built, 0)
    code, out, err = run(capsys, "identify", probe, "--gallery", gallery, "--json", "--precision", "fp32")
    assert code == 0, err  # the folder the gallery names, unchanged: used
    assert json.loads(out)["results"][0]["identity"] == Path(probe).stem  # images directly in the folder: named by stem

    def pointing_to(folder):
        with np.load(gallery, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps({**meta, "model_dir": str(folder)}))
        np.savez(tmp_path / "forged.npz", **arrays)
        return tmp_path / "forged.npz"

    # Same embedder, but a pickled classifier that would run code: refused, never unpickled.
    evil = tmp_path / "evil"
    shutil.copytree(built["dir"], evil)
    canary = tmp_path / "canary.txt"
    (evil / "classifier" / "classifier.npz").unlink()
    joblib.dump(_WritesFile(canary), evil / "classifier" / "classifier.joblib")
    (evil / "classifier" / "classifier.json").write_text(json.dumps({"classifier": "knn", "threshold": 0.5, "format": 1}))
    code, out, err = run(capsys, "identify", probe, "--gallery", pointing_to(evil))
    assert code == 2 and out == ""
    assert_one_line_error(err, "classifier.joblib", "unpickling runs code")
    assert not canary.exists()
    # Another embedder than the one enrolled with: refused before its weights are loaded.
    other = tmp_path / "other"
    shutil.copytree(model, other)
    torch.manual_seed(7)
    save_model(create_model("alexnet", weights="none", embedding_size=16, input_size=64), other / "backbone", {"weights": "none"})
    code, _, err = run(capsys, "identify", probe, "--gallery", pointing_to(other))
    assert code == 2
    assert_one_line_error(err, "forged.npz", "not the model it was enrolled with")


def test_a_bug_keeps_its_traceback_and_does_not_exit_2(capsys, built, monkeypatch):
    import maskface.inference.model_folder

    def bug(*args, **kwargs):
        raise ValueError("a library bug, not bad input")

    monkeypatch.setattr(maskface.inference.model_folder, "read_model_folder", bug)
    with pytest.raises(ValueError, match="a library bug"):
        main(["info", "--model", str(built["dir"])])
    # As a user sees it: the traceback on stderr and status 1.
    script = (
        "import sys, maskface.inference.model_folder as m\n"
        "def bug(*a, **k): raise KeyError('library bug')\n"
        "m.read_model_folder = bug\n"
        "from maskface.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "info", "--model", str(built["dir"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'library bug'" in done.stderr


def test_weights_are_wired_under_the_same_command(capsys):
    code, out, _ = run(capsys, "weights", "list")
    assert code == 0 and "facenet:vggface2" in out


def test_usage_errors_exit_2(capsys, built):
    code, _, err = run(capsys, "identify", "x.png")
    assert code == 2 and "--gallery" in err
    code, _, err = run(capsys, "embed", "x.png", "--model", built["dir"], "--out", "o.npy", "--batch-size", "0")
    assert code == 2 and "--batch-size" in err


def test_console_script_end_to_end(built, tmp_path):
    """The installed `maskface` entry point: a one-line error and status 2, no traceback (one run: torch imports are slow)."""
    script = Path(sys.executable).parent / "maskface"
    if not script.exists():
        pytest.skip("the maskface console script is not installed in this environment")
    bad = subprocess.run(
        [str(script), "verify", path_of(built, 0), str(built["bad"] / "truncated.png"), "--model", str(built["dir"])],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert_one_line_error(bad.stderr, "truncated.png", "truncated or corrupt")


def test_the_program_flushes_everything_and_exits_with_main_s_status(built, tmp_path):
    """`python -m maskface.cli` (maskface.cli.run) skips the interpreter's teardown: all that
    main printed and wrote must be there, and its status must be the process's."""
    out = tmp_path / "vectors.npy"
    paths = [path_of(built, k) for k in range(3)]
    done = subprocess.run(
        [sys.executable, "-m", "maskface.cli", "embed", *paths, str(tmp_path / "gone.jpg"), "--model", str(built["dir"]),
         "--out", str(out), "--json", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert report["embedded"] == 3 and [Path(f["source"]).name for f in report["failed"]] == ["gone.jpg"]
    assert_one_line_error(done.stderr, "gone.jpg", "missing")
    np.testing.assert_allclose(np.load(out), built["embeddings"][:3], atol=1e-5)
    assert read_csv(tmp_path / "vectors.csv")["path"].tolist() == paths
    version = subprocess.run([sys.executable, "-m", "maskface.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("maskface ")


@pytest.mark.realdata
@pytest.mark.slow
def test_eval_crosses_from_rmfrd_dev_to_lfw(datasets_root, tmp_path, capsys):
    """A model trained on rmfrd-dev (small: alexnet 64 px, one epoch) evaluated on an LFW subset with simulated masks.

    The full-size run (facenet, all of lfw-gray-20) is a dated command in benchmarks/README.md.
    """
    from maskface.config import ArcFaceConfig, BackboneConfig, FinetuneConfig
    from maskface.data.datasets import DataConfig, build_manifest
    from maskface.data.split import split_dataset
    from maskface.tables import write_csv
    from maskface.training.train import finetune

    manifest = build_manifest(DataConfig(source="rmfrd", root=str(datasets_root / "rmfrd-dev")), None).manifest
    manifest, pairs = split_dataset(manifest, (0.7, 0.1, 0.2), 0, "identity", ["masked-unmasked"], 20)
    for name, table in pairs.items():
        write_csv(table, tmp_path / f"{name}.csv")
    crop_dataset(manifest, CropConfig(mode="none"), 64, tmp_path / "crops")
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        finetune(
            "alexnet", tmp_path / "crops", tmp_path / "val.csv", tmp_path / "model" / "backbone", tmp_path / "live",
            BackboneConfig(epochs=1, embedding_size=32, batch_size=64), ArcFaceConfig(), FinetuneConfig(seed=0, device="cpu"),
        )
    finally:
        os.chdir(previous)
    embed_crops(tmp_path / "crops", tmp_path / "model" / "backbone", tmp_path / "embeddings", batch_size=64, device="cpu", precision="fp32")
    embeddings, index = load_embeddings(tmp_path / "embeddings")
    classifier, threshold, _, _ = fit_and_score(
        embeddings, index, read_csv(tmp_path / "val.csv"), read_csv(tmp_path / "test.csv"), "knn", KnnConfig(), ClassifyConfig()
    )
    save_classifier(classifier, tmp_path / "model" / "classifier", {"classifier": "knn", "settings": {}, "threshold": threshold})

    out = tmp_path / "eval"
    code, stdout, err = run(
        capsys, "eval", "--model", tmp_path / "model", "--data", datasets_root / "lfw-gray-20", "--source", "lfw",
        "--out", out, "--max-identities", "6", "--max-images-per-identity", "6", "--simulate-masks",
        "--bootstrap", "0", "--worst-pairs", "0", "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["dataset"]["identities"] == 6 and report["dataset"]["images"] == 36
    # LFW has no masks: MTCNN landmarks + simulated masks on half of each identity's photos.
    assert report["dataset"]["pair_types"] == ["masked-unmasked"]
    assert 6 <= report["dataset"]["masked_images"] <= 18
    masked = read_manifest(out / "manifest.csv").query("masked")["path"]
    assert masked.str.startswith(str(out / "masked-copy")).all()
    assert report["threshold"] == pytest.approx(threshold)
    scored = read_csv(out / "pairs.csv")
    assert report["n_pairs"] == len(scored) > 0 and 0 < report["n_genuine"] < report["n_pairs"]
    assert report["roc_auc"] == pytest.approx(roc_auc(scored["score"].to_numpy(), scored["label"].to_numpy()))


def test_help_and_the_parser_start_without_torch_or_scikit_learn():
    # `maskface --help` and argument errors must answer at once: torch alone costs ~1.5 s.
    probe = (
        "import json, sys, maskface.cli; maskface.cli.build_parser(); "
        "print(json.dumps(sorted(m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_each_command_alone_parses_as_in_the_whole_parser():
    # main builds only the named command's options; its help must be the whole parser's.
    from maskface import cli

    def subcommands(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    whole = cli.build_parser()
    assert tuple(subcommands(whole)) == cli.COMMANDS == COMMANDS
    for name in COMMANDS:
        assert subcommands(cli.build_parser(name))[name].format_help() == subcommands(whole)[name].format_help()


def test_the_index_csv_is_what_the_table_writer_writes(tmp_path):
    from maskface.cli import _write_index
    from maskface.tables import write_csv

    names = ["a.jpg", "b,c.jpg", 'q"uote.png', "new\nline.jpg", os.fsdecode(b"caf\xe9.jpg"), " lead", "NA", "", "x\r.png"]
    write_csv(pd.DataFrame({"row": range(len(names)), "path": names}), tmp_path / "pandas.csv")
    _write_index(names, tmp_path / "csv.csv")
    assert (tmp_path / "csv.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    _write_index(names[:-1], tmp_path / "csv.csv")  # a bare \r does not survive pandas' reader, whoever wrote it
    assert read_csv(tmp_path / "csv.csv")["path"].tolist() == names[:-1]


def test_embed_decodes_while_torch_loads_and_imports_no_table_or_config_library(built, tmp_path, decoder_spy):
    """`maskface embed` in a fresh interpreter: the decoding processes start before torch is
    imported, and the command's own process never imports pandas, pydantic or scikit-learn
    (the workers import the crop stage's transform themselves)."""
    probe = decoder_spy + (
        "from maskface.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = ('pandas', 'pydantic', 'yaml', 'sklearn', 'matplotlib', 'scipy', 'maskface.config', 'maskface.face.crop')\n"
        "import os\n"
        "print(json.dumps({'code': code, 'decoder': started, 'imported': [m for m in heavy if m in sys.modules], "
        "'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY')}))\n"
    )
    paths = built["index"]["path"].tolist()
    out = tmp_path / "vectors.npy"
    argv = ["embed", *paths, "--model", str(built["dir"]), "--out", str(out), "--precision", "fp32", "--no-progress"]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True, env=environment)
    report = json.loads(result.stdout.splitlines()[-1])
    # Threads that sleep while they wait: set before torch loaded (the decoder started first).
    assert report == {"code": 0, "decoder": [False, True], "imported": [], "omp_wait_policy": "PASSIVE"}
    np.testing.assert_allclose(np.load(out), built["embeddings"], atol=1e-5)
    assert read_csv(tmp_path / "vectors.csv")["path"].tolist() == paths


def test_eval_keeps_file_names_of_any_bytes(capsys, built, toy_dataset, tmp_path):
    # Latin-1 identity folders and file names (not UTF-8, as in RMFRD) through eval's tables and figures.
    data = os.path.join(os.fsencode(tmp_path), b"data")
    for number, (path, identity, masked) in enumerate(toy_dataset["manifest"][["path", "identity", "masked"]].itertuples(index=False)):
        folder = os.path.join(data, identity.encode() + b"_\xe9", b"mask" if masked else b"plain")
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, b"caf\xe9_%d.png" % number))
    out = tmp_path / "eval"
    code, stdout, err = run(
        capsys, "eval", "--model", built["dir"], "--data", os.fsdecode(data), "--source", "folder", "--out", out,
        "--json", "--workers", "1", "--bootstrap", "20",
    )
    assert code == 0, err
    assert json.loads(stdout)["threshold"] == pytest.approx(built["threshold"])
    raw = (out / "pairs.csv").read_bytes()
    assert b"_\xe9/mask/caf\xe9_" in raw and b"_\xe9/plain/caf\xe9_" in raw
    pairs = read_csv(out / "pairs.csv")
    assert all(os.path.isfile(path) for path in pd.concat([pairs["path_a"], pairs["path_b"]]))
    assert len(read_manifest(out / "manifest.csv")) == len(toy_dataset["manifest"])
