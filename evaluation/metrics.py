"""Accuracy, macro (mean-class) accuracy, per-class F1 and the confusion matrix, over stated classes.

scikit-learn computes the confusion matrix and the per-class precision, recall and
F1 (``zero_division=0``). ``targets[i]`` is the model class a test sample belongs
to, or None when the model cannot predict its class (the class is missing
from the build's training data): those samples are counted but left out of
every metric except ``accuracy_all_test_samples`` (where they count as
errors). The metrics are computed over the *evaluated classes*: the model's
classes that have at least one test sample. A prediction of a model class the
test set does not have is simply an error (its column in the confusion matrix
shows it). Precision of a class nobody predicted is 0, and so is its F1.

``from_predictions`` recomputes everything from the saved per-sample
predictions (``<name>-predictions.jsonl``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compute(targets: Sequence[int | None], predictions: Sequence[int], model_names: Sequence[str]) -> dict:
    """The metrics dict (see the module docstring); ``predictions`` index ``model_names``."""
    names = list(model_names)
    k = len(names)
    total = len(targets)
    mask = np.array([t is not None for t in targets], dtype=bool)
    t = np.array([-1 if v is None else v for v in targets], dtype=int)[mask]
    p = np.asarray(predictions, dtype=int)[mask]
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    confusion = confusion_matrix(t, p, labels=list(range(k))) if len(t) else np.zeros((k, k), dtype=int)
    support = confusion.sum(1)
    evaluated = [c for c in range(k) if support[c] > 0]
    per_class = {}
    if evaluated:
        precision, recall, f1, _ = precision_recall_fscore_support(t, p, labels=evaluated, zero_division=0)
        for j, c in enumerate(evaluated):
            per_class[names[c]] = {"support": int(support[c]), "correct": int(confusion[c, c]),
                                   "predicted": int(confusion[evaluated, c].sum()),
                                   "precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j])}
    n = int(mask.sum())
    correct = int(np.trace(confusion))
    return {
        "evaluated_classes": [names[c] for c in evaluated],
        "model_classes_not_in_test": [names[c] for c in range(k) if support[c] == 0],
        "samples_total": total,
        "samples_evaluated": n,
        "samples_unpredictable": total - n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "macro_accuracy": float(np.mean([per_class[names[c]]["recall"] for c in evaluated])) if evaluated else None,
        "macro_f1": float(np.mean([per_class[names[c]]["f1"] for c in evaluated])) if evaluated else None,
        "accuracy_all_test_samples": correct / total if total else None,
        "per_class": per_class,
        "confusion": {"rows": [names[c] for c in evaluated], "columns": names,
                      "matrix": [[int(v) for v in confusion[c]] for c in evaluated]},
    }


def from_predictions(rows: Sequence[dict], model_names: Sequence[str]) -> dict:
    """``compute`` from prediction rows (``target``: model class name or None, ``prediction``: model class name)."""
    index = {n: i for i, n in enumerate(model_names)}
    return compute([None if r["target"] is None else index[r["target"]] for r in rows],
                   [index[r["prediction"]] for r in rows], model_names)
