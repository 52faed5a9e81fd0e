"""Figure 7: every pipeline stage at growing dataset sizes: time, images/s, peak memory, growth.

Each size's synthetic faces are rendered once into ``--work`` and reused (rendering is not a
stage cost). A scratch copy of the project reads them through ``data.source: manifest`` with
the renderer's landmarks (``crop.landmarks: ground_truth``: MTCNN's cost per image is
measured separately, see the split-stage detection figures), and runs each stage's own
command from dvc.yaml, one process per stage as ``dvc repro`` does, with one small backbone
(AlexNet at 64 px from scratch, one epoch: the pipeline's mechanics, not the network's FLOPs,
are what must scale). Per stage: wall time, images/s, peak RSS of that process; between two
sizes, the growth exponent ``log(t2 / t1) / log(n2 / n1)`` (1 = linear) and the ratio of
peak memory. The full RMFRD (92,671 images) and SMFRD (~500,000) times are extrapolated
from the largest two sizes with that exponent, and said to be.

    .venv/bin/python benchmarks/scale.py --sizes 3000 30000 100000 --work /tmp/maskface-scale
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from _common import REPO_ROOT, machine

BACKBONE = "alexnet"
FULL_SIZES = {"RMFRD": 92_671, "SMFRD": 500_000}
_PEAK_OF_CHILD = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.exit(done.stderr[-3000:]) if done.returncode else None; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def rendered(work: Path, images: int) -> Path:
    """The manifest of ``images`` synthetic faces (10 per identity), rendered on first use."""
    from maskface.data.datasets import SyntheticConfig
    from maskface.data.synthetic import generate_dataset

    folder = work / f"faces-{images}"
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        truth = generate_dataset(folder / "images", SyntheticConfig(identities=images // 10, images_per_identity=10, min_size=112, max_size=128))
        table = pd.DataFrame({
            "path": [str(folder / "images" / p) for p in truth["path"]],
            "identity": truth["identity"],
            "masked": truth["masked"],
        })
        table.to_csv(manifest, index=False)
    return manifest


def stage_commands() -> list[tuple[str, str]]:
    """(stage name, command) in pipeline order, foreach stages expanded for BACKBONE."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    commands = []
    for name, body in stages.items():
        if "foreach" in body:
            commands.append((name, body["do"]["cmd"].replace("${key}", BACKBONE)))
        else:
            commands.append((name, body["cmd"]))
    return commands


def run_stage(project: Path, command: str) -> tuple[float, float]:
    """Run one stage command; its wall time (s) and its own peak RSS (MiB)."""
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = sys.executable
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, *args], cwd=project, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{command} failed:\n{result.stderr}")
    return time.perf_counter() - start, int(result.stdout.strip()) / 1024


def measure(work: Path, images: int) -> list[dict]:
    manifest = rendered(work, images)
    project = work / f"project-{images}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "stages", project / "stages")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(source="manifest", root=str(manifest))
    params["crop"].update(landmarks="ground_truth", preview_images=4)
    params["backbones"] = {BACKBONE: {"weights": "none", "input_size": 64, "embedding_size": 128, "epochs": 1, "batch_size": 64}}
    params["finetune"].update(device="cpu", mask_augment_p=0.0)
    params["embed"].update(device="cpu")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows = []
    for name, command in stage_commands():
        seconds, peak = run_stage(project, command)
        rows.append({"images": images, "stage": name, "seconds": seconds, "images_per_s": images / seconds, "peak_rss_mib": peak})
        print(f"{images:7d} images  {name:9s} {seconds:8.1f} s  {images / seconds:8.0f} img/s  peak RSS {peak:6.0f} MiB", flush=True)
    shutil.rmtree(project, ignore_errors=True)
    return rows


def growth(table: pd.DataFrame) -> pd.DataFrame:
    """Per stage, between consecutive sizes: time exponent, time-per-image and memory ratios."""
    rows = []
    for stage, group in table.groupby("stage", sort=False):
        group = group.sort_values("images")
        for (_, small), (_, large) in zip(group.iloc[:-1].iterrows(), group.iloc[1:].iterrows()):
            scale = large["images"] / small["images"]
            rows.append({
                "stage": stage,
                "sizes": f"{small['images']} -> {large['images']}",
                "time_exponent": math.log(large["seconds"] / small["seconds"]) / math.log(scale),
                "time_per_image_ratio": (large["seconds"] / large["images"]) / (small["seconds"] / small["images"]),
                "peak_rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
            })
    return pd.DataFrame(rows)


def extrapolate(table: pd.DataFrame, exponents: pd.DataFrame) -> pd.DataFrame:
    largest = table[table["images"] == table["images"].max()].set_index("stage")
    last = exponents.groupby("stage", sort=False).last()
    rows = []
    for stage, row in largest.iterrows():
        exponent = max(1.0, float(last.at[stage, "time_exponent"])) if stage in last.index else 1.0
        rows.append({"stage": stage, **{
            f"{name} (extrapolated, s)": row["seconds"] * (size / row["images"]) ** exponent for name, size in FULL_SIZES.items()
        }})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000, 100000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskface-scale"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    table = pd.DataFrame([row for images in sorted(args.sizes) for row in measure(args.work, images)])
    table.to_csv(args.work / "scale.csv", index=False)
    exponents = growth(table)
    print(exponents.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if len(args.sizes) > 1:
        print(extrapolate(table, exponents).to_string(index=False, float_format=lambda x: f"{x:.0f}"))


if __name__ == "__main__":
    main()
