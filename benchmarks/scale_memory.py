"""Figure 4: peak memory (RSS) of split, crop and embed over 20,000 vs 2,000 synthetic images.

Each stage runs as its own process (as DVC runs it) in a scratch copy of the project,
and its peak RSS is read from the kernel (ru_maxrss of the child). Memory must stay near
flat as the data grows tenfold: the split streams, crop writes through a memory map,
embed reads one through it.

    .venv/bin/python benchmarks/scale_memory.py --small 2000 --large 20000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import REPO_ROOT, machine


_PEAK_OF_CHILD = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.exit(done.stderr[-3000:]) if done.returncode else None; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def stage(project: Path, *args: str) -> tuple[float, float]:
    """Run one stage script; its own peak RSS (MiB) and wall time (s).

    A small parent process runs the stage and reports ru_maxrss of its only child, so
    each figure belongs to that stage alone.
    """
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, sys.executable, *args], cwd=project, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return int(result.stdout.strip()) / 1024, time.perf_counter() - start


def measure(images: int) -> None:
    identities = max(30, images // 10)
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        shutil.copytree(REPO_ROOT / "stages", project / "stages")
        params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        params["data"]["synthetic"].update(identities=identities, images_per_identity=images // identities, min_size=112, max_size=128)
        params["backbones"] = {"alexnet": {"weights": "none", "input_size": 64}}
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        (project / "data" / "external").mkdir(parents=True)
        results = {}
        results["split"] = stage(project, "stages/split.py", "--synthetic-dir", "data/synthetic", "--manifest", "data/manifest.csv",
                                 "--rejected", "data/rejected.csv", "--pairs-dir", "data/pairs", "--data-metrics", "metrics/data.json",
                                 "--landmarks", "data/landmarks.csv", "--filtered-preview", "plots/filtered.png")
        results["crop"] = stage(project, "stages/crop.py", "--backbone", "alexnet", "--manifest", "data/manifest.csv", "--landmarks", "data/landmarks.csv",
                                "--out", "data/crops/alexnet", "--preview", "plots/preview.png")
        # Embedding needs a model folder: an untrained one costs the same memory as a trained one.
        subprocess.run([sys.executable, "-c", (
            "from pathlib import Path; from maskface.backbones import create_model; from maskface.embed import save_model;"
            "save_model(create_model('alexnet', input_size=64), Path('models/alexnet'), {})")], cwd=project, check=True)
        results["embed"] = stage(project, "stages/embed.py", "--crops", "data/crops/alexnet", "--model", "models/alexnet",
                                 "--out", "data/embeddings/alexnet")
        for name, (peak, elapsed) in results.items():
            print(f"{images:6d} images  {name:5s}: peak RSS {peak:7.0f} MiB  ({elapsed:6.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for images in (args.small, args.large):
        measure(images)


if __name__ == "__main__":
    main()
