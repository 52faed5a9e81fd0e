"""Face geometry: landmarks, alignment, crop modes and finding the mask."""
