"""maskface: reproducible masked face recognition."""

__version__ = "0.1.0"


def __getattr__(name):
    # The inference API imports torch: load it on first use so `import maskface` stays light.
    if name in ("load_model", "load_gallery", "FaceModel", "Gallery"):
        from maskface import api

        return getattr(api, name)
    raise AttributeError(f"module 'maskface' has no attribute {name!r}")
