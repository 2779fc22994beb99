"""Any torch or ONNX facial action unit (AU) detector, described by a small YAML file, and its outputs mapped
onto a named AU set (``builder.manifest.au_sets``).

An ONNX export (no code runs: the graph is read as data and evaluated by torch, ``builder.models.fer.onnx_torch``)::

    onnx: {file: au-net.onnx}                       # relative to this file; output: null, layout: NCHW
    aus: [AU1, AU2, AU4, AU6, AU9, AU12, AU25, AU26]   # the AU of each output, in output order
    returns: intensities                            # or probabilities (0-1 activations, times `scale`)
    input: {size: 224, channels: 3, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

or a torch class with safetensors weights::

    architecture: mypackage.nets:AUNet              # an nn.Module class; outside torch and this tool only with
    init_args: {num_aus: 12}                        #   --trust-remote-code
    weights: aunet.safetensors                      # relative to this file; safetensors only (no pickle)
    aus: [AU1, AU2, AU4, AU5, AU6, AU9, AU12, AU15, AU17, AU20, AU25, AU26]
    returns: intensities
    input: {size: 256, channels: 3}

The model parts are the classifier config's (``builder.models.fer.classifier_config``): the same ``InputSpec``
and ``OnnxSpec``, the same ``architecture`` / ``init_args`` / ``weights`` fields with their checks (the class
must subclass ``nn.Module``, checked before it is called; a class outside torch and this tool is imported only
with ``trust_remote_code``), weights and ONNX files confined to the config's folder, and the same
preprocessing (``FERClassifier.preprocess``: grey by ITU-R 601 when ``channels`` is 1, antialiased bilinear
resize to ``size``, then ``(x - mean) / std``).

Outputs. ``aus`` names each output with an AU name of ``builder.manifest.au_sets`` ('AU12'; the sided
OpenGraphAU names are 'AUL12' and 'AUR12'), or ``null`` for an output no AU set uses (OpenFace's AU45): it is
computed and ignored. ``returns: intensities``: the outputs are FACS intensities, clipped to 0-5.
``returns: probabilities``: the outputs are activation probabilities (a sigmoid inside the graph), clipped to
0-1 and multiplied by ``scale`` (default 5), so a certain activation reads as the scale's maximum. A
probability is not an intensity: it is the usual proxy when a detector has no intensity head (OpenGraphAU), and
``scale`` is recorded with the stage's meta.

Mapping onto a set (``map_to_set``), per AU of the set, by name:

* the detector's output of that name, when it has one;
* a bilateral 'AUn' the detector only has sided ('AULn' and 'AURn'): the mean of the two sides (FACS codes
  the intensity of a bilateral action, which the two sides share); with only one side, None;
* a sided 'AULn' / 'AURn' the detector only has bilateral: None (copying AUn to each side would claim a
  measurement of asymmetry the detector did not make);
* otherwise None: the detector does not measure it. Missing AUs are reported (``missing_aus``), never invented.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from builder.core.config import Strict, fail
from builder.core.errors import ModelLoadError, UserError
from builder.manifest.au_sets import AU_MAX, AU_MIN, AU_SETS
from builder.models.fer.classifier_config import (
    TRUSTED_PACKAGES,
    ClassifierConfig,
    InputSpec,
    OnnxSpec,
    architecture_class,
    check_architecture,
)

if TYPE_CHECKING:
    import numpy as np

_SIDED = re.compile(r"^AU([LR])(\d+)$")
KNOWN_AUS: tuple[str, ...] = tuple(sorted({name for names in AU_SETS.values() for name in names},
                                          key=lambda n: (bool(_SIDED.match(n)), int(re.sub(r"\D", "", n)), n)))
"""Every AU name an AU set uses (bilateral by number, then the sided ones): the names a detector config may
give its outputs."""
NULL_FIX = "null names an output that no AU set uses, which is then ignored"


def _known_au(name: str) -> str:
    if name not in KNOWN_AUS:
        raise fail("unknown_au", "'{name}' is not an AU of any AU set", "{hint}use names from: {known}; " + NULL_FIX,
                   name=name, hint=_hint(name), known=", ".join(KNOWN_AUS))
    return name


def _shared(name: str, description: str):
    """The classifier config's field ``name`` (type constraints, default), described for an AU detector; a copy,
    so the classifier's own field is never touched."""
    info = copy.deepcopy(ClassifierConfig.model_fields[name])
    info.description = description
    return info


