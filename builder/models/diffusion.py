"""Load a Stable Diffusion 1.x/2.x pipeline from the built-in model, a folder or the Hub.

The loader resolves the checkpoint to a local diffusers folder first (the Hub
cache when offline), so every build records which files it used: the model id,
the resolved revision and a sha256 over the weight files.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.core.errors import ModelLoadError
from builder.manifest import BUILTIN_TINY_MODEL, Generator

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Provenance:
    """Which generator made the images."""

    model: str
    revision: str
    weights_sha256: str
    license: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"generator.device is '{requested}' but no CUDA GPU is visible",
                             fix="set generator.device to 'auto' or 'cpu', or run on a GPU machine")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("generator.device is 'mps' but Apple's MPS backend is not available",
                             fix="set generator.device to 'auto' or 'cpu'")
    return requested


def resolve_dtype(requested: str, device: str):
    import torch

    if device == "cpu":
        if requested in ("float16", "bfloat16"):
            raise ModelLoadError(f"generator.dtype '{requested}' is not supported on CPU",
                                 fix="set generator.dtype to 'auto' or 'float32' on CPU")
        return torch.float32
    if requested == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return getattr(torch, requested)


def resolve_checkpoint(spec: Generator) -> tuple[Path, str]:
    """(local diffusers folder, revision) for the manifest's model, without loading weights."""
    model = spec.model
    if model == BUILTIN_TINY_MODEL:
        from builder.models.tiny_sd import TINY_VERSION, ensure_tiny_pipeline

        return ensure_tiny_pipeline(), f"builtin-{TINY_VERSION}"
    if model.startswith("builtin:"):
        raise ModelLoadError(f"generator.model '{model}' is not a built-in model",
                             fix=f"use '{BUILTIN_TINY_MODEL}', a Hub id or a local folder")
    local = Path(model).expanduser()
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        if not local.is_dir():
            raise ModelLoadError(f"generator.model folder '{model}' does not exist",
                                 fix="give a diffusers folder (with model_index.json) or a Hub id like 'org/name'")
        if not (local / "model_index.json").exists():
            raise ModelLoadError(f"generator.model folder '{model}' has no model_index.json",
                                 fix="point at a diffusers pipeline folder (save_pretrained output), not a single .ckpt file")
        return local, "local"
    return _download(model, spec.revision), spec.revision or "main"


def _download(repo_id: str, revision: str | None) -> Path:
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    try:
        folder = StableDiffusionPipeline.download(repo_id, revision=revision, local_files_only=offline)
    except OSError as exc:
        where = f"revision '{revision}' of " if revision else ""
        cache = constants.HF_HUB_CACHE
        if offline:
            raise ModelLoadError(
                f"{where}model '{repo_id}' is not in the local Hugging Face cache ({cache}) and the "
                "machine is offline (HF_HUB_OFFLINE=1)",
                fix=f"on a connected machine run `hf download {repo_id}` and copy the cache to {cache}, "
                "or set generator.model to a local diffusers folder",
            ) from None
        raise ModelLoadError(
            f"could not get {where}model '{repo_id}' from the Hugging Face Hub: {str(exc).splitlines()[0]}",
            fix="check the id and revision, log in (`hf auth login`) for gated models, or use a local folder",
        ) from None
    return Path(folder)


def weights_sha256(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every weight file in a diffusers folder.

    Files in the Hub cache are symlinks to blobs named by their sha256; those
    names are used instead of re-hashing gigabytes.
    """
    outer = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for path in files:
        real = path.resolve()
        digest = real.name if real.parent.name == "blobs" and _SHA256.match(real.name) else file_sha256(real)
        outer.update(f"{path.relative_to(folder).as_posix()}:{digest}\n".encode())
    return outer.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_license(folder: Path, model: str) -> str | None:
    if model == BUILTIN_TINY_MODEL:
        return "mit"  # random weights built by this tool, under the tool's licence
    readme = folder / "README.md"
    if not readme.exists():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # a malformed model card must not stop generation
        return None


def quiet_loading() -> None:
    """No per-component progress bars while loading (the tool shows its own progress)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(spec: Generator):
    """(pipeline on its device, resolved torch dtype, Provenance) for a manifest's generator section."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    quiet_loading()

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    folder, revision = resolve_checkpoint(spec)
    if folder.name and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        revision = folder.name  # the Hub cache's snapshot folder is the resolved commit
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            folder,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        # UnpicklingError: a .bin weight file that torch.load(weights_only=True) refuses (a pickle with code)
        raise ModelLoadError(
            f"could not load a Stable Diffusion pipeline from '{spec.model}' ({folder}): {str(exc).splitlines()[0]}",
            fix="generator.model must be a Stable Diffusion 1.x/2.x diffusers checkpoint with unet, vae, "
            "text_encoder, tokenizer and scheduler",
        ) from None
    if spec.scheduler != "default":
        pipe.scheduler = getattr(diffusers, SCHEDULERS[spec.scheduler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        component.requires_grad_(False)  # frozen: guidance differentiates inputs, never weights
    pipe = pipe.to(device)
    provenance = Provenance(
        model=spec.model, revision=revision, weights_sha256=weights_sha256(folder), license=_read_license(folder, spec.model)
    )
    return pipe, dtype, provenance

