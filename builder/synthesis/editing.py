"""Expression editing of an existing face: DDIM inversion, then denoising towards a target prompt while the early
steps' self-attention reads the source's keys and values (MasaCtrl-style mutual self-attention), so layout and
identity carry over while the expression follows the target prompt.

``edit`` works on a loaded ``StableDiffusionPipeline`` (DDIM scheduler): the source image is encoded (the VAE
posterior's mean: no random draw), inverted along the last ``strength`` of ``steps`` DDIM timesteps with its own
prompt, and two branches denoise from the inverted latents in one batch: the source branch with the source prompt
(it reconstructs the source and provides keys and values) and the edit branch with the target prompt. For the
first ``inject_steps`` denoising steps the edit branch's self-attention layers (``attn1``; all of them, or those
of the UNet's up blocks) attend to the source branch's keys and values instead of their own. Everything is
deterministic (DDIM with eta 0, no sampling), so the same inputs give the same image. ``strength`` 0 is no edit:
the source image is returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditSettings:
    steps: int = 50
    strength: float = 0.6
    guidance_scale: float = 7.5
    inject_steps: int = 10
    inject_layers: str = "all"  # 'all' attn1 layers, or 'up' (the UNet's decoder, as MasaCtrl)


def inversion_timesteps(pipe, steps: int, strength: float) -> list[int]:
    """The DDIM timesteps (descending) an edit denoises through: the last ``round(steps * strength)``."""
    pipe.scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    count = round(steps * strength)
    return timesteps[len(timesteps) - count:] if count else []


def encode_image(pipe, image):
    """A PIL RGB image -> its latents (``builder.models.latents.encode``: the posterior mean, scaled)."""
    import numpy as np
    import torch

    from builder.models.latents import encode

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        return encode(pipe, pixels)


def _embed(pipe, prompts: list[str]):
    """Text-encoder embeddings of ``prompts`` (the pipeline's own ``encode_prompt``, no guidance)."""
    import torch

    with torch.no_grad():
        return pipe.encode_prompt(prompts, pipe.unet.device, 1, False)[0]


class _Injection:
    """Shared state of the mutual self-attention processors: on for the first ``inject_steps`` steps; ``group``
    rows per guidance half, the first of each group the source."""

    def __init__(self, group: int = 2):
        self.active = False
        self.group = group


class MutualSelfAttention:
    """A self-attention processor for a batch laid out in groups [source, edit 1, ..., edit K] (with
    classifier-free guidance: the unconditional groups, then the conditional ones): while the injection is
    active, each row attends to the keys and values of its group's source row; otherwise it runs the layer's own
    processor."""

    def __init__(self, inner, injection: _Injection):
        self.inner, self.injection = inner, injection

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        plain = (not self.injection.active or encoder_hidden_states is not None or attention_mask is not None
                 or attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3)
        if plain:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        import torch.nn.functional as F

        batch, tokens, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        group = self.injection.group
        source = key.new_tensor([i - i % group for i in range(batch)]).long()  # each row -> its group's source
        key, value = key[source], value[source]
        heads = attn.heads

        def split(x):
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _install(pipe, layers: str, group: int) -> tuple[_Injection, dict]:
    """Wrap the chosen self-attention layers; returns the switch and the processors to restore."""
    injection = _Injection(group)
    original = dict(pipe.unet.attn_processors)
    chosen = {name: (MutualSelfAttention(proc, injection) if ".attn1." in name and
                     (layers == "all" or name.startswith("up_blocks.")) else proc)
              for name, proc in original.items()}
    pipe.unet.set_attn_processor(chosen)
    return injection, original


@dataclass(frozen=True)
class EditGuidance:
    """Semantic guidance of the edits (``builder.synthesis.guidance``'s, on the text conditioning): ``targets``
    holds each edit's class index in ``guide.labels`` (None: that edit is not guided)."""

    guide: object
    targets: tuple
    scale: float
    start: int
    end: int
    decoder: object = None


def region_mask(width: int, height: int, box, margin: float = 0.2):
    """A (height, width) float mask in {0, 1}: 1 inside ``box`` (x1, y1, x2, y2) grown by ``margin`` of its size on
    every side, clipped to the image."""
    import numpy as np

    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    mask = np.zeros((height, width), np.float32)
    mask[max(0, int(y1 - dy)):min(height, int(np.ceil(y2 + dy))), max(0, int(x1 - dx)):min(width, int(np.ceil(x2 + dx)))] = 1
    return mask


def _latent_mask(mask, latents):
    """An image-resolution mask -> the latents' resolution (1 where any covered pixel is 1), shaped to broadcast."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    m = F.adaptive_max_pool2d(m, latents.shape[-2:])
    return m.to(latents.device, latents.dtype)


def edit(pipe, image, source_prompt: str, target_prompts: list[str], settings: EditSettings = EditSettings(),
         negative_prompt: str = "", adapter=None, aus=None, guidance: EditGuidance | None = None,
         mask=None) -> list:
    """The source ``image`` (PIL RGB, the pipeline's resolution) with the expression of each of ``target_prompts``:
    float arrays (H, W, 3) in [0, 1], in order (NaN where the decode overflowed). The source is inverted once and
    its branch runs beside all the edits in one batch. With an AU ``adapter`` (attached to the UNet), ``aus`` (one
    AU vector per target) condition the edits; the source branch and the unconditional rows get all-zero AUs.
    With ``guidance``, denoising steps ``start <= i < end`` (counted over the edit's own steps) move each guided
    edit's text conditioning down the gradient of the guide's cross-entropy for its target on the predicted clean
    image (normalised step of size ``scale``), as generation's semantic guidance does. With ``mask`` (an
    image-resolution array, 1 where the edit may change: ``region_mask``), after every step the edits' latents
    outside it are replaced by the source branch's (blended latent editing), so only that region changes."""
    import torch

    if settings.strength == 0:
        import numpy as np

        return [np.asarray(image.convert("RGB"), np.float32) / 255 for _ in target_prompts]
    from builder.models.latents import ddim_invert_along
    from builder.synthesis.guidance import two_pass_noise

    timesteps = inversion_timesteps(pipe, settings.steps, settings.strength)
    start = ddim_invert_along(pipe, encode_image(pipe, image), timesteps, _embed(pipe, [source_prompt]))
    count = len(target_prompts) + 1
    guided = settings.guidance_scale > 1
    cond = _embed(pipe, [source_prompt, *target_prompts])
    uncond = _embed(pipe, ["", *[negative_prompt] * len(target_prompts)]) if guided else None
    if adapter is not None:
        au = torch.tensor([[0.0] * len(aus[0]), *aus], dtype=torch.float32)
        cond = adapter.condition(cond, au)
        uncond = adapter.condition(uncond, torch.zeros_like(au)) if guided else None
    latents = start.repeat(count, 1, 1, 1)
    keep = None if mask is None else _latent_mask(mask, latents)
    injection, original = _install(pipe, settings.inject_layers, count)
    try:
        for i, t in enumerate(timesteps):
            injection.active = i < settings.inject_steps
            if guidance is not None and guidance.start <= i < guidance.end:
                cond, eps = _guided_step(pipe, latents, t, i, cond, uncond, settings.guidance_scale, guidance)
            else:
                with torch.no_grad():
                    eps = two_pass_noise(pipe, latents, t, cond, uncond, settings.guidance_scale)
            latents = pipe.scheduler.step(eps, t, latents, eta=0.0).prev_sample
            if keep is not None:
                latents = torch.cat([latents[:1], keep * latents[1:] + (1 - keep) * latents[:1]])
    finally:
        pipe.unet.set_attn_processor(original)
    with torch.no_grad():
        decoded = pipe.vae.decode(latents[1:] / pipe.vae.config.scaling_factor).sample
    return list((decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())


def _guided_step(pipe, latents, t, index: int, cond, uncond, scale: float, guidance: EditGuidance):
    """One guided step: (the moved conditioning, the noise prediction of this step)."""
    import torch
    import torch.nn.functional as F

    from builder.synthesis.guidance import decode, predict_x0, two_pass_noise

    mask = torch.tensor([False] + [g is not None for g in guidance.targets], device=latents.device)
    if not bool(mask.any()):
        with torch.no_grad():
            return cond, two_pass_noise(pipe, latents, t, cond, uncond, scale)
    target = torch.tensor([0] + [g if g is not None else 0 for g in guidance.targets], device=latents.device)
    with torch.enable_grad():
        variable = cond.detach().requires_grad_(True)
        eps = two_pass_noise(pipe, latents, t, variable, uncond, scale)
        image = decode(pipe, predict_x0(pipe.scheduler, latents[1:], eps[1:], t, index), guidance.decoder)
        losses = F.cross_entropy(guidance.guide.logits(image.float()).float(), target[1:], reduction="none")
        (grad,) = torch.autograd.grad((losses * mask[1:]).sum(), variable)
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
    step = (guidance.scale * grad / norm).to(cond.dtype) * mask.view(-1, *([1] * (grad.ndim - 1)))
    return (cond - step).detach(), eps.detach()
