"""Classification scores from a confusion matrix: accuracy (the primary metric) and per-class accuracy."""

from __future__ import annotations

import numpy as np


def classification_scores(confusion: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict:
    """Scores of a (C, C) confusion matrix (rows truth, columns prediction): accuracy, the mean of the
    per-class accuracies (recall), and per class its accuracy (None for a class with no example) and count."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    per_class_total = confusion.sum(axis=1)
    diagonal = np.diag(confusion)
    per_class = {name: (None if per_class_total[k] == 0 else float(diagonal[k] / per_class_total[k]))
                 for k, name in enumerate(class_names)}
    present = [v for v in per_class.values() if v is not None]
    return {"accuracy": float(diagonal.sum() / total) if total else float("nan"),
            "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
            "per_class_accuracy": per_class,
            "per_class_images": {name: int(n) for name, n in zip(class_names, per_class_total)},
            "images": total}

