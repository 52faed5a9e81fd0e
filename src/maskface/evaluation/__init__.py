"""Evaluation: pair classifiers, metrics, the evaluate stage, its report and plots."""
