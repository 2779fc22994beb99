"""Classifier metrics and temperature scaling (Guo et al., 2017)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The T in [0.05, 20] minimising the NLL of softmax(logits / T), by LBFGS over log T."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        t = log_t.clamp(np.log(T_MIN), np.log(T_MAX)).exp()
        loss = F.cross_entropy(logits / t, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(np.exp(float(log_t.detach())), T_MIN, T_MAX))


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE: over equal-width bins of top-class confidence, sum of (bin share) * |accuracy - mean confidence|.

    Bins are (k/bins, (k+1)/bins], the first also holding confidence 0.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def accuracy(probs, labels) -> float:
    return float(np.mean(np.asarray(probs).argmax(1) == np.asarray(labels)))


def macro_accuracy(probs, labels) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    return float(np.mean(list(per_class_accuracy(probs, labels).values())))


def per_class_accuracy(probs, labels) -> dict[int, float]:
    """Recall of each class present in ``labels``."""
    predicted, labels = np.asarray(probs).argmax(1), np.asarray(labels)
    return {int(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def report(logits, labels, train_logits, train_labels, names) -> dict:
    """metrics.json: validation accuracy, macro accuracy, NLL and ECE before and after a temperature fitted on
    the same validation logits, per-class accuracy and counts; training accuracy and class counts."""
    labels, train_labels = np.asarray(labels), np.asarray(train_labels)
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    counts = np.bincount(train_labels, minlength=len(names))
    return {
        "validation": {
            "examples": len(labels), "accuracy": accuracy(after, labels), "macro_accuracy": macro_accuracy(after, labels),
            "temperature": t, "temperature_at_bound": not T_MIN * 1.001 < t < T_MAX * 0.999,
            "nll_before": nll(before, labels), "nll_after": nll(after, labels),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels),
            "per_class": {names[c]: {"count": int((labels == c).sum()), "accuracy": acc}
                          for c, acc in per_class_accuracy(after, labels).items()},
            "note": "temperature fitted on this validation set; the 'after' numbers are measured on it too",
        },
        "train": {"examples": len(train_labels), "accuracy": accuracy(softmax(train_logits), train_labels),
                  "per_class_count": {names[c]: int(n) for c, n in enumerate(counts) if n}},
    }
