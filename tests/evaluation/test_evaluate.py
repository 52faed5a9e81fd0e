"""The evaluate step on hand-made scored pairs: metrics vs oracles, plot files, report, stage."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score

from maskface.artifacts import CLASSIFIER_META_FILE, IDENTIFICATION_FILE
from maskface.evaluation.classify import classifier_metadata
from maskface.config import CosineConfig, EvaluateConfig, MlpConfig
from maskface.evaluation.evaluate import PLOT_KINDS, evaluate, evaluate_backbone
from maskface.evaluation.metrics import choose_threshold

PAIR_TYPES = ["masked-unmasked", "masked-masked", "unmasked-unmasked"]
CONFIG = EvaluateConfig(roc_points=50, bootstrap=40, histogram_bins=10, worst_pairs=3)


def make_pairs(n: int, seed: int, kind: str, paths: list[str]) -> pd.DataFrame:
    """Pairs of 40 identities; ``kind``: 'good' (separated), 'perfect' or 'random' scores."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.5).astype(int)
    identity_a = rng.integers(0, 40, n)
    identity_b = np.where(label == 1, identity_a, (identity_a + 1 + rng.integers(0, 39, n)) % 40)
    if kind == "perfect":
        score = np.where(label == 1, 0.6 + 0.4 * rng.random(n), 0.4 * rng.random(n))
    elif kind == "random":
        score = rng.random(n)
    else:
        score = np.clip(rng.normal(0.3 + 0.4 * label, 0.15), 0, 1)
    return pd.DataFrame(
        {
            "path_a": [paths[k % len(paths)] for k in range(n)],
            "path_b": [paths[(k + 1) % len(paths)] for k in range(n)],
            "identity_a": [f"id{i:02d}" for i in identity_a],
            "identity_b": [f"id{i:02d}" for i in identity_b],
            "label": label,
            "pair_type": [PAIR_TYPES[k % 3] for k in range(n)],
            # Folds by first identity, as split.make_pairs assigns them.
            "fold": identity_a % 10,
            "score": score,
            "cosine": np.clip(2 * score - 1 + rng.normal(0, 0.2, n), -1, 1),
        }
    )


@pytest.fixture(scope="module")
def scores_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    paths = []
    for k in range(6):
        path = root / "images" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * k, dtype=np.uint8)).save(path)
        paths.append(str(path))
    kinds = {"facenet": "good", "vggface": "perfect", "alexnet": "random"}
    for seed, (backbone, kind) in enumerate(kinds.items()):
        folder = root / "scores" / backbone
        folder.mkdir(parents=True)
        make_pairs(300, 10 + seed, kind, paths).to_csv(folder / "val.csv", index=False)
        make_pairs(600, 20 + seed, kind, paths).to_csv(folder / "test.csv", index=False)
    classifiers = {"facenet": ("mlp", MlpConfig()), "vggface": ("cosine", CosineConfig())}
    for backbone, (name, config) in classifiers.items():
        meta = classifier_metadata(name, config, 0.5, 16, identification=backbone == "facenet")
        (root / "scores" / backbone / CLASSIFIER_META_FILE).write_text(json.dumps(meta))
    ranks = np.array([1, 1, 2, 1, 7, 1, 3, 0, 1, 1])
    pd.DataFrame(
        {
            "path": [f"q{k}.png" for k in range(10)],
            "identity": [f"id{k % 4}" for k in range(10)],
            "masked": [k % 2 == 0 for k in range(10)],
            "rank": ranks,
            "predicted": ["x"] * 10,
            "score": [0.5] * 10,
            "top_5": ["x|y"] * 10,
        }
    ).to_csv(root / "scores" / "facenet" / IDENTIFICATION_FILE, index=False)
    return root


@pytest.fixture(scope="module")
def evaluated(scores_root):
    results = evaluate(
        ["facenet", "vggface", "alexnet"],
        scores_root / "scores",
        scores_root / "metrics" / "evaluate.json",
        scores_root / "plots",
        CONFIG,
        report_path=scores_root / "metrics" / "report.md",
        settings={"facenet": {"weights": "casia-webface", "input_size": 160, "embedding_size": 128, "epochs": 2}},
        crop={"mode": "ratio", "keep_ratio": 0.5},
    )
    return results


