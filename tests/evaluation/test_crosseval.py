import numpy as np
import pandas as pd
import pytest

from maskface.evaluation.crosseval import metrics_of


def test_threshold_transfer_is_own_threshold_accuracy_next_to_ten_fold():
    rng = np.random.default_rng(0)
    labels = np.tile([True, False], 200)
    # Scores of another collection: well separated, but around 0.2 instead of the model's 0.5.
    scores = np.where(labels, 0.3, 0.1) + rng.normal(0, 0.05, labels.size)
    scored = pd.DataFrame(
        {
            "score": scores, "cosine": scores, "label": labels, "fold": np.arange(labels.size) % 10,
            "identity_a": [f"id{k % 40}" for k in range(labels.size)],
            "identity_b": [f"id{(k + 1 - labels[k]) % 40}" for k in range(labels.size)],
            "pair_type": "masked-unmasked",
        }
    )
    report = metrics_of(scored, threshold=0.5)
    transfer = report["threshold_transfer"]
    # Oracle by hand: at 0.5 every pair is called "different", so accuracy is the impostor share.
    assert transfer["own_threshold_accuracy"] == pytest.approx(0.5)
    assert transfer["kfold_accuracy"] == pytest.approx(report["kfold"]["mean"]) and transfer["kfold_accuracy"] > 0.95
    assert transfer["gap"] == pytest.approx(0.5 - transfer["kfold_accuracy"])
