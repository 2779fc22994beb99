"""Any torch or ONNX FER classifier as a guide or expert, described by a small YAML file.

A torch module with safetensors weights::

    architecture: mypackage.models:EmotionNet   # importable nn.Module class
    init_args: {num_classes: 8}
    weights: emotionnet.safetensors             # relative to this file; safetensors only (no pickle)
    labels: [neutral, happy, sad, surprise, fear, disgust, anger, contempt]   # output order
    input: {size: 224, channels: 3, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

A config is data, like the model weights it names: loading one never runs code its author chose. The
``architecture`` must be a class that subclasses ``torch.nn.Module``, checked before it is called, and a class
outside this tool's packages and torch is imported only when the caller opts in (``trust_remote_code=True``;
``--trust-remote-code`` on the command line), as transformers does. ``weights`` and ``onnx.file`` must lie
inside the config's folder.

or an ONNX export, run by torch so guidance can take its gradient::

    onnx: {file: emotion-ferplus-8.onnx, output: null, layout: NCHW}
    returns: logits                             # or probabilities (a softmax inside the graph)
    labels: [neutral, happy, surprise, sad, anger, disgust, fear, contempt]
    input: {size: 64, channels: 1, mean: [0], std: [0.00392156862745098]}   # raw 0-255 pixels
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.core.errors import ModelLoadError
from builder.core.paths import confined

TRUSTED_PACKAGES = ("torch", "builder", "curation", "cards", "evaluation")
"""Top-level packages whose ``nn.Module`` classes a classifier config may name without ``trust_remote_code``:
torch and this tool. Importing anything else runs code the config's author chose."""
REMOTE_CODE_FIX = ("if you trust this config and the package that defines the class, rerun with "
                   "--trust-remote-code (Python API: trust_remote_code=True)")


class InputSpec(Strict):
    """What the classifier expects: images in [0, 1] become (x - mean) / std at size x size."""

    size: int = Field(gt=0, le=1024, description="Square input side in pixels.")
    channels: int = Field(default=3, ge=1, le=3, description="1 (grayscale, ITU-R 601) or 3 (RGB).")
    mean: list[float] = Field(default_factory=lambda: [0.5], min_length=1, description="Per-channel mean.")
    std: list[float] = Field(default_factory=lambda: [0.5], min_length=1,
                             description="Per-channel std (1/255 = 0.00392156862745098 for raw 0-255 pixels).")


class OnnxSpec(Strict):
    """An ONNX classifier file and how to call it."""

    file: str = Field(min_length=1, description="The .onnx file, relative to this config.")
    output: str | None = Field(default=None, description="Graph output holding the class scores (default: the first).")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Image tensor layout the graph takes.")


class ClassifierConfig(Strict):
    """An expression classifier: a torch class and weights, or an ONNX file; label order; preprocessing."""

    architecture: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$",
                                     description="'package.module:ClassName' of an nn.Module (torch classifiers).")
    init_args: dict = Field(default_factory=dict, description="Keyword arguments for the class (torch classifiers).")
    weights: str | None = Field(default=None, min_length=1,
                                description="safetensors state dict, relative to this config (torch classifiers).")
    onnx: OnnxSpec | None = Field(default=None, description="An ONNX classifier instead of a torch class.")
    returns: Literal["logits", "probabilities"] = Field(
        default="logits", description="What the model outputs; probabilities are turned into log-probabilities.")
    labels: list[str] = Field(min_length=2, description="Class names in output order (any built-in label map's names).")
    input: InputSpec = Field(description="Input size, channels and normalisation.")

    @model_validator(mode="after")
    def _one_kind(self) -> ClassifierConfig:
        torch_kind = self.architecture is not None or self.weights is not None or bool(self.init_args)
        if torch_kind and self.onnx is not None:
            raise fail("classifier_kind", "describes both a torch class and an ONNX file",
                        "keep either 'architecture' + 'weights' (torch) or 'onnx' (ONNX), not both")
        if self.onnx is None and (self.architecture is None or self.weights is None):
            raise fail("classifier_kind", "names no model",
                        "give 'architecture' and 'weights' for a torch classifier, or 'onnx: {{file: ...}}'")
        return self

    def model_file(self, config_path: Path) -> Path:
        """The weights or .onnx file, resolved against the config's folder (refused if it leaves it)."""
        field = "onnx.file" if self.onnx else "weights"
        return confined(config_path.parent, self.onnx.file if self.onnx else self.weights, field, config_path)


def config_sha256(path: str | Path) -> str:
    """sha256 over a classifier config and the weights or ONNX file it names (provenance)."""
    from builder.manifest.loader import load_manifest
    from builder.models.diffusion import file_sha256

    path = Path(path)
    model_file = load_manifest(path, model=ClassifierConfig).model_file(path)
    return hashlib.sha256(f"{file_sha256(path)}\n{file_sha256(model_file)}".encode()).hexdigest()


