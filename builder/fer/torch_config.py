"""Any torch FER classifier as a guide or expert, described by a small YAML file.

    architecture: mypackage.models:EmotionNet   # importable nn.Module class
    init_args: {num_classes: 8}
    weights: emotionnet.safetensors             # relative to this file; safetensors only (no pickle)
    labels: [neutral, happy, sad, surprise, fear, disgust, anger, contempt]   # output order
    input: {size: 224, channels: 3, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
"""
from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import Field

from ..errors import ModelLoadError
from ..manifest import _Strict


class InputSpec(_Strict):
    """What the classifier expects: images in [0, 1] become (x - mean) / std at size x size."""

    size: int = Field(gt=0, le=1024, description="Square input side in pixels.")
    channels: int = Field(default=3, ge=1, le=3, description="1 (grayscale, ITU-R 601) or 3 (RGB).")
    mean: list[float] = Field(default_factory=lambda: [0.5], min_length=1, description="Per-channel mean.")
    std: list[float] = Field(default_factory=lambda: [0.5], min_length=1, description="Per-channel std.")


class TorchClassifierConfig(_Strict):
    """A torch expression classifier: class, weights, label order and preprocessing."""

    architecture: str = Field(pattern=r"^[\w.]+:\w+$", description="'package.module:ClassName' of an nn.Module.")
    init_args: dict = Field(default_factory=dict, description="Keyword arguments for the class.")
    weights: str = Field(min_length=1, description="safetensors state dict, relative to the config file.")
    labels: list[str] = Field(min_length=2, description="Class names in output order (any built-in label map's names).")
    input: InputSpec = Field(description="Input size, channels and normalisation.")


def config_sha256(path: str | Path) -> str:
    """sha256 over a classifier config and the weights file it names (provenance)."""
    import hashlib

    from ..manifest_loader import load_manifest
    from ..models import file_sha256

    path = Path(path)
    weights = path.parent / load_manifest(path, model=TorchClassifierConfig).weights
    return hashlib.sha256(f"{file_sha256(path)}\n{file_sha256(weights)}".encode()).hexdigest()


def load_torch_classifier(path: str | Path, labels=None):
    """A ``FERClassifier`` from a YAML config (see the module docstring)."""
    from safetensors.torch import load_file

    from ..manifest_loader import load_manifest
    from . import FERClassifier

    path = Path(path)
    config = load_manifest(path, model=TorchClassifierConfig)
    module_name, _, class_name = config.architecture.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"architecture '{config.architecture}' cannot be imported ({exc})", file=str(path),
                             fix="install the package that defines it, or fix the 'module:Class' name") from None
    try:
        module = cls(**config.init_args)
    except TypeError as exc:
        raise ModelLoadError(f"'{config.architecture}' does not accept init_args: {exc}", file=str(path),
                             fix="match init_args to the class's constructor") from None
    weights = path.parent / config.weights
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise ModelLoadError(f"weights '{weights}' are missing or not a .safetensors file", file=str(path),
                             fix="save the state dict with safetensors.torch.save_file (pickled checkpoints are refused)")
    try:
        module.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights do not fit '{config.architecture}': {str(exc).splitlines()[0]}",
                             file=str(path), fix="use the weights saved from this architecture") from None
    inp = config.input
    try:
        return FERClassifier(module, tuple(labels or config.labels), input_size=inp.size, channels=inp.channels,
                             mean=inp.mean, std=inp.std)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"labels or input do not fit the classifier: {exc}", file=str(path),
                             fix="give one known class name per output, and 1 or `channels` mean/std values") from None
