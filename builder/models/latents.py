"""Latents of a Stable Diffusion pipeline: VAE encoding and deterministic DDIM inversion and sampling (used by
layout initialisation, FERAnno's inversion and expression editing)."""
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


@torch.no_grad()
def ddim_invert_along(pipe, latents: torch.Tensor, timesteps: list[int], text: torch.Tensor) -> torch.Tensor:
    """Clean latents -> the noisy latents at the first (largest) of ``timesteps``: the DDIM timesteps, descending,
    that the pipeline's DDIM scheduler (``set_timesteps`` already called) will then denoise through. Unlike
    ``ddim_invert`` it can stop part-way (an edit's ``strength``), exactly on the forward schedule's timesteps."""
    scheduler = pipe.scheduler
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps

    def alpha(t: int):
        return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod

    x = latents
    for t in reversed(timesteps):  # ascending: from the clean latents towards noise
        eps = pipe.unet(x, t, encoder_hidden_states=text).sample
        alpha_prev, alpha_t = alpha(t - ratio), alpha(t)
        x0 = (x - (1 - alpha_prev) ** 0.5 * eps) / alpha_prev ** 0.5
        x = alpha_t ** 0.5 * x0 + (1 - alpha_t) ** 0.5 * eps
    return x