class AUDetectorConfig(Strict):
    """An AU detector: a torch class and safetensors weights, or an ONNX file; the AU of each output; what the
    outputs are; preprocessing."""

    architecture: str | None = _shared("architecture", "'package.module:ClassName' of the detector's nn.Module "
                                       "(torch detectors); outside torch and this tool only with "
                                       "--trust-remote-code.")
    init_args: dict = _shared("init_args", "Keyword arguments for the class (torch detectors).")
    weights: str | None = _shared("weights", "safetensors state dict, relative to this config (torch detectors); "
                                  "pickled checkpoints are refused.")
    onnx: OnnxSpec | None = Field(default=None, description="An ONNX detector instead of a torch class; its output "
                                  "(`output`, default the first) holds one value per AU.")
    aus: list[Annotated[str, AfterValidator(_known_au)] | None] = Field(
        min_length=1, description="The AU name of each output, in output order, as the AU sets name them ('AU1', "
        "'AU12'; sided: 'AUL12', 'AUR12'); null for an output no AU set uses (ignored).")
    returns: Literal["intensities", "probabilities"] = Field(
        description="What the outputs are: 'intensities' (FACS 0-5, clipped to it) or 'probabilities' (0-1 "
        "activations, e.g. a sigmoid head, clipped and multiplied by 'scale').")
    scale: float = Field(default=AU_MAX, gt=0, le=AU_MAX, description="For 'probabilities': the intensity a "
                         "probability of 1 becomes (default 5, the top of the FACS scale).")
    input: InputSpec = Field(description="Input size, channels and normalisation.")

    @field_validator("aus")
    @classmethod
    def _distinct_aus(cls, aus: list[str | None]) -> list[str | None]:
        for i, name in enumerate(aus):
            if name is not None and name in aus[:i]:
                raise fail("duplicate_au", "'{name}' already names output {first}",
                           "give each output its own AU name (null for one to ignore)", at=str(i), name=name,
                           first=aus.index(name))
        if all(name is None for name in aus):
            raise fail("no_au", "names no AU (every output is null)", "name the AU of each output you want used")
        return aus

    @model_validator(mode="after")
    def _one_kind(self) -> AUDetectorConfig:
        ClassifierConfig._one_kind(self)  # the classifier's rule: a torch class and weights, or an ONNX file
        if self.returns == "intensities" and "scale" in self.model_fields_set:
            raise fail("scale_unused", "applies to 'returns: probabilities' only",
                       "remove 'scale' (intensities are used as they are, clipped to 0-5)", at="scale")
        inp = self.input
        for key in ("mean", "std"):
            if len(getattr(inp, key)) not in (1, inp.channels):
                raise fail("input_channels", "has {n} values for {c} channel(s)", "give 1 or {c} values",
                           at=f"input.{key}", n=len(getattr(inp, key)), c=inp.channels)
        if 0 in inp.std:
            raise fail("input_std", "has a 0 (the input would be divided by zero)", "give the std the model was "
                       "trained with (1/255 = 0.00392156862745098 for raw 0-255 pixels)", at="input.std")
        return self

    def model_file(self, config_path: Path) -> Path:
        """The weights or .onnx file, resolved against the config's folder (refused if it leaves it)."""
        return ClassifierConfig.model_file(self, config_path)


