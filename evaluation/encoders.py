"""Image encoders for ``build-dataset fidelity``: PIL images in, one feature vector per image out.

``--encoder`` takes a Hugging Face Hub id or a local ``save_pretrained`` folder of a transformers vision model:

- CLIP (``openai/clip-vit-base-patch32``, the default; a full ``CLIPModel`` or a ``CLIPVisionModelWithProjection``
  checkpoint): the projected image embedding (``image_embeds``), the space SyntFER's FID/KID use; a
  ``CLIPVisionModel`` without projection gives its pooled [CLS] output;
- DINOv2 (``facebook/dinov2-base``, ``facebook/dinov2-large``; Stein et al. 2023 recommend ViT-L/14): the [CLS]
  token after the final layer norm;
- any other ``AutoModel`` image backbone: its pooled output (ViT-like models: the [CLS] token), else the mean of
  its last hidden state.

The checkpoint must come with its image processor (``preprocessor_config.json``, read by ``AutoImageProcessor``
with the PIL backend): resizing, cropping and normalisation are the encoder's own, the same for both image sets.
Loading follows ``evaluation.backbones``: Hub files through the Hub cache (``snapshot_download``; offline,
``HF_HUB_OFFLINE=1``, the cache only), ``from_pretrained`` with ``local_files_only`` and ``use_safetensors``,
never ``trust_remote_code``. Only safetensors weights are read: a folder holding only pickled weights
(``pytorch_model.bin``, ``.pt``, ``.pth``, ``.ckpt``) is refused, as is a checkpoint that leaves encoder weights
uninitialised (its features would be random).

The FID Inception network is not offered: its only packaged implementations (torch-fidelity, which torchmetrics'
``FrechetInceptionDistance(feature=2048)`` uses, and pytorch-fid) need torchvision, which has no build for the CPU
torch this tool pins, and torch-fidelity reads a local weights file with ``torch.load(weights_only=False)`` (a
pickle, refused by the tool's trust rules). ``--encoder inception`` says so and where its weights would live.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.core.errors import UserError

if TYPE_CHECKING:
    import torch

DEFAULT_ENCODER = "openai/clip-vit-base-patch32"
EXAMPLES = "openai/clip-vit-base-patch32, openai/clip-vit-large-patch14, facebook/dinov2-base, facebook/dinov2-large"
INCEPTION = ("inception", "inception-v3", "inceptionv3", "fid-inception")
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
PICKLED = (".bin", ".pt", ".pth", ".ckpt")
CLS_TOKEN_MODELS = ("vit", "deit", "beit", "dinov2", "dinov2_with_registers", "vit_msn", "vit_mae")
FIX = f"give a transformers image encoder with its image processor: a Hub id ({EXAMPLES}) or a save_pretrained folder"


@dataclass
class Encoder:
    """A loaded encoder: ``encode(images)`` -> (B, dim) float32 features on the CPU."""

    model: object  # the transformers model, eval mode, on ``device``
    processor: object  # its image processor (PIL backend)
    output: str  # "image_embeds" (CLIP projection), "cls" ([CLS] token), "pooled" (pooler output or mean)
    device: str
    dim: int = 0
    info: dict = field(default_factory=dict)  # id, source, folder, revision, architecture, weights, parameters

    def encode(self, images: list) -> torch.Tensor:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            out = self.model(pixel_values=pixels)
        if self.output == "image_embeds":
            features = out.image_embeds
        elif self.output == "cls":
            features = out.last_hidden_state[:, 0]
        else:
            pooled = getattr(out, "pooler_output", None)
            hidden = out.last_hidden_state
            features = pooled.flatten(1) if pooled is not None else (
                hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1))
        return features.float().cpu()


def load_encoder(spec: str, revision: str | None = None, device: str = "cpu", log=print) -> Encoder:
    """The encoder ``--encoder`` names (see the module docstring), in eval mode on ``device``."""
    if spec.lower() in INCEPTION:
        _refuse_inception()
    folder, source, resolved = _resolve(spec, revision)
    _check_weights(folder, spec)
    import torch
    import transformers
    from transformers import AutoConfig

    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"--encoder '{spec}': config.json is not a transformers model config ({_first(exc)})",
                        file=str(folder / "config.json"), fix=FIX) from None
    cls, output = _model_class(config, spec, folder)
    processor = image_processor(folder, spec)
    log(f"loading encoder {spec} ({cls.__name__}, {source}{'' if source == 'local' else ' ' + resolved})")
    model, loading = pretrained(cls, folder, spec)
    missing = sorted(k for k in loading.get("missing_keys") or ()
                     if not (output == "cls" and k.startswith("pooler.")))  # the [CLS] token needs no pooler
    if missing:
        raise UserError(f"--encoder '{spec}': its weights leave {len(missing)} {cls.__name__} tensor(s) "
                        f"uninitialised ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); its "
                        "features would be random", file=str(folder),
                        fix=f"give a complete checkpoint of the encoder ({EXAMPLES})")
    model = model.to(device).eval().requires_grad_(False)
    encoder = Encoder(model, processor, output, device)
    from PIL import Image

    encoder.dim = int(encoder.encode([Image.new("RGB", (64, 64), (128, 128, 128))]).shape[1])
    files = _weight_files(folder)
    encoder.info = {"id": spec, "source": source, "folder": str(folder.resolve()), "revision": resolved,
                    "model_type": config.model_type, "architecture": cls.__name__, "features": output,
                    "feature_dim": encoder.dim, "weights_sha256": _combined(files), "weight_files": files,
                    "processor": type(processor).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                    "torch_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                    "device": device, "threads": torch.get_num_threads()}
    return encoder


def image_processor(folder: Path, spec: str, flag: str = "--encoder"):
    """The model folder's image processor (PIL backend); a ``UserError`` naming ``flag`` when it has none."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"{flag} '{spec}' has no image processor (preprocessor_config.json): {_first(exc)}",
                        file=str(folder), fix="save the processor next to the model: AutoImageProcessor."
                        "from_pretrained(HUB_ID).save_pretrained(FOLDER), or give a Hub id") from None


