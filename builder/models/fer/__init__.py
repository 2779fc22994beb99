"""Facial-expression classifiers: ``FERClassifier`` (``classifier``), the mini-Xception port and its Keras
reader, the ONNX interpreter, and YAML classifier configs. Importing this package is cheap: the names below
load torch only when first used, so reading a classifier config's schema needs no torch."""
from __future__ import annotations

__all__ = ["GRAY_WEIGHTS", "FERClassifier", "MiniXception", "align_labels"]


def __getattr__(name: str):
    if name in ("FERClassifier", "GRAY_WEIGHTS", "MiniXception"):
        from builder.models.fer import classifier

        return getattr(classifier, name)
    if name == "align_labels":
        from builder.manifest.label_maps import align_labels

        return align_labels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
