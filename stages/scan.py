"""DVC stage `scan`: list the dataset's files and each backbone's pretrained weight file with
their SHA-256, for the stages that read them (both live outside DVC's view)."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common

from maskface.config import load_params, section
from maskface.data.datasets import DataConfig
from maskface.data.scan import write_scan, write_weights_records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="scan table (CSV): path, size, sha256, problem")
    parser.add_argument("--cache", type=Path, default=None, help="hash cache by path, size and mtime (CSV; not a DVC output)")
    parser.add_argument("--weights-out", type=Path, default=None, help="folder for <backbone>.json: the pretrained file each starts from")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    write_scan(section(params, DataConfig, "data"), args.out, args.cache)
    if args.weights_out is not None:
        write_weights_records(params, args.weights_out)


if __name__ == "__main__":
    _common.run(main)
