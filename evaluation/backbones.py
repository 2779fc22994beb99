"""Backbones: image batches in, one feature vector per image out, with the provenance of their weights.

``--backbone`` takes:

- a Hugging Face Hub id (``microsoft/resnet-18``, ``microsoft/resnet-50``,
  ``google/vit-base-patch16-224``) or a local folder written by
  ``save_pretrained``: loaded with ``AutoModel.from_pretrained`` (any vision
  backbone; the classification head of a checkpoint is not used). Hub files
  come through the Hub cache (``snapshot_download``, safetensors preferred),
  which also works offline (``HF_HUB_OFFLINE=1``) once the model is cached;
- ``ir50:PATH``: the IR-50 face backbone (``evaluation.ir50``) with a
  safetensors or ``weights_only`` torch checkpoint; ``ir50`` alone is randomly
  initialised (recorded as not pretrained).

Features: a ViT's [CLS] token after the final layer norm; otherwise the
model's pooled output (ResNet's global average pool); IR-50's 512-d embedding.
Input normalisation comes from the checkpoint's ``preprocessor_config.json``
when it has one. ``weights_sha256`` follows ``builder.models.diffusion.weights_sha256``
(Hub blobs by name), and every weight file's own sha256 is kept too, so the
guard can compare them with the guide's and the labellers' hashes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from builder.core.errors import UserError
from builder.models.diffusion import WEIGHT_SUFFIXES, file_sha256, weights_sha256

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLS_TOKEN_MODELS = ("vit", "deit", "beit", "dinov2", "vit_msn", "vit_mae")
HUB_EXAMPLES = "microsoft/resnet-18, microsoft/resnet-50, google/vit-base-patch16-224"


@dataclass
class Backbone:
    """A feature extractor and what its inputs must look like."""

    module: nn.Module  # (B, 3, S, S) normalised -> (B, dim)
    dim: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)  # kind, id, source, revision, sha256s, parameters, pretrained

    @property
    def ids(self) -> set[str]:
        """Every name this backbone goes by (as given, resolved folder, Hub id), for the guard."""
        return {str(v) for k in ("id", "path", "folder") if (v := self.info.get(k))}

    @property
    def hashes(self) -> set[str]:
        return {h for h in [self.info.get("weights_sha256"), *self.info.get("weight_files", {}).values()] if h}


class HFFeatures(nn.Module):
    """A transformers vision model as (B, 3, S, S) -> (B, dim)."""

    def __init__(self, model: nn.Module, cls_token: bool, interpolate: bool):
        super().__init__()
        self.model = model
        self.cls_token = cls_token
        self.interpolate = interpolate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=x, **kwargs)
        if self.cls_token:
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)


def load_backbone(spec: str, image_size: int | None = None, revision: str | None = None) -> Backbone:
    """The backbone ``--backbone`` names (see the module docstring); ``image_size`` overrides its input side."""
    if spec == "ir50" or spec.startswith("ir50:"):
        return _ir50(spec.partition(":")[2] or None, image_size)
    return _transformers(spec, image_size, revision)


def _ir50(path: str | None, image_size: int | None) -> Backbone:
    from evaluation.ir50 import IR50, input_size_of, read_state_dict

    info = {"kind": "ir50", "id": "ir50" if path is None else f"ir50:{path}", "architecture": "IR-50 (face.evoLVe)",
            "pretrained": path is not None}
    if path is None:
        if image_size not in (None, 112, 224):
            raise UserError(f"--image-size {image_size}: IR-50 takes 112 or 224 px inputs", fix="use 112 or 224")
        model = IR50(image_size or 112)
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"--backbone: IR-50 checkpoint '{file}' does not exist",
                            fix="give ir50:PATH of a .safetensors or .pth state dict")
        try:
            state = read_state_dict(file)
            model = IR50(input_size_of(state))
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # not a state dict, pickled code refused by weights_only, shapes that do not fit
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"--backbone: '{file}' is not an IR-50 checkpoint ({why})",
                            fix="give the state dict of face.evoLVe's IR_50 (safetensors, or a .pth that loads with "
                            "torch.load(weights_only=True))") from None
        digest = file_sha256(file)
        info.update(path=str(file.resolve()), weights_sha256=digest, weight_files={file.name: digest})
        if image_size not in (None, model.input_size):
            raise UserError(f"--image-size {image_size}: this IR-50 checkpoint takes {model.input_size} px inputs",
                            fix=f"drop --image-size (or use {model.input_size})")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return Backbone(model, 512, model.input_size, *HALF, info=info)


def _is_local(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _hub_folder(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """(local snapshot folder, resolved revision) of a Hub model: configs and safetensors (.bin if none)."""
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                            allow_patterns=["*.json", "*.bin"]))
    except Exception as exc:  # offline cache miss, unknown repo, gated model, network
        where = f"revision '{revision}' of " if revision else ""
        if offline:
            raise UserError(f"--backbone: {where}'{repo_id}' is not in the local Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}) and the machine is offline (HF_HUB_OFFLINE=1)",
                            fix=f"on a connected machine run `hf download {repo_id}` and copy the cache over, or "
                            "give a local folder written by save_pretrained") from None
        raise UserError(f"--backbone: could not get {where}'{repo_id}' from the Hugging Face Hub: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        fix=f"check the id (e.g. {HUB_EXAMPLES}), log in for gated models, or use a local "
                        "folder") from None
    return folder, folder.name  # the cache's snapshot folder is named by the resolved commit


def _weight_files(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        real = path.resolve()
        blob = real.parent.name == "blobs" and len(real.name) == 64
        out[path.relative_to(folder).as_posix()] = real.name if blob else file_sha256(real)
    return out


def _preprocessing(folder: Path, config) -> tuple[tuple, tuple, int | None]:
    """(mean, std, native input side) from preprocessor_config.json, else the model type's usual values."""
    mean, std = HALF if config.model_type in CLS_TOKEN_MODELS else IMAGENET
    side = getattr(config, "image_size", None) if config.model_type in CLS_TOKEN_MODELS else None
    path = folder / "preprocessor_config.json"
    if path.is_file():
        pre = json.loads(path.read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
        size = pre.get("crop_size") or pre.get("size")
        if side is None and isinstance(size, dict):
            side = size.get("height") or size.get("shortest_edge")
        elif side is None and isinstance(size, int):
            side = size
    return mean, std, side


def _transformers(spec: str, image_size: int | None, revision: str | None) -> Backbone:
    import transformers
    from transformers import AutoConfig, AutoModel

    transformers.utils.logging.disable_progress_bar()
    if _is_local(spec):
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"--backbone folder '{spec}' has no config.json",
                            fix="give a folder written by save_pretrained, a Hub id "
                            f"({HUB_EXAMPLES}), or ir50:PATH")
        source, resolved = "local", "local"
    else:
        folder, resolved = _hub_folder(spec, revision)
        source = "hub"
    try:
        config = AutoConfig.from_pretrained(folder)
        kwargs = {"add_pooling_layer": False} if config.model_type in CLS_TOKEN_MODELS else {}
        model = AutoModel.from_pretrained(folder, **kwargs)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"--backbone '{spec}' does not load as a transformers vision model: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        fix=f"give an image backbone ({HUB_EXAMPLES}) or ir50:PATH") from None
    mean, std, native = _preprocessing(folder, config)
    side = image_size or native or 224
    cls_token = config.model_type in CLS_TOKEN_MODELS
    interpolate = cls_token and side != getattr(config, "image_size", side)
    module = HFFeatures(model, cls_token, interpolate)
    with torch.no_grad():
        was = model.training
        model.eval()
        dim = module(torch.zeros(1, 3, side, side)).shape[1]
        model.train(was)
    files = _weight_files(folder)
    info = {"kind": "transformers", "id": spec, "source": source, "folder": str(folder.resolve()),
            "revision": resolved, "model_type": config.model_type,
            "architecture": type(model).__name__, "weights_sha256": weights_sha256(folder) if files else None,
            "weight_files": files, "pretrained": True,
            "parameters": sum(p.numel() for p in model.parameters())}
    return Backbone(module, int(dim), int(side), tuple(mean), tuple(std), info=info)