def read(scores_root, backbone):
    folder = scores_root / "scores" / backbone
    return pd.read_csv(folder / "val.csv"), pd.read_csv(folder / "test.csv")


def test_metrics_file_is_the_returned_nested_dict(scores_root, evaluated):
    saved = json.loads((scores_root / "metrics" / "evaluate.json").read_text())
    assert saved == json.loads(json.dumps(evaluated)) and set(saved) == {"facenet", "vggface", "alexnet", "recommended"}
    assert saved["facenet"]["classifier"] == "mlp" and saved["vggface"]["classifier"] == "cosine"
    assert "classifier" not in saved["alexnet"]  # no classifier.json beside its scores


def test_recommended_is_the_best_val_auc_and_never_looks_at_test(scores_root, evaluated):
    from sklearn.metrics import roc_auc_score

    val_auc = {}
    for backbone in ("facenet", "vggface", "alexnet"):
        val, _ = read(scores_root, backbone)
        val_auc[backbone] = roc_auc_score(val["label"], val["score"])
        assert evaluated[backbone]["val_roc_auc"] == pytest.approx(val_auc[backbone])
    best = max(val_auc, key=val_auc.get)
    # Oracle: the first backbone (params order) within the tolerance of the best val AUC.
    chosen = next(b for b in ("facenet", "vggface", "alexnet") if val_auc[b] >= val_auc[best] - CONFIG.recommend_tolerance)
    assert evaluated["recommended"]["backbone"] == chosen
    assert evaluated["recommended"]["model_folder"] == f"models/{chosen}"
    assert evaluated["recommended"]["val_roc_auc"] == pytest.approx(val_auc[chosen])
    assert evaluated["recommended"]["best_val_roc_auc"] == pytest.approx(val_auc[best])
    report = (scores_root / "metrics" / "report.md").read_text()
    assert f"Recommended model: **{chosen}**" in report


def test_recommend_prefers_the_earlier_backbone_within_the_tolerance():
    from maskface.evaluation.evaluate import recommend

    results = {"edgeface": {"val_roc_auc": 0.6961}, "facenet": {"val_roc_auc": 0.6965}, "alexnet": {"val_roc_auc": 0.60}}
    assert recommend(results, 0.01)["backbone"] == "edgeface"
    assert recommend(results, 0.0)["backbone"] == "facenet"
    assert recommend({"a": {"val_roc_auc": None}}) is None


