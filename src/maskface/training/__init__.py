"""Fine-tuning: the ArcFace trainer, its loss, augmentation and several processes."""
