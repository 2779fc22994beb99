"""A cheaper decoder of the predicted x0 for semantic guidance (``generator.guidance.decoder``).

Each guided step decodes the predicted clean latents and back-propagates the
guide's loss through the decoder. The SD VAE decoder costs about as much as
four UNet forwards at 512x512; a tiny autoencoder (TAESD, a diffusers
``AutoencoderTiny``) gives a close approximation of the same image for a small
fraction of that. Only the guide sees its output: final images are always
decoded by the pipeline's VAE.
"""
from __future__ import annotations

from pathlib import Path

from builder.core.errors import ModelLoadError
from builder.models.diffusion import weights_sha256


def resolve_decoder(ref: str) -> Path:
    """Local folder of ``ref`` (a folder with config.json, or a Hub id fetched to / found in the Hub cache)."""
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"generator.guidance.decoder folder '{ref}' has no config.json",
                                 fix="point at a diffusers AutoencoderTiny folder (e.g. a download of "
                                 "madebyollin/taesd), or remove the field to decode with the VAE")
        return local
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(ref, allow_patterns=["config.json", "*.safetensors"],
                                      local_files_only=offline))
    except Exception as exc:  # the Hub client raises several error types for a missing repo or network
        where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the machine is offline" if offline \
            else "the Hugging Face Hub"
        raise ModelLoadError(f"generator.guidance.decoder '{ref}' could not be found in {where}: "
                             f"{str(exc).splitlines()[0]}",
                             fix=f"run `hf download {ref}` on a connected machine and copy the cache, give a "
                             "local folder, or remove the field to decode with the VAE") from None


def load_guide_decoder(ref: str, pipe) -> tuple[object, dict]:
    """(AutoencoderTiny on the pipeline's device and dtype, frozen; provenance) for ``ref``."""
    from diffusers import AutoencoderTiny

    folder = resolve_decoder(ref)
    try:
        decoder = AutoencoderTiny.from_pretrained(folder, dtype=pipe.unet.dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load an AutoencoderTiny from generator.guidance.decoder '{ref}': "
                             f"{str(exc).splitlines()[0]}",
                             fix="give a diffusers AutoencoderTiny (TAESD) folder or Hub id") from None
    latent = pipe.unet.config.in_channels
    if decoder.config.latent_channels != latent:
        raise ModelLoadError(f"generator.guidance.decoder '{ref}' decodes {decoder.config.latent_channels}-channel "
                             f"latents, the generator makes {latent}-channel ones",
                             fix="use the tiny autoencoder made for this model family (TAESD for SD 1.x/2.x)")
    decoder = decoder.to(pipe.unet.device).eval().requires_grad_(False)
    return decoder, {"decoder": ref, "decoder_sha256": weights_sha256(folder)}
