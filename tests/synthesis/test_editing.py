"""The editing core on the built-in tiny pipeline: the mutual self-attention processor (edit rows attend over their
source rows' keys and values while active, the layer's own attention otherwise), DDIM inversion, determinism and
strength 0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from builder.synthesis.editing import (
    EditSettings,
    MutualSelfAttention,
    _Injection,
    edit,
    encode_image,
    inversion_timesteps,
)


@pytest.fixture(scope="module")
def pipe():
    from builder.manifest import Generator
    from builder.models.diffusion import load_pipeline

    return load_pipeline(Generator(model="builtin:tiny-sd", device="cpu", dtype="float32"))[0]


def test_edit_rows_attend_over_their_source_rows(pipe):
    from diffusers.models.attention_processor import AttnProcessor2_0

    name, attn = next((n, m) for n, m in pipe.unet.named_modules() if n.endswith("attn1"))
    injection = _Injection(group=3)  # [source, edit, edit] x (unconditional, conditional)
    processor = MutualSelfAttention(AttnProcessor2_0(), injection)
    hidden = torch.randn(6, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    plain = AttnProcessor2_0()(attn, hidden)
    assert torch.equal(processor(attn, hidden), plain), "inactive: the layer's own attention"
    injection.active = True
    mixed = processor(attn, hidden)
    assert torch.allclose(mixed[0::3], plain[0::3], atol=1e-6), "source rows are unchanged"
    q = attn.to_q(hidden)
    k, v = attn.to_k(hidden[[0, 0, 0, 3, 3, 3]]), attn.to_v(hidden[[0, 0, 0, 3, 3, 3]])
    heads = attn.heads

    def split(x):
        return x.view(6, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    expected = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    expected = attn.to_out[0](expected.transpose(1, 2).reshape(6, 16, -1))
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert not torch.allclose(mixed[[1, 2, 4, 5]], plain[[1, 2, 4, 5]], atol=1e-4), "edit rows changed"


def test_inversion_then_denoising_returns_close_to_the_latents(pipe):
    from builder.example_faces import example_faces

    image = example_faces()["portrait"].resize((64, 64))
    from builder.models.latents import ddim_invert_along

    latents = encode_image(pipe, image)
    errors = {}
    for steps in (5, 50):
        timesteps = inversion_timesteps(pipe, steps, 0.5)
        cond = pipe.text_encoder(pipe.tokenizer(["a face"], padding="max_length", max_length=77,
                                                return_tensors="pt").input_ids)[0]
        x = ddim_invert_along(pipe, latents, timesteps, cond)
        for t in timesteps:
            with torch.no_grad():
                x = pipe.scheduler.step(pipe.unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
        errors[steps] = float((x - latents).abs().mean() / latents.abs().mean())
    assert errors[50] < errors[5], errors


def test_edits_are_deterministic_and_strength_zero_is_the_source(pipe):
    from builder.example_faces import example_faces

    image = example_faces()["portrait"].resize((64, 64))
    settings = EditSettings(steps=6, strength=0.5, inject_steps=2, guidance_scale=3.0)
    happy, sad = (np.round(x * 255).astype(int) for x in edit(pipe, image, "a face", ["a happy face", "a sad face"], settings))
    again = edit(pipe, image, "a face", ["a happy face", "a sad face"], settings)[0]
    assert np.array_equal(happy, np.round(again * 255).astype(int)), "the same inputs, the same edit"
    assert not np.array_equal(happy, sad)
    alone = np.round(edit(pipe, image, "a face", ["a happy face"], settings)[0] * 255).astype(int)
    assert np.abs(alone - happy).max() <= 2, "an edit does not depend on the others in its batch"
    for same in edit(pipe, image, "x", ["y", "z"], EditSettings(strength=0)):
        assert np.array_equal(np.round(same * 255).astype(np.uint8), np.asarray(image)), "strength 0: the source"
    assert all(".attn1." not in type(p).__name__ for p in pipe.unet.attn_processors.values())
    assert not any(isinstance(p, MutualSelfAttention) for p in pipe.unet.attn_processors.values()), "restored"


def test_semantic_guidance_moves_the_guided_edits_only(pipe):
    """With the real FER2013 expert as the guide: a guided edit differs from the unguided one and is deterministic;
    an edit whose target the guide does not know (None) is the unguided edit."""
    from builder.example_faces import example_faces
    from builder.models.store import load_fer_classifier
    from builder.synthesis.editing import EditGuidance

    guide = load_fer_classifier("mini-xception-fer2013")
    happy = list(guide.labels).index("happy")
    image = example_faces()["portrait"].resize((64, 64))
    settings = EditSettings(steps=6, strength=0.5, inject_steps=1, guidance_scale=3.0)
    prompts = ["a happy face", "a sad face"]
    plain = edit(pipe, image, "a face", prompts, settings)
    guidance = EditGuidance(guide, (happy, None), scale=5.0, start=0, end=3)
    guided = edit(pipe, image, "a face", prompts, settings, guidance=guidance)
    again = edit(pipe, image, "a face", prompts, settings, guidance=guidance)
    assert np.array_equal(guided[0], again[0]), "deterministic"
    assert np.abs(guided[0] - plain[0]).max() > 1e-3, "the guided edit moved"
    assert np.abs(guided[1] - plain[1]).max() < 1e-5, "the unguided edit stays"


def test_a_region_mask_keeps_everything_outside_it_from_the_source_branch(pipe):
    """Mask 0 everywhere: every edit is the source branch's reconstruction, whatever its prompt; the region mask
    is the face box grown by the margin, clipped to the image."""
    from builder.example_faces import example_faces
    from builder.synthesis.editing import region_mask

    image = example_faces()["portrait"].resize((64, 64))
    settings = EditSettings(steps=6, strength=0.5, inject_steps=1, guidance_scale=3.0)
    happy, sad = edit(pipe, image, "a face", ["a happy face", "a sad face"], settings, mask=np.zeros((64, 64)))
    assert np.array_equal(happy, sad), "nothing may change: both edits are the source branch"
    free = edit(pipe, image, "a face", ["a happy face", "a sad face"], settings, mask=np.ones((64, 64)))
    plain = edit(pipe, image, "a face", ["a happy face", "a sad face"], settings)
    assert np.abs(free[0] - plain[0]).max() < 1e-5, "a mask of ones is no mask"
    mask = region_mask(64, 64, (20, 10, 40, 50), margin=0.25)
    assert mask.sum() == (45 - 15) * (60 - 0) and mask[0, 15] == 1 and mask[0, 14] == 0
    assert mask[59, 44] == 1 and mask[60, 44] == 0 and mask[59, 45] == 0
