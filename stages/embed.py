"""DVC stage `embed@<backbone>`: L2-normalised embeddings of every cropped image."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import EmbedConfig, load_params, section
from maskface.inference.embed import embed_crops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--crops", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    config = section(load_params(args.params), EmbedConfig, "embed")
    embed_crops(args.crops, args.model, args.out, config.batch_size, config.device, config.precision, config.channels_last,
                config.flip, config.shift)


if __name__ == "__main__":
    _common.run(main)
