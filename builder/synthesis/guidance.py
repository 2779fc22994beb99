"""Semantic guidance (SynFER): steer denoising towards the target expression with a FER classifier.

At each guided step the sampler predicts x0 from the current latents, decodes
it, scores it with a differentiable FER classifier, and takes the gradient of
the target-class cross-entropy with respect to the text conditioning (SynFER)
or the latents. The conditioning (or latents) then moves by a normalised step
of size ``scale`` per sample:  c <- c - scale * g / ||g||.  Everything is
detached after each step, so no autograd graph outlives it.

Samples whose class the guide model does not know (e.g. contempt for a
FER2013 model) are generated without guidance.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from builder.core.errors import ModelLoadError


def predict_x0(scheduler, latents: torch.Tensor, model_output: torch.Tensor, t, index: int) -> torch.Tensor:
    """The scheduler's estimate of the clean latents at this step (epsilon or v prediction)."""
    kind = scheduler.config.prediction_type
    if getattr(scheduler, "sigmas", None) is not None and float(scheduler.init_noise_sigma) > 1.0:
        sigma = scheduler.sigmas[index].to(latents.device, latents.dtype)  # x_t = x0 + sigma * eps
        if kind == "epsilon":
            return latents - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + latents / (sigma**2 + 1)
    else:
        alpha_bar = scheduler.alphas_cumprod.to(latents.device)[int(t)].to(latents.dtype)
        if kind == "epsilon":
            return (latents - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
        if kind == "v_prediction":
            return alpha_bar.sqrt() * latents - (1 - alpha_bar).sqrt() * model_output
    raise ModelLoadError(f"semantic guidance does not support prediction_type '{kind}' with "
                         f"{type(scheduler).__name__}", fix="use an epsilon or v-prediction checkpoint")


def _noise(pipe, latents, t, cond, uncond, cfg_scale: float) -> torch.Tensor:
    model_in = pipe.scheduler.scale_model_input(latents, t)
    if uncond is None:
        return pipe.unet(model_in, t, encoder_hidden_states=cond).sample
    both = pipe.unet(torch.cat([model_in, model_in]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_u, eps_c = both.chunk(2)
    return eps_u + cfg_scale * (eps_c - eps_u)


def two_pass_noise(pipe, latents, t, cond, uncond, cfg_scale: float) -> torch.Tensor:
    """``_noise`` when only the text conditioning is differentiated: the unconditional half does not depend on
    it, so it runs without a graph and the backward pass covers half the batch (same result up to rounding)."""
    if uncond is None:
        return _noise(pipe, latents, t, cond, None, cfg_scale)
    model_in = pipe.scheduler.scale_model_input(latents, t)
    with torch.no_grad():
        eps_u = pipe.unet(model_in, t, encoder_hidden_states=uncond).sample
    eps_c = pipe.unet(model_in, t, encoder_hidden_states=cond).sample
    return eps_u + cfg_scale * (eps_c - eps_u)


def decode(pipe, latents: torch.Tensor, decoder=None) -> torch.Tensor:
    """Latents -> RGB in [0, 1], (B, 3, H, W), by the pipeline's VAE or ``decoder`` (an AutoencoderTiny)."""
    vae = decoder if decoder is not None else pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def guided_sample(pipe, cond: torch.Tensor, uncond: torch.Tensor | None, generators: list[torch.Generator], *,
                  steps: int, cfg_scale: float, height: int, width: int, guide, targets: Sequence[int | None],
                  scale: float, start: int, end: int, wrt: str = "text", on_step=None,
                  latents: torch.Tensor | None = None, decoder=None) -> torch.Tensor:
    """Sample with semantic guidance; returns RGB in [0, 1] as float32 (B, H, W, 3) on the CPU.

    ``targets[b]`` is sample b's class index in ``guide.labels`` (None: no
    guidance for it). Steps ``start <= i < end`` are guided. ``on_step(i)`` is
    called after every step (used to check memory). ``latents``: starting
    latents (layout initialisation) instead of seeded noise.
    """
    scheduler = pipe.scheduler
    device = pipe.unet.device
    scheduler.set_timesteps(steps, device=device)
    latents = pipe.prepare_latents(cond.shape[0], pipe.unet.config.in_channels, height, width, cond.dtype, device,
                                   generators, latents)
    mask = torch.tensor([t is not None for t in targets], device=device)
    target = torch.tensor([t if t is not None else 0 for t in targets], device=device)
    cond = cond.detach()
    for i, t in enumerate(scheduler.timesteps):
        if start <= i < end and bool(mask.any()):
            with torch.enable_grad():
                variable = (cond if wrt == "text" else latents).detach().requires_grad_(True)
                c, x = (variable, latents) if wrt == "text" else (cond, variable)
                if wrt == "text":
                    eps = two_pass_noise(pipe, x, t, c, uncond, cfg_scale)
                else:
                    eps = _noise(pipe, x, t, c, uncond, cfg_scale)
                image = decode(pipe, predict_x0(scheduler, x, eps, t, i), decoder)
                losses = F.cross_entropy(guide.logits(image.float()).float(), target, reduction="none")
                (grad,) = torch.autograd.grad((losses * mask).sum(), variable)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
            step = (scale * grad / norm).to(variable.dtype)
            if wrt == "text":
                cond = (cond - step).detach()
            else:
                latents = (latents - step).detach()
            eps = eps.detach()
            del variable, c, x, image, losses, grad
        else:
            with torch.no_grad():
                eps = _noise(pipe, latents, t, cond, uncond, cfg_scale)
        with torch.no_grad():
            latents = scheduler.step(eps, t, latents, generator=generators).prev_sample
        if on_step is not None:
            on_step(i)
    with torch.no_grad():
        return decode(pipe, latents).float().permute(0, 2, 3, 1).cpu()


def load_guide(spec, pipe, label_names, trust_remote_code: bool = False):
    """(guide classifier on the UNet's device, class index -> the guide's class index or None, the guide decoder or
    None, provenance) for a manifest's ``generator.guidance`` ``spec``; the generation and edit stages share it."""
    from builder.models.fer import align_labels
    from builder.models.store import load_fer_classifier, model_sha256

    guide = load_fer_classifier(spec.classifier, trust_remote_code=trust_remote_code).to(pipe.unet.device)
    indices, missing = align_labels(guide.labels, tuple(label_names))
    provenance = {"classifier": spec.classifier, "sha256": model_sha256(spec.classifier), "labels": list(guide.labels),
                  "unguided_classes": list(missing), "scale": spec.scale, "wrt": spec.wrt,
                  "start_step": spec.start_step, "end_step": spec.end_step}
    decoder = None
    if spec.decoder is not None:
        from builder.synthesis.guide_decoder import load_guide_decoder

        decoder, decoder_provenance = load_guide_decoder(spec.decoder, pipe)
        provenance.update(decoder_provenance)
    return guide, dict(enumerate(indices)), decoder, provenance
