"""Layout initialisation (SynFER): start denoising from a DDIM-inverted reference image.

A reference face is VAE-encoded and run backwards through deterministic DDIM
(no classifier-free guidance, empty prompt) to the first timestep of the
sampling schedule; that latent replaces the sample's random starting noise,
so the image keeps the reference's layout (pose, framing) while the prompt,
AUs and guidance decide the expression.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from builder.models.latents import ddim_invert, encode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class LayoutSource:
    """The reference images of a manifest's ``generator.layout``, and each sample's inverted start latent."""

    def __init__(self, spec, pipe, steps: int, height: int, width: int, seed: int):
        from diffusers import DDIMScheduler

        from builder.core.errors import ModelLoadError
        from builder.models.diffusion import file_sha256

        folder = Path(spec.images)
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not self.files:
            raise ModelLoadError(f"generator.layout.images '{folder}' holds no png, jpg or webp image",
                                 fix="point it at a folder of reference face images")
        if not isinstance(pipe.scheduler, DDIMScheduler):
            raise ModelLoadError(f"layout initialisation inverts with DDIM, but the scheduler is "
                                 f"{type(pipe.scheduler).__name__}", fix="set generator.scheduler: ddim")
        self.pipe, self.steps, self.size, self.seed = pipe, steps, (width, height), seed
        digest = hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}\n" for p in self.files).encode()).hexdigest()
        self.meta = {"images": str(folder), "count": len(self.files), "sha256": digest}
        self._cache: dict[str, torch.Tensor] = {}

    def reference(self, index: int) -> str:
        """File name of sample ``index``'s reference image."""
        from builder.core.seeding import derive_seed

        return self.files[derive_seed(self.seed, index, "layout") % len(self.files)].name

    def start_latents(self, names: list[str]) -> torch.Tensor:
        """Inverted latents (B, 4, h, w) for the given reference file names (each inverted once)."""
        from PIL import Image

        from builder.core.images import open_rgb8

        for name in dict.fromkeys(names):
            if name not in self._cache:
                image = open_rgb8(Path(self.meta["images"]) / name).resize(self.size, Image.BICUBIC)
                pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
                with torch.no_grad():
                    text, _ = self.pipe.encode_prompt([""], self.pipe.unet.device, 1, False)
                    self._cache[name] = ddim_invert(self.pipe, encode(self.pipe, pixels), self.steps, text)[0]
        return torch.stack([self._cache[n] for n in names])
