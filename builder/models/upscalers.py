"""Image super-resolution models (``annotate.upscale.model``): a transformers image-to-image model that enlarges
an image by a fixed factor, e.g. Swin2SR, from a Hub id or a local ``save_pretrained`` folder.

``reference_problems(ref)`` checks a reference without loading weights (for ``build-dataset validate``): the
folder exists, is not a diffusers pipeline, holds a ``config.json`` whose ``model_type`` is a super-resolution
model with an upscale factor of 2, 3, 4 or 8, and its weights; a Hub id is valid and, offline
(``HF_HUB_OFFLINE``), in the local Hugging Face cache. ``load_upscaler(ref, device)`` runs the same checks on the
resolved folder, loads the model (``AutoModelForImageToImage``, never with remote code), and confirms on a blank
image that it enlarges by its configured factor.

The model sees RGB in [0, 1] (what Swin2SR's image processor gives: a rescale by 1/255, no normalisation; the model
subtracts its own mean), padded by reflection to a multiple of its attention window; its output is cropped back to
exactly ``scale`` times the input and rounded to 8-bit. No torch at import.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import ModelLoadError
from builder.models.files import first_line

FIELD = "annotate.upscale.model"
SUPER_RESOLUTION = {"swin2sr": ("upscale", 2)}
"""model_type -> (config field holding the upscale factor, its default): the transformers models of the
image-to-image task (``AutoModelForImageToImage``) that enlarge images. Kept here, not read from transformers'
auto mapping, because importing that imports torch."""
UPSAMPLERS = {"swin2sr": ("upsampler", "pixelshuffle", ("pixelshuffle", "pixelshuffle_aux", "pixelshuffledirect",
                                                        "nearest+conv"))}
"""model_type -> (config field, default, values that enlarge): Swin2SR without one of these upsamplers only
restores (denoising, JPEG artefacts) at the input's size."""
SCALES = (2, 3, 4, 8)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
WHAT = "a transformers image super-resolution model (e.g. a Swin2SR checkpoint such as "\
       "caidas/swin2SR-classical-sr-x2-64), as a Hub id or a local save_pretrained folder"
FIX = f"set {FIELD} to {WHAT}, or to 'none' to resize small faces with a bicubic filter"
SCALE_FIX = (f"use a super-resolution checkpoint that enlarges by {', '.join(map(str, SCALES))} (e.g. a Swin2SR "
             "'classical-sr-x2' or 'x4' model), or set it to 'none'")
BATCH_SIZE = 8
"""Images of the same size per model call."""


def is_local(ref: str) -> bool:
    """A local path rather than a Hub id (the rule of ``builder.models.diffusion.resolve_checkpoint``)."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


# -- checks without weights ------------------------------------------------------------------------------------------
def config_problem(config, where: str) -> tuple[str, str] | None:
    """(message, fix) when a parsed ``config.json`` (at ``where``) is not an RGB super-resolution model enlarging by
    2, 3, 4 or 8; None when it is."""
    if not isinstance(config, dict):
        return f"{where} is not a JSON object", FIX
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        if "_class_name" in config:
            return (f"{where} is the config of a diffusers {config['_class_name']}, not of a transformers model",
                    FIX)
        return f"{where} names no model_type: not a transformers model config", FIX
    if model_type not in SUPER_RESOLUTION:
        arch = config.get("architectures")
        named = f" ({', '.join(map(str, arch))})" if isinstance(arch, list) and arch else ""
        return (f"{where} is a '{model_type}' model{named}, not an image super-resolution model (supported: "
                f"{', '.join(sorted(SUPER_RESOLUTION))})", FIX)
    key, default = SUPER_RESOLUTION[model_type]
    factor = config.get(key, default)
    upsampler_key, upsampler_default, enlarging = UPSAMPLERS.get(model_type, (None, None, ()))
    upsampler = config.get(upsampler_key, upsampler_default) if upsampler_key else None
    if upsampler_key and upsampler not in enlarging:
        return (f"{where} has the wrong scale: its upsampler '{upsampler}' restores images at their own size "
                "(a denoising or JPEG-artefact model), it does not enlarge them", SCALE_FIX)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor not in SCALES:
        return (f"{where} has the wrong scale: '{key}' is {factor!r}, an image super-resolution model here must "
                f"enlarge by {', '.join(map(str, SCALES))}", SCALE_FIX)
    channels = config.get("num_channels", 3)
    out = config.get("num_channels_out") or channels
    if channels != 3 or out != 3:
        return (f"{where} reads {channels} and writes {out} channels; faces are RGB (3)",
                "use a super-resolution checkpoint for RGB images")
    return None


def read_config(path: Path) -> tuple[dict | None, tuple[str, str] | None]:
    """(parsed config.json, None) or (None, (message, fix)) when it cannot be read or is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        return None, (f"{path} cannot be read as JSON ({why})", "save the model again with save_pretrained")