def check_architecture(config: ClassifierConfig, path: Path, trust_remote_code: bool = False) -> None:
    """Refuse, without importing anything, an ``architecture`` outside torch and this tool unless trusted."""
    if config.architecture is None:
        return
    package = config.architecture.partition(":")[0].split(".")[0]
    if package not in TRUSTED_PACKAGES and not trust_remote_code:
        raise ModelLoadError(f"field 'architecture': '{config.architecture}' is code from the package '{package}', "
                             "outside this tool and torch; a classifier config does not import it unless you opt "
                             "in (trust_remote_code is off)", file=str(path), fix=REMOTE_CODE_FIX)


def architecture_class(config: ClassifierConfig, path: Path, trust_remote_code: bool = False):
    """The ``nn.Module`` subclass the config names, checked before anything calls it."""
    from torch import nn

    check_architecture(config, path, trust_remote_code)
    module_name, _, class_name = config.architecture.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"field 'architecture': '{config.architecture}' cannot be imported ({exc})",
                             file=str(path), fix="install the package that defines it, or fix the 'module:Class' "
                             "name") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        kind = f"the class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ModelLoadError(f"field 'architecture': '{config.architecture}' is {kind}, not a torch.nn.Module "
                             "class; it was not called", file=str(path),
                             fix="name the nn.Module class of the classifier ('package.module:ClassName')")
    return cls


def _torch_module(config: ClassifierConfig, path: Path, trust_remote_code: bool = False):
    from safetensors.torch import load_file

    cls = architecture_class(config, path, trust_remote_code)
    try:
        module = cls(**config.init_args)
    except TypeError as exc:
        raise ModelLoadError(f"'{config.architecture}' does not accept init_args: {exc}", file=str(path),
                             fix="match init_args to the class's constructor") from None
    weights = config.model_file(path)
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise ModelLoadError(f"weights '{weights}' are missing or not a .safetensors file", file=str(path),
                             fix="save the state dict with safetensors.torch.save_file (pickled checkpoints are refused)")
    try:
        module.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights do not fit '{config.architecture}': {str(exc).splitlines()[0]}",
                             file=str(path), fix="use the weights saved from this architecture") from None
    return module


def _wrap(module, config: ClassifierConfig):
    """Adapt layout and output kind so the module maps NCHW inputs to logits."""
    import torch
    from torch import nn

    nhwc = config.onnx is not None and config.onnx.layout == "NHWC"
    probabilities = config.returns == "probabilities"
    if not (nhwc or probabilities):
        return module

    class Adapted(nn.Module):
        """NHWC input and/or probability output, presented as NCHW -> logits."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x.permute(0, 2, 3, 1) if nhwc else x)
            return torch.log(out.clamp_min(1e-12)) if probabilities else out

    return Adapted(module)


def _check_output(classifier, config: ClassifierConfig, path: Path) -> None:
    """One forward pass on a blank image: the output must be (1, len(labels))."""
    import torch

    inp = config.input
    with torch.no_grad():
        try:
            out = classifier.module(torch.zeros(1, inp.channels, inp.size, inp.size))
        except Exception as exc:  # a user's module failing on the declared input is bad input, not a bug here
            why = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"the classifier fails on a {inp.channels}x{inp.size}x{inp.size} input: "
                                 f"{why.splitlines()[0]}", file=str(path),
                                 fix="set 'input.size' and 'input.channels' to what the model was trained on") from None
    if out.ndim != 2 or out.shape[1] != len(config.labels):
        raise ModelLoadError(f"the classifier outputs shape {tuple(out.shape)} but {len(config.labels)} labels are "
                             "given", file=str(path),
                             fix="list one label per output class in 'labels' (or pick the class-score 'output')")


def load_config_classifier(path: str | Path, labels=None, trust_remote_code: bool = False):
    """A ``FERClassifier`` from a YAML config (see the module docstring); ``trust_remote_code`` allows an
    ``architecture`` outside torch and this tool."""
    from builder.manifest.loader import load_manifest
    from builder.models.fer import FERClassifier

    path = Path(path)
    config = load_manifest(path, model=ClassifierConfig)
    if config.onnx is not None:
        from builder.models.fer.onnx_torch import load_onnx_module

        try:
            module = load_onnx_module(config.model_file(path), output=config.onnx.output)
        except ModelLoadError as exc:  # name the config (where the fix goes) and the field
            raise ModelLoadError(f"onnx.file '{config.onnx.file}': {exc.message}", file=str(path),
                                 fix=exc.fix) from None
    else:
        module = _torch_module(config, path, trust_remote_code)
    inp = config.input
    try:
        classifier = FERClassifier(_wrap(module, config), tuple(labels or config.labels), input_size=inp.size,
                                   channels=inp.channels, mean=inp.mean, std=inp.std)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"labels or input do not fit the classifier: {exc}", file=str(path),
                             fix="give one known class name per output, and 1 or `channels` mean/std values") from None
    _check_output(classifier, config, path)
    return classifier