def test_threshold_is_the_model_folders_and_counts_match_sklearn(scores_root, evaluated):
    val, test = read(scores_root, "facenet")
    block = evaluated["facenet"]
    # The threshold classify wrote into classifier.json: what the model folder decides with.
    threshold = json.loads((scores_root / "scores" / "facenet" / CLASSIFIER_META_FILE).read_text())["threshold"]
    assert block["threshold"] == threshold != choose_threshold(val["score"], val["label"])
    assert block["validation"]["accuracy"] == pytest.approx(np.mean((val["score"] >= threshold) == val["label"]))
    tn, fp, fn, tp = confusion_matrix(test["label"], test["score"] >= threshold).ravel()
    assert (block["tp"], block["fp"], block["tn"], block["fn"]) == (tp, fp, tn, fn)
    assert block["accuracy"] == pytest.approx((tp + tn) / len(test))
    assert block["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert block["roc_auc"] == pytest.approx(roc_auc_score(test["label"], test["score"]))


def test_score_folders_without_a_threshold_get_the_val_optimal_one(scores_root, evaluated):
    val, _ = read(scores_root, "alexnet")  # no classifier.json beside its scores
    assert evaluated["alexnet"]["threshold"] == choose_threshold(val["score"], val["label"])


def test_ten_fold_thresholds_never_see_their_own_fold(scores_root, evaluated):
    _, test = read(scores_root, "facenet")
    kfold = evaluated["facenet"]["kfold"]
    assert kfold["fold_ids"] == list(range(10))
    for fold, threshold, accuracy in zip(kfold["fold_ids"], kfold["thresholds"], kfold["per_fold"]):
        others = test[test["fold"] != fold]
        own = test[test["fold"] == fold]
        assert threshold == choose_threshold(others["score"], others["label"])
        assert accuracy == pytest.approx(np.mean((own["score"] >= threshold) == own["label"]))
    assert kfold["mean"] == pytest.approx(np.mean(kfold["per_fold"]))


def test_every_pair_type_and_overall_carry_the_full_block(scores_root, evaluated):
    _, test = read(scores_root, "facenet")
    block = evaluated["facenet"]
    assert set(block["by_pair_type"]) == set(PAIR_TYPES)
    for pair_type, sub in block["by_pair_type"].items():
        subset = test[test["pair_type"] == pair_type]
        assert sub["n_pairs"] == len(subset)
        assert sub["roc_auc"] == pytest.approx(roc_auc_score(subset["label"], subset["score"]))
        assert {"kfold", "bootstrap", "eer", "tar_at_far_1e-02", "tar_at_far_1e-03"} <= set(sub)
    for name in ("accuracy", "roc_auc"):
        interval = block["bootstrap"][name]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["n_used"] + interval["n_skipped"] == CONFIG.bootstrap
    tar = block["tar_at_far_1e-03"]
    assert tar["n_impostors"] == int((test["label"] == 0).sum()) and tar["achievable"] is False


def test_cosine_baseline_beside_learned_classifiers_only(scores_root, evaluated):
    _, test = read(scores_root, "facenet")
    baseline = evaluated["facenet"]["cosine_baseline"]
    assert baseline["roc_auc"] == pytest.approx(roc_auc_score(test["label"], test["cosine"]))
    assert "cosine_baseline" not in evaluated["vggface"]


def test_perfect_and_random_scorers_reach_the_extremes(evaluated):
    perfect, random = evaluated["vggface"], evaluated["alexnet"]
    assert perfect["accuracy"] == 1.0 and perfect["roc_auc"] == 1.0 and perfect["eer"] == 0.0
    assert perfect["kfold"]["mean"] == 1.0 and perfect["tar_at_far_1e-02"]["tar"] == 1.0
    assert abs(random["roc_auc"] - 0.5) < 0.07 and abs(random["accuracy"] - 0.5) < 0.07
    assert abs(random["eer"] - 0.5) < 0.07


def test_identification_metrics_from_ranks(evaluated):
    ident = evaluated["facenet"]["identification"]
    ranks = np.array([1, 1, 2, 1, 7, 1, 3, 0, 1, 1])
    assert ident["rank_1"] == pytest.approx(np.mean(ranks == 1))
    assert ident["rank_5"] == pytest.approx(np.mean((ranks >= 1) & (ranks <= 5)))
    assert ident["by_query_type"]["masked"]["n_queries"] == 5
    assert ident["cmc"][0] == ident["rank_1"] and ident["cmc"][4] == ident["rank_5"]
    assert "identification" not in evaluated["alexnet"]


def test_plot_files_for_every_backbone(scores_root, evaluated):
    plots = scores_root / "plots"
    for backbone in ("facenet", "vggface", "alexnet"):
        for kind, ext in PLOT_KINDS.items():
            assert (plots / kind / f"{backbone}.{ext}").is_file(), (kind, backbone)
    _, test = read(scores_root, "facenet")
    confusion = pd.read_csv(plots / "confusion" / "facenet.csv")
    assert ((confusion["actual"] == "same") & (confusion["predicted"] == "same")).sum() == evaluated["facenet"]["tp"]
    assert list(pd.read_csv(plots / "roc" / "facenet.csv").columns) == ["fpr", "tpr"]
    assert list(pd.read_csv(plots / "det" / "facenet.csv").columns) == ["fpr", "fnr"]
    histogram = pd.read_csv(plots / "scores" / "facenet.csv")
    assert len(histogram) == CONFIG.histogram_bins
    assert histogram["genuine"].sum() == pytest.approx(1.0) and histogram["impostor"].sum() == pytest.approx(1.0)


def test_report_holds_every_backbone_with_intervals_and_links(scores_root, evaluated):
    text = (scores_root / "metrics" / "report.md").read_text()
    block = evaluated["facenet"]
    accuracy = block["bootstrap"]["accuracy"]
    assert f"{block['accuracy']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}]" in text
    for backbone in ("facenet", "vggface", "alexnet"):
        assert f"| {backbone} |" in text
    assert "casia-webface" in text and "none (from scratch)" not in text.split("| facenet |")[1].split("\n")[0]
    assert "top 50 %" in text
    assert "(../plots/roc/facenet.csv)" in text and "(../plots/curves/facenet.png)" in text
    assert "## Closed-set identification" in text


def test_without_the_worst_pairs_sheet_the_folder_still_exists(scores_root, tmp_path):
    val, test = read(scores_root, "alexnet")
    folder = tmp_path / "scores" / "alexnet"
    folder.mkdir(parents=True)
    val.to_csv(folder / "val.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    config = EvaluateConfig(bootstrap=0, worst_pairs=0)
    results = evaluate(["alexnet"], tmp_path / "scores", tmp_path / "m.json", tmp_path / "plots", config)
    assert (tmp_path / "plots" / "worst_pairs").is_dir() and not (tmp_path / "plots" / "worst_pairs" / "alexnet.png").exists()
    assert "bootstrap" not in results["alexnet"]


def test_single_class_test_set_reports_what_is_defined(scores_root):
    val, test = read(scores_root, "facenet")
    genuine_only = test[test["label"] == 1]
    report, tables = evaluate_backbone(val, genuine_only, EvaluateConfig(bootstrap=0))
    assert report["roc_auc"] is None and report["fp"] == 0 and "note" in report
    assert tables["roc"].empty and list(tables["det"].columns) == ["fpr", "fnr"]
    json.dumps(report, allow_nan=False)


def test_stage_writes_metrics_plots_and_report(scores_root, tmp_path, repo_root, monkeypatch):
    params = {
        "backbones": {"vggface": {"input_size": 112}, "facenet": {"weights": "casia-webface", "epochs": 1}},
        "crop": {"mode": "none"},
        "evaluate": {"bootstrap": 20, "worst_pairs": 2},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    data = {"images": {"total": 883, "masked": 376, "unmasked": 507}, "identities": 103, "rejected": 0,
            "split": {"train": {"identities": 72, "images": 610}, "val": {"identities": 10, "images": 90}, "test": {"identities": 21, "images": 183}},
            "pairs": {"val": {"total": 300, "genuine": 150}, "test": {"total": 600, "genuine": 300}}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "preview").mkdir()
    (tmp_path / "preview" / "facenet.png").write_bytes(b"")  # stands in for the crop stage's preview
    argv = [
        "--params", str(tmp_path / "params.yaml"), "--scores", str(scores_root / "scores"),
        "--metrics", str(tmp_path / "evaluate.json"), "--plots", str(tmp_path / "plots"),
        "--report", str(tmp_path / "report.md"), "--data-metrics", str(tmp_path / "data.json"),
        "--crop-previews", str(tmp_path / "preview"),
    ]
    # In-process: a subprocess would pay the torch import again.
    monkeypatch.syspath_prepend(str(repo_root / "stages"))  # the stages import their _common helper
    spec = importlib.util.spec_from_file_location("stage_evaluate", repo_root / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(argv)
    metrics = json.loads((tmp_path / "evaluate.json").read_text())
    assert list(metrics) == ["facenet", "recommended", "vggface"]  # the params' backbones and the choice, keys sorted
    report = (tmp_path / "report.md").read_text()
    assert "| test | 21 | 183 | 600 | 300 |" in report and "883 (376 masked, 507 unmasked) of 103 identities" in report
    assert "none (whole face)" in report
    assert "[crop preview](preview/facenet.png)" in report and "preview/vggface.png" not in report
    assert (tmp_path / "plots" / "worst_pairs" / "vggface.png").is_file()
