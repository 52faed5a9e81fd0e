"""DVC stage `evaluate`: verification metrics per backbone and DVC plot data."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import EvaluateConfig, backbone_configs, load_params, section
from maskface.evaluate import evaluate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--scores", type=Path, required=True, help="folder of <backbone>/{val,test}.csv")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    evaluate(list(backbone_configs(params)), args.scores, args.metrics, args.plots, section(params, EvaluateConfig, "evaluate"))


if __name__ == "__main__":
    _common.run(main)
