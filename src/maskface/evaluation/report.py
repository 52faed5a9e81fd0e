"""``metrics/report.md``: the evaluation in one page that reads on its own.

Built from the evaluate stage's metrics (see :mod:`maskface.evaluation.evaluate`), the split
stage's data counts (``metrics/data.json``) and the plot paths; pure formatting, no
metric is computed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from maskface.evaluation.metrics import far_key

logger = logging.getLogger(__name__)

PAIR_TYPE_ORDER = ("masked-unmasked", "masked-masked", "unmasked-unmasked")
PLOT_LABELS = {
    "confusion": "confusion matrix (CSV)",
    "roc": "ROC (CSV)",
    "det": "DET (CSV)",
    "scores": "score histogram (CSV)",
    "curves": "ROC / DET / histograms (PNG)",
    "worst_pairs": "worst false accepts and rejects (PNG)",
}
NOT_ACHIEVABLE = "†"


def number(value: Any, digits: int = 3) -> str:
    """``0.8123 -> "0.812"``; None (undefined) -> ``"n/a"``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def with_interval(value: Any, interval: Optional[Mapping] = None, digits: int = 3) -> str:
    """``"0.812 [0.781, 0.840]"``; just the value when there is no usable interval."""
    text = number(value, digits)
    if interval and interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{number(interval['low'], digits)}, {number(interval['high'], digits)}]"
    return text


def tar_cell(entry: Optional[Mapping]) -> str:
    """TAR with the number of impostor pairs behind it; † when FAR < 1 / n_impostors."""
    if not entry:
        return "n/a"
    mark = "" if entry.get("achievable", True) else NOT_ACHIEVABLE
    return f"{number(entry.get('tar'))}{mark} (n={entry.get('n_impostors', '?')})"


def kfold_cell(kfold: Optional[Mapping]) -> str:
    if not kfold:
        return "n/a"
    return f"{number(kfold.get('mean'))} ± {number(kfold.get('std'))}"


def _interval(block: Mapping, name: str) -> Optional[Mapping]:
    return (block.get("bootstrap") or {}).get(name)


def _far_label(far: float) -> str:
    return f"TAR @ FAR {far:g}"


def _fars_of(results: Mapping) -> list[float]:
    """The FAR levels present in the metrics, from their keys (``tar_at_far_1e-02``)."""
    fars: set[float] = set()
    for block in results.values():
        for key, value in block.items():
            if key.startswith("tar_at_far_") and isinstance(value, Mapping) and "far" in value:
                fars.add(float(value["far"]))
    return sorted(fars, reverse=True)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _verification_cells(block: Mapping, fars: list[float]) -> list[str]:
    if block.get("roc_auc") is None and "note" in block:
        return [f"n/a ({block['note']})"] + [""] * (5 + len(fars))
    return [
        with_interval(block.get("accuracy"), _interval(block, "accuracy")),
        kfold_cell(block.get("kfold")),
        number(block.get("f1")),
        with_interval(block.get("roc_auc"), _interval(block, "roc_auc")),
        number(block.get("eer")),
        *(tar_cell(block.get(far_key(far))) for far in fars),
    ]


def _pair_types(block: Mapping) -> list[str]:
    present = list((block.get("by_pair_type") or {}).keys())
    return [t for t in PAIR_TYPE_ORDER if t in present] + sorted(t for t in present if t not in PAIR_TYPE_ORDER)


def _link(target: Path, report_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), report_dir.resolve())).as_posix()


def _data_section(data: Mapping) -> list[str]:
    lines = ["## Data", ""]
    images = data.get("images") or {}
    if images:
        lines.append(
            f"- images: {images.get('total', '?')} ({images.get('masked', '?')} masked, "
            f"{images.get('unmasked', '?')} unmasked) of {data.get('identities', '?')} identities; "
            f"{data.get('rejected', 0)} file{'' if data.get('rejected', 0) == 1 else 's'} rejected"
            + (f" ({', '.join(f'{k}: {v}' for k, v in data['rejected_by_reason_nonzero'].items())})" if data.get("rejected_by_reason_nonzero") else "")
        )
    noise = data.get("label_noise") or {}
    if noise.get("images"):
        lines.append(f"- label noise: {noise['images']} images appear under two identities; kept out of every pair")
    sources = data.get("by_source") or {}
    if sources:
        lines.append("- sources: " + "; ".join(f"{label} ({info.get('kind', label)})" for label, info in sources.items()))
    split = data.get("split") or {}
    pairs = data.get("pairs") or {}
    if split:
        lines += ["", *_table(
            ["split", "identities", "images", "pairs", "genuine pairs"],
            [
                [
                    name,
                    str(split[name].get("identities", "")),
                    str(split[name].get("images", "")),
                    str((pairs.get(name) or {}).get("total", "–")),
                    str((pairs.get(name) or {}).get("genuine", "–")),
                ]
                for name in ("train", "val", "test")
                if name in split
            ],
        )]
    lines.append("")
    return lines


