"""Labellers behind one interface: face crops in, probabilities over the manifest's labels out.

An expert is any classifier ``load_fer_classifier`` can load (the built-in
FER2013 mini-Xception, a Keras .hdf5, or a YAML config of a torch or ONNX
model); ``FERAnnoExpert`` puts a trained FERAnno labeller behind the same
interface (``name``, ``weight``, ``known``, ``predict``, ``describe``). Label
orders are mapped onto the manifest's by emotion name; the classes a labeller
lacks are marked unknown, so the calibration rule pools each class only over
the labellers that know it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from builder.models.fer import FERClassifier, align_labels


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


@dataclass
class FERAnnoExpert:
    """A trained FERAnno labeller (``curation.labelling.feranno``) as one more expert."""

    labeller: object  # curation.labelling.feranno.labeller.FERAnnoLabeller
    weight: float
    name: str = "feranno"

    def known(self, label_names: Sequence[str]) -> np.ndarray:
        indices, _ = align_labels(self.labeller.label_names, label_names)
        return np.array([i is not None for i in indices])

    def predict(self, crops: torch.Tensor, label_names: Sequence[str]) -> np.ndarray:
        """Probabilities (B, len(label_names)) for RGB crops (B, 3, H, W) in [0, 1]; unknown classes get 0."""
        probs = self.labeller.predict(crops.float())
        indices, _ = align_labels(self.labeller.label_names, label_names)
        out = np.zeros((len(probs), len(label_names)))
        for j, i in enumerate(indices):
            if i is not None:
                out[:, j] = probs[:, i]
        return out

    def describe(self, label_names: Sequence[str]) -> dict:
        info = self.labeller.describe()
        return {"name": self.name, "model": info["path"], "sha256": info["sha256"], "weight": self.weight,
                "labels": info["label_names"],
                "unknown_classes": [n for n, k in zip(label_names, self.known(label_names)) if not k],
                "feranno": {k: v for k, v in info.items() if k not in ("path", "sha256", "label_names")}}


def load_experts(specs, device: str = "cpu", trust_remote_code: bool = False) -> list[Expert]:
    """Experts from manifest ``labelling.experts`` entries (model files fetched and hashed)."""
    from builder.models.store import load_fer_classifier, model_sha256

    return [Expert(spec.name, load_fer_classifier(spec.model, trust_remote_code=trust_remote_code).to(device),
                   spec.weight, spec.model, model_sha256(spec.model)) for spec in specs]


def load_labellers(spec, device: str = "cpu", trust_remote_code: bool = False) -> list:
    """Every labeller of a manifest's ``labelling`` section, in pooling order: the experts, then FERAnno."""
    labellers: list = load_experts(spec.experts, device, trust_remote_code)
    if spec.feranno is not None:
        from builder.core.errors import UserError
        from builder.models.diffusion import resolve_device
        from curation.labelling.feranno.labeller import FERAnnoLabeller

        feranno = spec.feranno
        if feranno.dtype in ("bfloat16", "float16") and resolve_device(device) == "cpu":
            from builder.core.errors import ModelLoadError

            raise ModelLoadError(f"labelling.feranno.dtype '{feranno.dtype}' is not supported on CPU",
                                 fix="set labelling.feranno.dtype to 'float32' or 'auto' on CPU, or label on a GPU")
        try:
            labeller = FERAnnoLabeller.from_pretrained(feranno.model, device, feranno.batch_size, feranno.dtype)
        except UserError as exc:
            exc.message = f"labelling.feranno.model: {exc.message}"
            raise
        labellers.append(FERAnnoExpert(labeller, spec.feranno.weight))
    return labellers