def folder_problems(folder: Path, ref: str) -> list[tuple[str, str]]:
    """(message, fix) of everything wrong with a local model folder; [] when it looks like a loadable
    super-resolution model."""
    from builder.models.files import safetensors_problem

    if not folder.exists():
        return [(f"'{ref}' does not exist", FIX)]
    if not folder.is_dir():
        return [(f"'{ref}' is not a folder", FIX)]
    if (folder / "model_index.json").is_file():
        return [(f"'{ref}' is a diffusers pipeline folder (it has model_index.json), not an image super-resolution "
                 "model", FIX)]
    if not (folder / "config.json").is_file():
        return [(f"'{ref}' has no config.json: not a transformers model folder", FIX)]
    config, bad = read_config(folder / "config.json")
    bad = bad or config_problem(config, f"'{ref}'")
    if bad:
        return [bad]
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return [(f"'{ref}' has no weights ({' or '.join(WEIGHT_FILES[::2])})",
                 "save the model with save_pretrained into this folder (config.json and its weights)")]
    return [(f"{path} {problem}", "save the model again with save_pretrained")
            for path in weights if path.suffix == ".safetensors" and (problem := safetensors_problem(path))]


def reference_problems(ref: str) -> list[tuple[str, str]]:
    """(message, fix) of every problem of the ``annotate.upscale.model`` reference ``ref``, without loading weights:
    a local folder is checked whole (``folder_problems``); a Hub id must be valid and, when the machine is offline
    (``HF_HUB_OFFLINE``), in the local Hugging Face cache with its config and weights; a cached config is checked
    online too (an uncached one is the load's to fetch). ``'none'`` has none."""
    if ref == "none":
        return []
    if is_local(ref):
        return folder_problems(Path(ref).expanduser(), ref)
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return [(f"'{ref}' is neither an existing local folder nor a Hub id", FIX)]
    offline = constants.HF_HUB_OFFLINE

    def cached(filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(ref, filename)
        except (HFValidationError, ValueError, OSError):
            return None
        return found if isinstance(found, str) else None

    config = cached("config.json")
    if config is None:
        if not offline:
            return []
        return [(f"'{ref}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the machine is "
                 "offline (HF_HUB_OFFLINE=1)", f"run `hf download {ref}` on a connected machine and copy the cache "
                 f"over, set {FIELD} to a local save_pretrained folder, or unset HF_HUB_OFFLINE")]
    parsed, bad = read_config(Path(config))
    bad = bad or config_problem(parsed, f"'{ref}' (config.json)")
    if bad:
        return [bad]
    if offline and not any(cached(name) for name in WEIGHT_FILES):
        return [(f"'{ref}' has its config.json but no weights in the local Hugging Face cache "
                 f"({constants.HF_HUB_CACHE}) and the machine is offline (HF_HUB_OFFLINE=1)",
                 f"run `hf download {ref}` on a connected machine and copy the cache over")]
    return []


# -- loading ---------------------------------------------------------------------------------------------------------
@dataclass
class Upscaler:
    """A loaded super-resolution model: ``name`` (the reference), ``scale`` (its factor), ``sha256`` (of its
    weight files), ``revision`` ('local' or the Hub commit) and ``upscale(images)``."""

    model: object = field(repr=False)
    name: str
    scale: int
    sha256: str
    revision: str
    device: str = "cpu"
    window: int = 1
    batch_size: int = BATCH_SIZE

    def provenance(self) -> dict:
        return {"model": self.name, "sha256": self.sha256, "scale": self.scale, "revision": self.revision}

    def upscale(self, images: list) -> list:
        """Each RGB PIL image enlarged ``scale`` times (same order). Images of one size run together in batches of
        ``batch_size`` (sizes in ascending order), so the output depends only on the images given."""
        from collections import defaultdict

        out: list = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_size[image.size].append(i)
        for size in sorted(by_size):
            indices = by_size[size]
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                for i, result in zip(chunk, self._run([images[i] for i in chunk])):
                    out[i] = result
        return out

    def _run(self, images: list) -> list:
        """One batch of same-size images through the model."""
        import numpy as np
        import torch
        from PIL import Image

        pixels = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        height, width = batch.shape[2:]
        pad_h, pad_w = (-height) % self.window, (-width) % self.window
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            batch = torch.nn.functional.pad(batch, (0, pad_w, 0, pad_h), mode=mode)
        with torch.inference_mode():
            result = self.model(pixel_values=batch.to(self.device)).reconstruction
        want = (height * self.scale, width * self.scale)
        if result.shape[2] < want[0] or result.shape[3] < want[1]:
            raise RuntimeError(f"the upscaler returned {tuple(result.shape[2:])} pixels for {height}x{width}, "
                               f"expected {want[0]}x{want[1]}")
        result = result[:, :, :want[0], :want[1]].float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return [Image.fromarray(a) for a in result.permute(0, 2, 3, 1).cpu().numpy()]


def resolve_upscaler(ref: str) -> tuple[Path, str]:
    """(local folder, revision) of ``ref``: a local folder as is ('local'), a Hub id downloaded to or found in the
    Hub cache (offline: the cache only); the revision is the snapshot's commit."""
    import re

    if is_local(ref):
        return Path(ref).expanduser(), "local"
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise ModelLoadError(f"{FIELD}: '{ref}' is neither an existing local folder nor a Hub id", fix=FIX) from None
    offline = constants.HF_HUB_OFFLINE
    try:
        folder = Path(snapshot_download(ref, allow_patterns=["*.json", *WEIGHT_FILES, "*.safetensors"],
                                        local_files_only=offline))
    except Exception as exc:  # the Hub client raises several error types for a missing repo or network
        if offline:
            raise ModelLoadError(f"{FIELD}: '{ref}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                                 "and the machine is offline (HF_HUB_OFFLINE=1)",
                                 fix=f"run `hf download {ref}` on a connected machine and copy the cache over, or "
                                 f"set {FIELD} to a local save_pretrained folder") from None
        raise ModelLoadError(f"{FIELD}: could not get '{ref}' from the Hugging Face Hub: {str(exc).splitlines()[0]}",
                             fix="check the id, log in (`hf auth login`) for gated models, or use a local "
                             "folder") from None
    return folder, folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else "hub"


def load_upscaler(ref: str, device: str = "cpu") -> Upscaler:
    """The super-resolution model ``ref`` (Hub id or local folder) in eval mode on ``device``, float32;
    ``ModelLoadError`` naming ``annotate.upscale.model`` for anything that is not one (see the module docstring)."""
    folder, revision = resolve_upscaler(ref)
    found = folder_problems(folder, ref)
    if found:
        message, fix = found[0]
        config = folder / "config.json"
        raise ModelLoadError(f"{FIELD}: {message}", file=str(config if config.is_file() else folder), fix=fix)
    import torch
    import transformers
    from transformers import AutoModelForImageToImage

    from builder.models.diffusion import weights_sha256

    transformers.utils.logging.disable_progress_bar()  # the tool shows its own progress

    try:
        model = AutoModelForImageToImage.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # transformers, torch and safetensors raise many types for a bad checkpoint
        where = f"'{ref}'" if folder == Path(ref).expanduser() else f"'{ref}' ({folder})"
        if "mismatched" in str(exc) or "size mismatch" in str(exc):
            raise ModelLoadError(f"{FIELD}: the weights of {where} do not fit its config.json (tensor shapes differ)",
                                 file=str(folder / "config.json"), fix="save the model again with save_pretrained, "
                                 "so config.json and the weights come from the same model") from None
        raise ModelLoadError(f"{FIELD}: could not load an image super-resolution model from {where}: "
                             f"{first_line(exc)}", file=str(folder),
                             fix="give a folder saved with save_pretrained (config.json and model.safetensors) or a "
                             "Hub id of a super-resolution checkpoint, or set it to 'none'") from None
    config = model.config
    key, default = SUPER_RESOLUTION[config.model_type]
    scale = int(getattr(config, key, default))
    model = model.to(device).eval().requires_grad_(False)
    upscaler = Upscaler(model=model, name=ref, scale=scale, sha256=weights_sha256(folder), revision=revision,
                        device=device, window=int(getattr(config, "window_size", 1) or 1))
    _probe(upscaler, folder, key)
    return upscaler


def _probe(upscaler: Upscaler, folder: Path, key: str) -> None:
    """Run the model once on a blank image of one window: it must enlarge by exactly its declared factor."""
    import torch

    side = max(upscaler.window, 8)
    with torch.inference_mode():
        out = upscaler.model(pixel_values=torch.full((1, 3, side, side), 0.5, device=upscaler.device))
    got = tuple(getattr(out, "reconstruction", torch.empty(0)).shape[2:])
    if got != (side * upscaler.scale,) * 2:
        raise ModelLoadError(f"{FIELD}: '{upscaler.name}' has the wrong scale: its config says {key} "
                             f"{upscaler.scale}, it turned a {side} px image into {'x'.join(map(str, got)) or 'nothing'}",
                             file=str(folder / "config.json"), fix=SCALE_FIX)
