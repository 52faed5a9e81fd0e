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

``--stages split classify`` measures only those stages; the stages before the last of them
still run (unmeasured) where their outputs are missing. ``--keep`` keeps each size's
project (``--work``/project-N) so that a later run reuses those outputs instead.

    .venv/bin/python benchmarks/scale.py --sizes 3000 30000 100000 --work /tmp/maskface-scale
    .venv/bin/python benchmarks/scale.py --sizes 3000 30000 --stages split classify --keep
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

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


def stage_outputs() -> dict[str, list[str]]:
    """Each stage's declared outputs (dvc.yaml ``outs``), foreach stages expanded for BACKBONE."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    outputs = {}
    for name, body in stages.items():
        outs = body["do"].get("outs", []) if "foreach" in body else body.get("outs", [])
        paths = [next(iter(out)) if isinstance(out, dict) else out for out in outs]
        outputs[name] = [path.replace("${key}", BACKBONE) for path in paths]
    return outputs


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


def project_for(work: Path, images: int, keep: bool) -> Path:
    """The scratch project for ``images``: new, or with ``keep`` the kept one (its outputs
    reused) with the current stage scripts and params."""
    manifest = rendered(work, images)
    project = work / f"project-{images}"
    if not (keep and project.is_dir()):
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
    shutil.rmtree(project / "stages", ignore_errors=True)
    shutil.copytree(REPO_ROOT / "stages", project / "stages")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(source="manifest", root=str(manifest))
    params["crop"].update(landmarks="ground_truth", preview_images=4)
    params["backbones"] = {BACKBONE: {"weights": "none", "input_size": 64, "embedding_size": 128, "epochs": 1, "batch_size": 64}}
    params["finetune"].update(device="cpu", mask_augment_p=0.0)
    params["embed"].update(device="cpu")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def measure(work: Path, images: int, stages: Optional[Sequence[str]] = None, keep: bool = False) -> list[dict]:
    """Run the pipeline on ``images`` faces; a row per measured stage (``stages``, default all).

    A stage not measured runs only when a measured one comes after it and its outputs are
    missing (a new project, or a kept one that lacks them).
    """
    project = project_for(work, images, keep)
    commands = stage_commands()
    selected = [name for name, _ in commands] if stages is None else list(stages)
    last = max(index for index, (name, _) in enumerate(commands) if name in selected)
    outputs = stage_outputs()
    rows = []
    for index, (name, command) in enumerate(commands[: last + 1]):
        if name not in selected:
            if all((project / path).exists() for path in outputs[name]):
                continue
            seconds, _ = run_stage(project, command)
            print(f"{images:7d} images  {name:9s} {seconds:8.1f} s  (not measured: a later stage needs its outputs)", flush=True)
            continue
        seconds, peak = run_stage(project, command)
        rows.append({"images": images, "stage": name, "seconds": seconds, "images_per_s": images / seconds, "peak_rss_mib": peak})
        print(f"{images:7d} images  {name:9s} {seconds:8.1f} s  {images / seconds:8.0f} img/s  peak RSS {peak:6.0f} MiB", flush=True)
    if not keep:
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
    names = [name for name, _ in stage_commands()]
    parser.add_argument("--stages", nargs="+", choices=names, default=None, metavar="STAGE",
                        help=f"measure only these ({', '.join(names)}; default: all)")
    parser.add_argument("--keep", action="store_true", help="keep each size's project and reuse its outputs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    table = pd.DataFrame([row for images in sorted(args.sizes) for row in measure(args.work, images, args.stages, args.keep)])
    table.to_csv(args.work / "scale.csv", index=False)
    exponents = growth(table)
    print(exponents.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if len(args.sizes) > 1:
        print(extrapolate(table, exponents).to_string(index=False, float_format=lambda x: f"{x:.0f}"))


if __name__ == "__main__":
    main()