def _hint(name: str) -> str:
    """'did you mean ...? ' for a misspelt AU name ('au12', 'AU12L'), or ''."""
    spelt = name.strip().upper().replace(" ", "")
    sided = re.match(r"^AU(\d+)([LR])$", spelt)
    if sided:
        spelt = f"AU{sided.group(2)}{sided.group(1)}"
    close = [spelt] if spelt in KNOWN_AUS else difflib.get_close_matches(spelt, KNOWN_AUS, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


# -- mapping onto an AU set -----------------------------------------------------------------------------------------
def set_sources(names: Sequence[str | None], au_set: str) -> list[tuple[int, ...]]:
    """For each AU of ``au_set`` (in set order), the detector outputs it is read from (see the module
    docstring): one index, the two sides' indices, or none (the detector does not measure it)."""
    index = {name: i for i, name in enumerate(names) if name is not None}
    sources = []
    for au in AU_SETS[au_set]:
        if au in index:
            sources.append((index[au],))
        elif not _SIDED.match(au) and f"AUL{au[2:]}" in index and f"AUR{au[2:]}" in index:
            sources.append((index[f"AUL{au[2:]}"], index[f"AUR{au[2:]}"]))
        else:
            sources.append(())
    return sources


def map_to_set(names: Sequence[str | None], values: Sequence[float], au_set: str) -> list[float | None]:
    """One detector output row (``values``, named by ``names``) as the intensities of ``au_set``, in its order:
    by name, both sides averaged onto a bilateral AU the detector only has sided, None where it does not measure
    the AU (see the module docstring)."""
    if len(values) != len(names):
        raise ValueError(f"{len(values)} values for {len(names)} AU names")
    return [float(sum(float(values[i]) for i in src) / len(src)) if src else None
            for src in set_sources(names, au_set)]


def missing_aus(names: Sequence[str | None], au_set: str) -> list[str]:
    """The AUs of ``au_set`` the detector named by ``names`` does not measure (mapped to None)."""
    return [au for au, src in zip(AU_SETS[au_set], set_sources(names, au_set)) if not src]


# -- the detector ---------------------------------------------------------------------------------------------------
@dataclass
class AUDetector:
    """A loaded AU detector: ``predict`` maps RGB crops in [0, 1] to AU intensities 0-5, one column per output
    (``au_names``, None for an ignored output). ``sha256`` covers the config and its weights or ONNX file."""

    module: object
    au_names: tuple[str | None, ...]
    returns: str
    scale: float
    input_size: int
    channels: int
    mean: object
    std: object
    nhwc: bool
    sha256: str
    path: str
    device: str = "cpu"

    def to(self, device: str) -> AUDetector:
        """Move the model to ``device`` ('cpu', 'cuda', 'cuda:N', 'mps')."""
        self.module.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.device = device
        return self

    def preprocess(self, images):
        """RGB (B, 3, H, W) in [0, 1] -> model input (B, channels, size, size): ``FERClassifier.preprocess``."""
        from builder.models.fer.classifier import FERClassifier

        return FERClassifier.preprocess(self, images)

    def raw(self, crops):
        """The model's output (B, n) for RGB crops in [0, 1], before clipping and scaling (a torch tensor)."""
        import torch

        with torch.inference_mode():
            x = self.preprocess(crops.to(self.device, torch.float32)).to(self._param_dtype())
            out = self.module(x.permute(0, 2, 3, 1) if self.nhwc else x)
        return out

    def predict(self, crops) -> np.ndarray:
        """AU intensities 0-5, shaped (B, len(au_names)), float32, for RGB crops (B, 3, H, W) in [0, 1]."""
        out = self.raw(crops).float()
        if self.returns == "probabilities":
            out = out.clamp(0.0, 1.0) * self.scale
        return out.clamp(AU_MIN, AU_MAX).cpu().numpy()

    def _param_dtype(self):
        import torch

        for tensor in (*self.module.parameters(), *self.module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32


def detector_sha256(config_path: Path, model_file: Path) -> str:
    """sha256 over an AU detector config and the weights or ONNX file it names (provenance)."""
    from builder.models.diffusion import file_sha256

    return hashlib.sha256(f"{file_sha256(config_path)}\n{file_sha256(model_file)}".encode()).hexdigest()


def read_config(path: str | Path) -> AUDetectorConfig:
    """Parse and validate an AU detector config; ``ModelLoadError`` naming the file, the field and the fix."""
    from builder.manifest.loader import load_manifest

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"AU detector config {what}", file=str(path),
                             fix="give the path of an AU detector config (.yaml: onnx or architecture + weights, "
                             "aus, returns, input; see builder/models/au_detector.py)")
    try:
        return load_manifest(path, model=AUDetectorConfig)
    except UserError as exc:
        raise ModelLoadError(exc.message, file=str(path), fix=exc.fix) from None


def _model_file(config: AUDetectorConfig, path: Path) -> Path:
    try:
        return config.model_file(path)
    except UserError as exc:  # a path leaving the config's folder
        raise ModelLoadError(exc.message, file=str(path), fix=exc.fix) from None


def _weights_problem(config: AUDetectorConfig, model_file: Path) -> tuple[str, str] | None:
    """(message, fix) when the weights or ONNX file is missing, pickled or damaged (read as bytes, not loaded)."""
    from builder.models.files import safetensors_problem

    key = "onnx.file" if config.onnx is not None else "weights"
    if not model_file.is_file():
        return (f"field '{key}' names '{model_file.name}', which does not exist",
                f"put the file beside the config (paths in '{key}' are relative to it)")
    if config.onnx is not None:
        if model_file.stat().st_size == 0:
            return f"field 'onnx.file': '{model_file.name}' is empty", "export the detector again (torch.onnx.export)"
        return None
    if model_file.suffix != ".safetensors":
        return (f"field 'weights' names '{model_file.name}', not a .safetensors file",
                "save the state dict with safetensors.torch.save_file (pickled checkpoints are refused)")
    problem = safetensors_problem(model_file)
    if problem:
        return (f"field 'weights': '{model_file.name}' {problem}",
                "save the state dict with safetensors.torch.save_file (pickled checkpoints are refused)")
    return None


def load_au_detector(path: str | Path, trust_remote_code: bool = False, device: str = "cpu") -> AUDetector:
    """An ``AUDetector`` from a YAML config (see the module docstring); ``trust_remote_code`` allows an
    ``architecture`` outside torch and this tool. Every refusal is a ``ModelLoadError`` naming the config."""
    import torch

    path = Path(path)
    config = read_config(path)
    model_file = _model_file(config, path)
    if config.architecture is not None:  # refused before anything is imported; imported, checked, not called
        architecture_class(config, path, trust_remote_code)
    problem = _weights_problem(config, model_file)
    if problem:
        raise ModelLoadError(problem[0], file=str(path), fix=problem[1])
    if config.onnx is not None:
        from builder.models.fer.onnx_torch import load_onnx_module

        try:
            module = load_onnx_module(model_file, output=config.onnx.output)
        except ModelLoadError as exc:  # name the config (where the fix goes) and the field
            raise ModelLoadError(f"field 'onnx.file' ('{config.onnx.file}'): {exc.message}", file=str(path),
                                 fix=exc.fix) from None
    else:
        from builder.models.fer.classifier_config import _torch_module

        module = _torch_module(config, path, trust_remote_code)
    module = module.eval().requires_grad_(False)
    inp = config.input
    detector = AUDetector(
        module=module, au_names=tuple(config.aus), returns=config.returns, scale=config.scale,
        input_size=inp.size, channels=inp.channels,
        mean=torch.tensor(inp.mean, dtype=torch.float32).view(1, -1, 1, 1),
        std=torch.tensor(inp.std, dtype=torch.float32).view(1, -1, 1, 1),
        nhwc=config.onnx is not None and config.onnx.layout == "NHWC",
        sha256=detector_sha256(path, model_file), path=str(path))
    _check_output(detector, config, path)
    return detector.to(device)


def _check_output(detector: AUDetector, config: AUDetectorConfig, path: Path) -> None:
    """One forward pass on a grey crop: the output must be (1, len(aus))."""
    import torch

    inp = config.input
    try:
        out = detector.raw(torch.full((1, 3, inp.size, inp.size), 0.5))
    except Exception as exc:  # a user's model failing on the declared input is bad input, not a bug here
        why = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"the detector fails on a {inp.channels}x{inp.size}x{inp.size} input: "
                             f"{why.splitlines()[0]}", file=str(path),
                             fix="set 'input.size', 'input.channels' (and 'onnx.layout') to what the model was "
                             "trained on") from None
    if out.ndim != 2 or out.shape[1] != len(config.aus):
        raise ModelLoadError(f"field 'aus': the detector outputs shape {tuple(out.shape)} but 'aus' names "
                             f"{len(config.aus)} outputs", file=str(path),
                             fix="list one AU name per output in 'aus', in output order (" + NULL_FIX + "), or "
                             "pick the output that holds the AUs with 'onnx.output'")
    if not out.is_floating_point():
        raise ModelLoadError(f"the detector outputs {out.dtype} values, not AU intensities or probabilities",
                             file=str(path), fix="pick the output that holds the AUs with 'onnx.output'")


# -- cheap checks for `build-dataset validate` ----------------------------------------------------------------------
def reference_problems(path: str | Path, trust_remote_code: bool = False) -> list[tuple[str, str]]:
    """What is wrong with the AU detector config at ``path``, as (message, fix) pairs naming the file, without
    loading its weights: the config validates (AU names, kinds), the architecture is one it may name (imported
    only once allowed, and checked to be an ``nn.Module`` class, never called), the weights or ONNX file lies
    in the config's folder, exists, and safetensors weights are complete and not pickled. [] when it is fine."""
    path = Path(path)
    try:
        config = read_config(path)
        model_file = _model_file(config, path)
        check_architecture(config, path, trust_remote_code)
        if config.architecture is not None and (trust_remote_code or config.architecture.split(":")[0].split(".")[0]
                                                 in TRUSTED_PACKAGES):
            architecture_class(config, path, trust_remote_code)  # imported (allowed by now), checked, never called
    except UserError as exc:
        return [(f"{path}: {' '.join(exc.message.split())}", exc.fix or "")]
    problem = _weights_problem(config, model_file)
    return [(f"{path}: {problem[0]}", problem[1])] if problem else []