def render_report(
    results: Mapping[str, Mapping],
    *,
    report_dir: Path,
    data: Optional[Mapping] = None,
    settings: Optional[Mapping[str, Mapping]] = None,
    crop: Optional[Mapping] = None,
    plots: Optional[Mapping[str, Mapping[str, Path]]] = None,
    bootstrap: int = 0,
    recommended: Optional[Mapping] = None,
) -> str:
    """The markdown text of the report.

    Args:
        results: the evaluate metrics, nested by backbone.
        report_dir: the folder the report will live in (links are relative to it).
        data: ``metrics/data.json`` of the split stage.
        settings: per backbone, e.g. {"weights": ..., "input_size": ..., "epochs": ...}.
        crop: the crop settings ({"mode", "keep_ratio"}).
        plots: per backbone, {kind: path}; a path that does not exist is left out.
        bootstrap: resamples behind the intervals (0: none).
        recommended: :func:`maskface.evaluation.evaluate.recommend`'s choice, stated under Setup.
    """
    fars = _fars_of(results)
    lines = _introduction(bootstrap)
    lines += _setup_section(results, settings or {}, crop, recommended)
    if data:
        lines += _data_section(data)
    lines += _verification_section(results, fars)
    lines += _pair_type_section(results, fars)
    lines += _confusion_section(results)
    lines += _identification_section(results)
    if plots:
        lines += _plots_section(plots, report_dir)
    return "\n".join(lines).rstrip() + "\n"


def _introduction(bootstrap: int) -> list[str]:
    """The title and how every number below was measured."""
    return [
        "# Evaluation report",
        "",
        "_Written by the `evaluate` stage on every run; do not edit by hand._",
        "",
        "Every number is measured on the **test** pairs. A pair is accepted as the same person when "
        "its score reaches the threshold chosen on the **validation** pairs (accuracy-maximising), "
        "never on test. The k-fold accuracy is the LFW protocol: the test people are dealt into "
        "person-disjoint folds (10, fewer below 50 people: five at least in each; none below 10) and "
        "each fold is scored at a threshold picked on the others. "
        + (
            f"Values in brackets are 95 % bootstrap intervals ({bootstrap} resamples of the test "
            "identities; a pair counts once per draw of its identity, an impostor pair once per draw of "
            "each of its two). "
            if bootstrap
            else "No bootstrap intervals (evaluate.bootstrap is 0). "
        )
        + f"TAR @ FAR gives the number of impostor pairs behind it; {NOT_ACHIEVABLE} marks a FAR below "
        "1 / that number, where the figure is really TAR at zero false accepts.",
        "",
    ]


def _crop_text(crop: Optional[Mapping]) -> str:
    if crop and crop.get("mode") == "ratio":
        return f"ratio: the top {100 * float(crop.get('keep_ratio', 0.5)):.0f} % of the face height, resized to square"
    if crop and crop.get("mode") in ("eyes", "mask", "nose"):
        return {
            "eyes": "eyes: everything above a line below the eyes, resized to square",
            "mask": "mask: the mask (or where one would be) blanked",
            "nose": "nose: everything below the nose line greyed, on every photo",
        }[crop["mode"]]
    return "none (whole face)"


def _started_text(block: Mapping, weights: Any) -> str:
    """What a backbone's trunk started from: the resolved weights file, from scratch, or the spec asked for."""
    started = block.get("started_from")
    if started:
        return f"{started['spec']} ({started['origin']}, sha256 {started['sha256'][:12]})"
    if "started_from" in block or weights in (None, "none"):
        # Known to be random (auto found no file), or asked to be.
        return "none (from scratch)"
    return str(weights)


def _setup_section(
    results: Mapping[str, Mapping], settings: Mapping[str, Mapping], crop: Optional[Mapping], recommended: Optional[Mapping]
) -> list[str]:
    """The crop, the recommended model, and per backbone its weights, sizes, classifier and threshold."""
    lines = ["## Setup", "", f"Crop: {_crop_text(crop)}.", ""]
    if recommended:
        lines.append(
            f"Recommended model: **{recommended['backbone']}** (`{recommended['model_folder']}`), chosen on the "
            f"validation pairs: ROC AUC {number(recommended['val_roc_auc'], 4)}, the first of `backbones` within "
            f"`evaluate.recommend_tolerance` of the best ({number(recommended['best_val_roc_auc'], 4)})."
        )
        lines.append("")
    rows = []
    for backbone, block in results.items():
        s = settings.get(backbone, {})
        rows.append(
            [
                backbone,
                _started_text(block, s.get("weights")),
                number(s.get("input_size")) if s.get("input_size") is not None else "default",
                number(s.get("embedding_size")) if s.get("embedding_size") is not None else "?",
                number(s.get("epochs")) if s.get("epochs") is not None else "?",
                str(block.get("classifier", "?")),
                number(block.get("threshold"), 4),
                with_interval((block.get("validation") or {}).get("accuracy")),
            ]
        )
    lines += _table(
        ["backbone", "started from", "input px", "embedding", "fine-tuning epochs", "classifier", "threshold", "val accuracy"],
        rows,
    )
    lines.append("")
    return lines


