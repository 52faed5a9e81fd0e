"""Inference: embeddings and the self-contained model folder."""
