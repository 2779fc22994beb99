"""The denoising objective of diffusers' text-to-image training scripts, as functions of explicit random draws.

Every draw (VAE posterior sample, noise, offset noise, timesteps) comes from a ``torch.Generator`` the caller
seeds from (seed, step, stream), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

from builder.core.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(scheduler, where: str) -> str:
    """The scheduler's ``prediction_type``, refused (naming ``where``) when the objective cannot follow it."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise UserError(f"the base model's scheduler predicts '{kind}'; training follows only "
                        f"{' and '.join(PREDICTION_TYPES)}", file=where,
                        fix="use a Stable Diffusion 1.x/2.x base model (epsilon or v-prediction)")
    return kind


def noisy_latents(scheduler, latents, generator, noise_offset: float = 0.0):
    """(noisy latents, noise, timesteps): uniform timesteps over the training schedule, Gaussian noise plus, with
    ``noise_offset``, a per-channel constant offset (Guttenberg's offset noise, as in diffusers' scripts)."""
    import torch

    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        noise = noise + noise_offset * offset.to(latents.device, latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    return scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def target_for(scheduler, latents, noise, timesteps):
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
    if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def denoising_loss(pred, target, scheduler, timesteps, snr_gamma: float | None):
    """MSE, or with ``snr_gamma`` the Min-SNR-gamma weighted MSE (Hang et al. 2023): per-sample weights
    min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1) for v-prediction, as diffusers' scripts."""
    import torch
    import torch.nn.functional as F

    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
        weights = clipped / (snr + 1)
    else:
        weights = clipped / snr
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (loss * weights).mean()
