"""DVC stage `scan`: list the dataset's files with their SHA-256, for the stages that read them."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import load_params, section
from maskface.datasets import DataConfig
from maskface.scan import write_scan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="scan table (CSV): path, size, sha256, problem")
    parser.add_argument("--cache", type=Path, default=None, help="hash cache by path, size and mtime (CSV; not a DVC output)")
    args = parser.parse_args(argv)
    write_scan(section(load_params(args.params), DataConfig, "data"), args.out, args.cache)


if __name__ == "__main__":
    _common.run(main)
