"""The built-in tiny Stable Diffusion pipeline (``builtin:tiny-sd``).

Random weights in the SD 1.x architecture at toy size (UNet channels 32/64,
2-layer CLIP text encoder, 2-block VAE: 64x64 images), built deterministically
from ``torch.manual_seed(0)`` and cached as a diffusers folder. Its images are
not faces; it exists so that the whole tool runs, offline and on CPU, through
the same loading and generation code as a real checkpoint.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from builder.core.paths import cache_home
from builder.manifest.label_maps import EXPRESSION_TEXT
from builder.models.bpe import BOS, EOS, train_bpe

TINY_VERSION = "v1"
NATIVE_RESOLUTION = 64

# Words the tokenizer learns merges from: prompt vocabulary of FER manifests.
_CORPUS = """
a close-up portrait photo of person face facial expression with the subject is an intense
highly expressive clearly showing young middle-aged old adult child teenager elderly man woman
male female person white black asian middle-eastern latino indian hispanic ethnicity frontal
profile looking left right up down head turned tilted slightly three-quarter view natural light
studio lighting outdoors indoors real-world environment high quality detailed sharp focus
photograph realistic skin eyes eyebrows raised lowered mouth open closed lips corners pulled
cheeks nose wrinkled jaw dropped chin lid tightened brow inner outer glasses beard freckles
smiling frowning blurry lowres cartoon drawing painting deformed
""".split()


def tiny_model_dir() -> Path:
    return cache_home() / "models" / f"tiny-sd-{TINY_VERSION}"


def ensure_tiny_pipeline(target: Path | None = None) -> Path:
    """Build the tiny pipeline into ``target`` (default: the cache) unless it is there."""
    target = Path(target) if target else tiny_model_dir()
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        build_tiny_pipeline().save_pretrained(staging, safe_serialization=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").exists():  # lost a race to another builder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_pipeline():
    """Construct the tiny pipeline in memory (deterministic weights)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    words = _CORPUS + list(EXPRESSION_TEXT) + list(EXPRESSION_TEXT.values())
    vocab, merges = train_bpe(words, num_merges=400)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=NATIVE_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=NATIVE_RESOLUTION,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
