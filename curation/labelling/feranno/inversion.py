"""Deterministic DDIM inversion of clean latents up to a small timestep, and the sampling back.

Both directions use the part of a ``steps``-step DDIM schedule that lies at or
below ``timestep`` (``schedule``), with the same prompt embedding and no
classifier-free guidance, so ``denoise_from(invert_to(x0))`` reconstructs x0
up to the usual DDIM-inversion error.
"""
from __future__ import annotations

import torch

from builder.models.latents import encode

__all__ = ["encode", "schedule", "invert_to", "denoise_from"]


def schedule(pipe, steps: int, timestep: int) -> list[int]:
    """Timesteps of a ``steps``-step DDIM schedule that are <= ``timestep``, ascending (the inversion order)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    kept = sorted(int(t) for t in scheduler.timesteps if int(t) <= timestep)
    if not kept:
        raise ValueError(f"no timestep of a {steps}-step DDIM schedule is <= {timestep}; raise the timestep or steps")
    return kept


@torch.no_grad()
def invert_to(pipe, latents: torch.Tensor, text: torch.Tensor, steps: int, timestep: int) -> tuple[torch.Tensor, int]:
    """Clean latents (B, 4, h, w) -> (x_t, t): DDIM-inverted to the last schedule step t <= ``timestep``."""
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = latents.to(pipe.unet.device, pipe.unet.dtype)
    text = _batch(text, x)
    ts = schedule(pipe, steps, timestep)
    for t in ts:
        x = scheduler.step(pipe.unet(x, t, encoder_hidden_states=text).sample, t, x).prev_sample
    return x, ts[-1]


@torch.no_grad()
def denoise_from(pipe, x_t: torch.Tensor, text: torch.Tensor, steps: int, timestep: int) -> torch.Tensor:
    """Deterministic DDIM sampling from ``x_t`` (as returned by ``invert_to``) back to clean latents."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = x_t.to(pipe.unet.device, pipe.unet.dtype)
    text = _batch(text, x)
    for t in reversed(schedule(pipe, steps, timestep)):
        x = scheduler.step(pipe.unet(x, t, encoder_hidden_states=text).sample, t, x).prev_sample
    return x


def _batch(text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings (1 or B, L, D) expanded to x's batch, device and dtype."""
    text = text.to(x.device, x.dtype)
    return text.expand(x.shape[0], -1, -1) if text.shape[0] == 1 else text
