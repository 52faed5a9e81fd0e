"""Face geometry: landmarks, alignment, crop modes and finding the mask."""

# Crop modes that place their cut or region from the face's landmarks, aligned or not. Here,
# not in crop.py, because inference reads it without importing the crop stage (pandas, pydantic).
LANDMARK_MODES = ("eyes", "mask", "nose")
