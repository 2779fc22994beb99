"""Expert FER models behind one interface: face crops in, probabilities over the manifest's labels out.

An expert is any classifier ``load_fer_classifier`` can load (the built-in
FER2013 mini-Xception, a Keras .hdf5, or a YAML config of a torch or ONNX
model). Its label order is mapped onto the manifest's by emotion name; the
classes it lacks are marked unknown, so the calibration rule pools each class
only over the experts that know it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .fer import FERClassifier, align_labels


@dataclass
class Expert:
    """One expert: a name (column id), its classifier, weight, and provenance."""

    name: str
    classifier: FERClassifier
    weight: float
    model: str
    sha256: str

    def known(self, label_names: Sequence[str]) -> np.ndarray:
        """Which of ``label_names`` this expert can predict."""
        indices, _ = align_labels(self.classifier.labels, label_names)
        return np.array([i is not None for i in indices])

    @torch.no_grad()
    def predict(self, crops: torch.Tensor, label_names: Sequence[str]) -> np.ndarray:
        """Probabilities (B, len(label_names)) for RGB crops (B, 3, H, W) in [0, 1]; unknown classes get 0."""
        device = next(iter(self.classifier.buffers())).device
        probs, _ = self.classifier.probs_for(crops.to(device).float(), label_names)
        return probs.double().cpu().numpy()

    def describe(self, label_names: Sequence[str]) -> dict:
        known = self.known(label_names)
        return {"name": self.name, "model": self.model, "sha256": self.sha256, "weight": self.weight,
                "labels": list(self.classifier.labels),
                "unknown_classes": [n for n, k in zip(label_names, known) if not k]}


def load_experts(specs, device: str = "cpu") -> list[Expert]:
    """Experts from manifest ``labelling.experts`` entries (model files fetched and hashed)."""
    from .store import load_fer_classifier, model_sha256

    return [Expert(spec.name, load_fer_classifier(spec.model).to(device), spec.weight, spec.model,
                   model_sha256(spec.model)) for spec in specs]
