"""DVC stage `evaluate`: verification (and identification) metrics, DVC plots and metrics/report.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import CropConfig, EvaluateConfig, backbone_settings, load_params, section
from maskface.evaluation.evaluate import evaluate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--scores", type=Path, required=True, help="folder of <backbone>/{val,test}.csv")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--report", type=Path, default=None, help="markdown report to write (e.g. metrics/report.md)")
    parser.add_argument("--data-metrics", type=Path, default=None, help="the split stage's metrics/data.json")
    parser.add_argument("--train-live", type=Path, default=None, help="folder of <backbone>/ DVCLive runs, linked from the report")
    parser.add_argument("--crop-previews", type=Path, default=None, help="folder of <backbone>.png crop previews, linked from the report")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    backbones = backbone_settings(params)
    crop = section(params, CropConfig, "crop")
    links = {}
    for name in backbones:
        links[name] = {}
        if args.train_live is not None:
            links[name]["training curves (DVCLive)"] = args.train_live / name / "plots" / "metrics"
        if args.crop_previews is not None:
            links[name]["crop preview"] = args.crop_previews / f"{name}.png"
    evaluate(
        list(backbones),
        args.scores,
        args.metrics,
        args.plots,
        section(params, EvaluateConfig, "evaluate"),
        report_path=args.report,
        data_metrics_path=args.data_metrics,
        settings={name: config.model_dump() for name, config in backbones.items()},
        crop={"mode": crop.mode, "keep_ratio": crop.keep_ratio},
        links=links,
    )


if __name__ == "__main__":
    _common.run(main)
