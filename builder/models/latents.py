"""Latents of a Stable Diffusion pipeline: VAE encoding and deterministic DDIM inversion and sampling (used by
layout initialisation and by FERAnno's inversion)."""
from __future__ import annotations

import torch


def encode(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], (B, 3, H, W) -> scaled VAE latents (the latent distribution's mean)."""
    x = pixels.to(pipe.vae.device, pipe.vae.dtype) * 2 - 1
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def ddim_invert(pipe, latents: torch.Tensor, steps: int, text: torch.Tensor) -> torch.Tensor:
    """Clean latents -> the noisy latents DDIM sampling with ``steps`` steps would start from."""
    from diffusers import DDIMInverseScheduler

    return _run_ddim(pipe, latents, steps, text, DDIMInverseScheduler)


@torch.no_grad()
def ddim_sample(pipe, start: torch.Tensor, steps: int, text: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from ``start`` to clean latents (no guidance); inverse of ``ddim_invert``."""
    from diffusers import DDIMScheduler

    return _run_ddim(pipe, start, steps, text, DDIMScheduler)


def _run_ddim(pipe, x: torch.Tensor, steps: int, text: torch.Tensor, scheduler_class) -> torch.Tensor:
    scheduler = scheduler_class.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=x.device)
    for t in scheduler.timesteps:
        x = scheduler.step(pipe.unet(x, t, encoder_hidden_states=text).sample, t, x).prev_sample
    return x