def pretrained(cls, folder: Path, spec: str, flag: str = "--encoder"):
    """(model, loading info) of ``cls`` from ``folder``: local files only, safetensors only."""
    try:
        with _quiet_transformers():
            return cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, output_loading_info=True)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise UserError(f"{flag} '{spec}' does not load as {cls.__name__}: {_first(exc)}", file=str(folder),
                        fix="save the model again with save_pretrained (config.json and model.safetensors)") from None


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _refuse_inception():
    import torch

    where = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    raise UserError("--encoder inception: the FID Inception network needs the torch-fidelity package (it needs "
                    "torchvision, which has no build for the CPU torch this tool pins) and its weights file "
                    f"{INCEPTION_WEIGHTS} ({INCEPTION_URL}, read from {where}); torch-fidelity loads a local weights "
                    "file as a pickle, which this tool refuses",
                    fix=f"use a CLIP or DINOv2 encoder ({EXAMPLES}); Stein et al. (2023) recommend DINOv2 ViT-L/14 "
                    "over Inception")


def _is_local(spec: str) -> bool:
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _resolve(spec: str, revision: str | None, flag: str = "--encoder", fix: str = FIX) -> tuple[Path, str, str]:
    """(local folder, 'local' or 'hub', resolved revision); ``flag`` and ``fix`` word the messages (the audit's
    ``--classifier`` loads its models the same way)."""
    if _is_local(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise UserError(f"{flag} folder '{spec}' does not exist", file=str(folder), fix=fix)
        if not (folder / "config.json").is_file():
            raise UserError(f"{flag} folder '{spec}' has no config.json: not a transformers model folder",
                            file=str(folder), fix=fix)
        return folder, "local", "local"
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE
    try:
        folder = Path(snapshot_download(spec, revision=revision, local_files_only=offline,
                                        allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # offline cache miss, unknown repo, gated model, network
        where = f"revision '{revision}' of " if revision else ""
        if offline:
            raise UserError(f"{flag}: {where}'{spec}' is not in the local Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}) and the machine is offline (HF_HUB_OFFLINE=1)",
                            fix=f"on a connected machine run `hf download {spec}` and copy the cache over, or give "
                            "a local folder written by save_pretrained") from None
        raise UserError(f"{flag}: could not get {where}'{spec}' from the Hugging Face Hub: {_first(exc)}",
                        fix=f"check the id{f' (e.g. {EXAMPLES})' if flag == '--encoder' else ''}, log in for gated "
                        "models, or use a local folder") from None
    if not any(folder.rglob("*.safetensors")):
        raise UserError(f"{flag} '{spec}' has no safetensors weights on the Hub (only pickled ones, which are "
                        "refused because loading one can run code)", file=str(folder),
                        fix="pick a checkpoint that ships model.safetensors, or convert it (load it yourself and "
                        "save_pretrained a local folder) and give that folder")
    return folder, "hub", folder.name  # the cache's snapshot folder is named by the resolved commit


def _check_weights(folder: Path, spec: str, flag: str = "--encoder") -> None:
    """Safetensors weights, complete; a folder with only pickled weights (or none) is refused."""
    from builder.models.files import safetensors_problem

    safe = sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    if not safe:
        pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLED and p.is_file())
        if pickled:
            raise UserError(f"{flag} '{spec}' holds only pickled weights ({', '.join(pickled[:3])}); pickles are "
                            "refused because loading one can run code", file=str(folder),
                            fix="convert it to safetensors: load it once where you trust it and save_pretrained it "
                            "again (transformers writes model.safetensors), or give a Hub id that ships safetensors")
        raise UserError(f"{flag} '{spec}' has no weights (no model.safetensors)", file=str(folder),
                        fix="save the model into this folder with save_pretrained (config.json and model.safetensors)")
    for path in safe:
        problem = safetensors_problem(path)
        if problem:
            raise UserError(f"{flag} weights {path.name} {problem}", file=str(path),
                            fix="save the model again with save_pretrained")


def _model_class(config, spec: str, folder: Path):
    """(transformers class to load, which output is the feature) for ``config``; refused unless it reads images."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_type = config.model_type
    if model_type == "clip":  # a full CLIP checkpoint: its vision tower and projection
        return CLIPVisionModelWithProjection, "image_embeds"
    if model_type == "clip_vision_model":
        if "CLIPVisionModelWithProjection" in (getattr(config, "architectures", None) or ()):
            return CLIPVisionModelWithProjection, "image_embeds"
        return CLIPVisionModel, "pooled"
    cls = MODEL_MAPPING.get(type(config), None)  # no model class of that config: not a model AutoModel knows
    if cls is None or getattr(cls, "main_input_name", None) != "pixel_values":
        arch = ", ".join(getattr(config, "architectures", None) or ()) or (cls.__name__ if cls else model_type)
        tower = (" (a vision-language model: only CLIP's vision tower is extracted)"
                 if hasattr(config, "vision_config") else "")
        raise UserError(f"--encoder '{spec}' is a '{model_type}' model ({arch}) that does not read images "
                        f"(its input is not pixel_values): not a vision model{tower}",
                        file=str(folder / "config.json"), fix=FIX)
    return cls, "cls" if model_type in CLS_TOKEN_MODELS else "pooled"


def _weight_files(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of each safetensors file (Hub blobs by their name, local files hashed)."""
    from builder.models.diffusion import file_sha256

    out = {}
    for path in sorted(p for p in folder.rglob("*.safetensors") if p.is_file()):
        real = path.resolve()
        blob = real.parent.name == "blobs" and len(real.name) == 64
        out[path.relative_to(folder).as_posix()] = real.name if blob else file_sha256(real)
    return out


def _combined(files: dict[str, str]) -> str:
    """sha256 over "path:sha256" lines (``builder.models.diffusion.weights_sha256``'s recipe, safetensors only)."""
    import hashlib

    return hashlib.sha256("".join(f"{name}:{digest}\n" for name, digest in files.items()).encode()).hexdigest()


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report (unused text tower of a CLIP checkpoint) off the console; missing keys are
    checked here instead."""
    import transformers

    logging = transformers.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)
    sys.stderr.flush()
