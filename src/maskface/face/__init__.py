"""Face geometry: landmarks, alignment, crop modes and finding the mask."""

from collections.abc import Mapping
from typing import Any

# Crop modes that place their cut or region from the face's landmarks, aligned or not.
LANDMARK_MODES = ("eyes", "mask", "nose")


def uses_landmarks(crop: Mapping[str, Any]) -> bool:
    """Whether crop settings need the face's landmarks: alignment or a mode in LANDMARK_MODES.

    Here, not in crop.py, because inference asks without importing the crop stage (pandas,
    pydantic); the crop stage and inference must agree on it.
    """
    return bool(crop.get("align", False)) or crop.get("mode") in LANDMARK_MODES
