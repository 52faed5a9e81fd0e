"""The markdown report: number formats, tables built from real metric dicts, links."""

from __future__ import annotations

import numpy as np

from maskface.evaluation.metrics import identification_report, verification_report
from maskface.evaluation.report import kfold_cell, number, render_report, tar_cell, with_interval, write_report

PAIR_TYPES = np.array(["masked-unmasked", "masked-masked", "unmasked-unmasked"])


def test_number_and_interval_formats():
    assert number(0.81234) == "0.812" and number(None) == "n/a" and number(7) == "7"
    assert with_interval(0.8123, {"low": 0.7812, "high": 0.8401}) == "0.812 [0.781, 0.840]"
    assert with_interval(0.8123, {"low": None, "high": None}) == "0.812"
    assert with_interval(0.8123) == "0.812"
    assert kfold_cell({"mean": 0.9, "std": 0.0312}) == "0.900 ± 0.031" and kfold_cell(None) == "n/a"


def test_tar_cell_gives_support_and_flags_unreachable_far():
    assert tar_cell({"tar": 0.5, "n_impostors": 400, "achievable": True}) == "0.500 (n=400)"
    assert tar_cell({"tar": 0.25, "n_impostors": 300, "achievable": False}) == "0.250† (n=300)"
    assert tar_cell(None) == "n/a"


def fake_results(seed: int = 0, classifier: str = "mlp") -> dict:
    rng = np.random.default_rng(seed)
    labels = (rng.random(600) < 0.5).astype(int)
    scores = rng.normal(labels * 1.5, 1.0)
    val_labels = (rng.random(300) < 0.5).astype(int)
    val_scores = rng.normal(val_labels * 1.5, 1.0)
    types = PAIR_TYPES[np.arange(600) % 3]
    folds = np.arange(600) % 10
    groups = rng.integers(0, 50, 600)
    block = verification_report(val_scores, val_labels, scores, labels, types, folds, groups, bootstrap=30)
    block["classifier"] = classifier
    block["cosine_baseline"] = verification_report(val_scores, val_labels, scores + rng.normal(0, 1, 600), labels, types, folds, groups, bootstrap=30)
    return block


def test_report_tables_hold_every_backbone_pair_type_and_baseline(tmp_path):
    results = {"facenet": fake_results(0), "alexnet": fake_results(1, "knn")}
    plots_dir = tmp_path / "plots"
    (plots_dir / "roc").mkdir(parents=True)
    (plots_dir / "roc" / "facenet.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    plots = {
        "facenet": {"roc": plots_dir / "roc" / "facenet.csv", "det": plots_dir / "det" / "facenet.csv"},
        "alexnet": {"roc": plots_dir / "roc" / "alexnet.csv"},
    }
    data = {
        "images": {"total": 100, "masked": 40, "unmasked": 60},
        "identities": 10,
        "rejected": 2,
        "rejected_by_reason_nonzero": {"too_small": 2},
        "split": {"train": {"identities": 6, "images": 60}, "val": {"identities": 2, "images": 20}, "test": {"identities": 2, "images": 20}},
        "pairs": {"val": {"total": 300, "genuine": 150}, "test": {"total": 600, "genuine": 300}},
    }
    text = write_report(
        tmp_path / "metrics" / "report.md",
        results,
        data=data,
        settings={"facenet": {"weights": "casia-webface", "input_size": 160, "embedding_size": 128, "epochs": 2},
                  "alexnet": {"weights": "none", "input_size": None, "embedding_size": 128, "epochs": 6}},
        crop={"mode": "none", "keep_ratio": 0.5},
        plots=plots,
        bootstrap=30,
    )
    assert (tmp_path / "metrics" / "report.md").read_text() == text
    block = results["facenet"]
    interval = block["bootstrap"]["roc_auc"]
    assert f"{block['roc_auc']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]" in text
    baseline = block["cosine_baseline"]
    assert f"| facenet | cosine (baseline) | {baseline['accuracy']:.3f} [" in text
    # One row per pair type and scorer in each backbone's section.
    facenet_section = text.split("### facenet")[1].split("###")[0]
    for pair_type in PAIR_TYPES:
        sub = block["by_pair_type"][pair_type]
        assert f"| {pair_type} | mlp | {sub['n_pairs']} ({sub['n_genuine']}) |" in facenet_section
        assert f"| {pair_type} | cosine (baseline) |" in facenet_section
    assert "| alexnet | none (from scratch) | default | 128 | 6 | knn |" in text
    assert "| facenet | casia-webface | 160 | 128 | 2 | mlp |" in text
    assert "100 (40 masked, 60 unmasked) of 10 identities; 2 files rejected (too_small: 2)" in text
    assert "| val | 2 | 20 | 300 | 150 |" in text
    # TAR@1e-3 with ~300 impostors cannot be reached (FAR < 1/n): flagged.
    tar = block["tar_at_far_1e-03"]
    assert not tar["achievable"] and f"{tar['tar']:.3f}† (n={tar['n_impostors']})" in text
    # Links are relative to the report and only to files that exist.
    assert "[ROC (CSV)](../plots/roc/facenet.csv)" in text
    assert "det/facenet.csv" not in text and "alexnet.csv" not in text
    assert "## Closed-set identification" not in text


def test_identification_section_only_with_identification(tmp_path):
    results = {"facenet": fake_results(2)}
    assert "## Closed-set identification" not in render_report(results, report_dir=tmp_path)
    ranks = np.array([1, 2, 1, 1, 6, 1])
    results["facenet"]["identification"] = identification_report(
        ranks, np.array(list("aabbcc")), np.array(["masked", "unmasked"] * 3), bootstrap=20
    )
    text = render_report(results, report_dir=tmp_path)
    assert "## Closed-set identification" in text
    ident = results["facenet"]["identification"]
    masked, unmasked = ident["by_query_type"]["masked"]["rank_1"], ident["by_query_type"]["unmasked"]["rank_1"]
    assert f"| facenet | mlp | 6 | {ident['rank_1']:.3f} [" in text
    assert text.rstrip().endswith(f"| {masked:.3f} | {unmasked:.3f} |")


def test_single_class_pair_type_is_explained_not_dropped(tmp_path):
    rng = np.random.default_rng(3)
    labels = (np.arange(300) % 2).astype(int)
    scores = rng.normal(labels, 1.0)
    types = np.where(np.arange(300) < 20, "genuine-only", "masked-unmasked")
    labels[:20] = 1
    block = verification_report(scores, labels, scores, labels, types)
    text = render_report({"facenet": {**block, "classifier": "cosine"}}, report_dir=tmp_path)
    assert "| genuine-only | cosine | 20 (20) | n/a: skipped" in text