def _verification_header(fars: list[float]) -> list[str]:
    return ["backbone", "classifier", "accuracy", "k-fold accuracy", "F1", "ROC AUC", "EER", *map(_far_label, fars)]


def _verification_section(results: Mapping[str, Mapping], fars: list[float]) -> list[str]:
    """One row per backbone over all test pairs, and one for its cosine baseline when there is one."""
    rows = []
    for backbone, block in results.items():
        rows.append([backbone, str(block.get("classifier", "?")), *_verification_cells(block, fars)])
        baseline = block.get("cosine_baseline")
        if baseline:
            rows.append([backbone, "cosine (baseline)", *_verification_cells(baseline, fars)])
    return ["## Verification, all pair types", "", *_table(_verification_header(fars), rows), ""]


def _pair_type_section(results: Mapping[str, Mapping], fars: list[float]) -> list[str]:
    """Per backbone, one table of its pair types (masked-unmasked, ...), classifier and cosine baseline."""
    lines = ["## Verification by pair type", ""]
    for backbone, block in results.items():
        types = _pair_types(block)
        if not types:
            continue
        lines += [f"### {backbone}", ""]
        rows = []
        for scorer, source in ((str(block.get("classifier", "classifier")), block), ("cosine (baseline)", block.get("cosine_baseline"))):
            if not source:
                continue
            for pair_type in types:
                sub = source["by_pair_type"][pair_type]
                counts = f"{sub.get('n_pairs', '?')} ({sub.get('n_genuine', '?')})"
                if "note" in sub and sub.get("roc_auc") is None:
                    rows.append([pair_type, scorer, counts, f"n/a: {sub['note']}"] + [""] * (4 + len(fars)))
                else:
                    rows.append([pair_type, scorer, counts, *_verification_cells(sub, fars)])
        lines += _table(["pair type", "classifier", "pairs (genuine)", *_verification_header(fars)[2:]], rows)
        lines.append("")
    return lines


def _confusion_section(results: Mapping[str, Mapping]) -> list[str]:
    rows = [
        [
            backbone,
            str(block.get("classifier", "?")),
            number(block.get("threshold"), 4),
            *(number(block.get(k)) for k in ("tp", "fp", "tn", "fn", "precision", "recall")),
        ]
        for backbone, block in results.items()
    ]
    header = ["backbone", "classifier", "threshold", "tp", "fp", "tn", "fn", "precision", "recall"]
    return ["## Confusion counts at the validation threshold", "", *_table(header, rows), ""]


def _identification_section(results: Mapping[str, Mapping]) -> list[str]:
    """Rank-1 / rank-5 of the closed-set runs (split.by: image); nothing when there are none."""
    identified = {b: block["identification"] for b, block in results.items() if block.get("identification")}
    if not identified:
        return []
    rows = []
    for backbone, ident in identified.items():
        by_type = ident.get("by_query_type") or {}
        rows.append(
            [
                backbone,
                str(results[backbone].get("classifier", "?")),
                str(ident.get("n_queries")),
                with_interval(ident.get("rank_1"), _interval(ident, "rank_1")),
                with_interval(ident.get("rank_5"), _interval(ident, "rank_5")),
                number((by_type.get("masked") or {}).get("rank_1")),
                number((by_type.get("unmasked") or {}).get("rank_1")),
            ]
        )
    return [
        "## Closed-set identification",
        "",
        "Each test image is ranked against every training identity (split.by: image); "
        "ties count against the true identity.",
        "",
        *_table(["backbone", "classifier", "queries", "rank-1", "rank-5", "rank-1 masked", "rank-1 unmasked"], rows),
        "",
    ]


def _plots_section(plots: Mapping[str, Mapping[str, Path]], report_dir: Path) -> list[str]:
    """Per backbone, the curves image inline and links to every plot file that exists."""
    lines = [
        "## Plots",
        "",
        "`dvc plots show` renders the CSV data (confusion, ROC, DET, score histograms) and the "
        "images; `dvc plots diff <exp> <exp>` overlays experiments.",
        "",
    ]
    for backbone, paths in plots.items():
        existing = {kind: Path(path) for kind, path in paths.items() if Path(path).exists()}
        if not existing:
            continue
        lines += [f"### {backbone}", ""]
        if "curves" in existing:
            lines += [f"![{backbone}: ROC, DET and score histograms]({_link(existing['curves'], report_dir)})", ""]
        links = [f"[{PLOT_LABELS.get(kind, kind)}]({_link(path, report_dir)})" for kind, path in existing.items()]
        lines += ["- " + " · ".join(links), ""]
    return lines


def write_report(path: Path, results: Mapping[str, Mapping], **kwargs: Any) -> str:
    """Render (see :func:`render_report`) and write the report to ``path``; returns the text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(results, report_dir=path.parent, **kwargs)
    path.write_text(text, encoding="utf-8")
    logger.info("report written to %s", path)
    return text
