"""The face networks: the backbone registry and their pretrained weights."""
