"""Stable Diffusion 1.5's architecture with random weights, for benchmarks: the same compute as the real model.

``build_sd15(folder)`` writes a diffusers pipeline folder (fp16 safetensors,
about 2 GB) that ``StableDiffusionPipeline.from_pretrained`` and manifests
(``generator.model: <folder>``) load like a downloaded checkpoint. The
tokenizer is the built-in tiny model's (a small BPE vocabulary): token ids stay
below CLIP's 49,408, and the text encoder's compute depends only on the 77
positions. ``count_flops()`` counts the floating-point operations of one UNet
forward, one VAE decode and one text encoding per image with
``torch.utils.flop_counter`` on the meta device (no memory, no weights).
"""
from __future__ import annotations

import json
from pathlib import Path

UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)  # SD 1.5's PNDM
TAESD = {}  # AutoencoderTiny's defaults are TAESD's architecture


def _tokenizer():
    from transformers import CLIPTokenizer

    from builder.models.tiny_sd import ensure_tiny_pipeline

    return CLIPTokenizer.from_pretrained(ensure_tiny_pipeline() / "tokenizer")


def sync(device: str) -> None:
    """Wait for the GPU's queued work before reading a clock (a no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def build_sd15(folder: Path, seed: int = 0) -> Path:
    """Write the random-weight SD 1.5-architecture pipeline to ``folder`` unless it is there."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**UNET), vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT, bos_token_id=vocab[tokenizer.bos_token],
                                                  eos_token_id=vocab[tokenizer.eos_token],
                                                  pad_token_id=vocab[tokenizer.pad_token])),
        tokenizer=tokenizer, scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def build_taesd(folder: Path, seed: int = 0) -> Path:
    """A random-weight AutoencoderTiny in TAESD's architecture (the guide's cheap x0 decoder)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        import torch
        from diffusers import AutoencoderTiny

        torch.manual_seed(seed)
        AutoencoderTiny(**TAESD).to(torch.float16).save_pretrained(folder)
    return folder


def adapter_unet():
    """The SD 1.5 UNet on the meta device with an AU adapter (DISFA's 12 AUs, 4 tokens) attached."""
    import torch
    from diffusers import UNet2DConditionModel

    from builder.manifest.au_sets import AU_SETS
    from builder.synthesis.au_adapter import AUAdapter

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
        adapter = AUAdapter.for_unet(unet, list(AU_SETS["disfa12"]), seed=0)
    adapter.attach(unet)
    return unet


def guided_step_flops(decoder: str = "vae", height: int = 512, width: int = 512) -> int:
    """FLOPs per image of a guided step's gradient with wrt=text, beyond the unguided step: the conditional UNet
    forward is the step's own, so this counts the decode of x0, and the backward through the decoder and the
    UNet to the text conditioning (weights frozen). The guide classifier is left out (mini-Xception at 64x64
    is about 0.03 GFLOP)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), torch.enable_grad():
        unet = UNet2DConditionModel(**UNET).requires_grad_(False)
        vae = (AutoencoderKL(**VAE) if decoder == "vae" else AutoencoderTiny(**TAESD)).requires_grad_(False)
        latents = torch.empty(1, 4, height // 8, width // 8)
        cond = torch.empty(1, 77, 768, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            eps = unet(latents, torch.tensor([500]), encoder_hidden_states=cond).sample
            forward = counter.get_total_flops()
            image = vae.decode(latents - 0.5 * eps).sample
            image.sum().backward()  # autograd.grad trips FlopCounterMode's module tracker
        return counter.get_total_flops() - forward


def count_flops(height: int = 512, width: int = 512) -> dict:
    """FLOPs per image (batch 1) of one UNet forward (also without the attention score and value products, the
    count the usual 677 GFLOP figure for SD 1.5 makes; and with an AU adapter attached), one VAE decode, one TAESD decode and one text encoding."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    attention_ops = ("bmm", "baddbmm", "scaled_dot_product")  # q.k^T and attn.v; projections are mm/addmm

    def flops(fn, without_attention: bool = False) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        if without_attention:
            return sum(n for op, n in counter.get_flop_counts()["Global"].items()
                       if not any(a in str(op) for a in attention_ops))
        return counter.get_total_flops()

    with torch.device("meta"), torch.no_grad():
        unet, vae, tiny = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), AutoencoderTiny(**TAESD)
        text = CLIPTextModel(CLIPTextConfig(**TEXT))
        latents = torch.empty(1, 4, height // 8, width // 8)
        context = torch.empty(1, 77, 768)
        forward = lambda: unet(latents, torch.tensor([500]), encoder_hidden_states=context)  # noqa: E731
        plain = flops(forward)
        with_adapter = adapter_unet()
        au_context = torch.empty(1, 77 + 4, 768)
        return {
            "unet_forward_au_adapter": flops(lambda: with_adapter(latents, torch.tensor([500]),
                                                                  encoder_hidden_states=au_context)),
            "unet_forward": plain,
            "unet_forward_no_attention": flops(forward, without_attention=True),
            "vae_decode": flops(lambda: vae.decode(latents)),
            "taesd_decode": flops(lambda: tiny.decode(latents)),
            "text_encode": flops(lambda: text(torch.zeros(1, 77, dtype=torch.long))),
            "guided_step_extra_vae": guided_step_flops("vae", height, width),
            "guided_step_extra_taesd": guided_step_flops("taesd", height, width),
            "height": height, "width": width,
        }


if __name__ == "__main__":
    print(json.dumps(count_flops(), indent=1))
