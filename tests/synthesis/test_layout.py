"""Layout initialisation: DDIM inversion, and builds that start from inverted reference images."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.manifest import Layout
from builder.manifest.loader import load_manifest
from builder.models.latents import ddim_invert, ddim_sample
from tests.conftest import DEMO


class SmoothDenoiser(torch.nn.Module):
    """eps(x) = 0.1 x: a smooth noise predictor, for checking the inversion arithmetic itself."""

    def forward(self, x, t, encoder_hidden_states=None):
        return SimpleNamespace(sample=0.1 * x)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from builder.models.diffusion import load_pipeline

    return load_pipeline(load_manifest(DEMO).generator)[0]


@pytest.mark.parametrize("steps, tolerance", [(10, 0.08), (50, 0.02)])
def test_inversion_then_sampling_returns_the_latent(pipe, steps, tolerance):
    """DDIM inversion's only error is evaluating eps one step early; it shrinks with the step count."""
    real, pipe.unet = pipe.unet, SmoothDenoiser()
    try:
        z0 = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
        text = torch.zeros(1, 77, 32)
        back = ddim_sample(pipe, ddim_invert(pipe, z0, steps, text), steps, text)
    finally:
        pipe.unet = real
    assert ((back - z0).norm() / z0.norm()).item() < tolerance


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("refs")
    face = data.astronaut()[30:230, 130:330]
    Image.fromarray(face).save(folder / "astronaut.png")
    Image.fromarray(face[:, ::-1]).save(folder / "astronaut-mirrored.jpg")
    Image.fromarray(data.chelsea()).save(folder / "cat.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_build_starts_from_inverted_references(references, write_manifest, tmp_path):
    manifest = write_manifest({"name": "layout", "labels": {"counts": {"happy": 3, "sad": 3}},
                               "generator": {"layout": {"images": str(references)}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    from datasets import load_from_disk

    rows = [r for ds in load_from_disk(str(out / "hf")).values() for r in ds]
    assert {r["layout_reference"] for r in rows} <= {"astronaut.png", "astronaut-mirrored.jpg", "cat.png"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["layout"]["count"] == 3 and len(stats["layout"]["sha256"]) == 64
    assert "| layout initialisation | DDIM-inverted references" in (out / "README.md").read_text()

    plain = write_manifest({"name": "layout", "labels": {"counts": {"happy": 3, "sad": 3}}}, name="plain.yaml")
    assert main([str(plain), "--out", str(tmp_path / "plain"), "--no-progress"]) == 0
    plain_rows = {r["sample_id"]: r for ds in load_from_disk(str(tmp_path / "plain" / "hf")).values() for r in ds}
    for r in rows:
        a = np.asarray(r["image"], dtype=float)
        b = np.asarray(plain_rows[r["sample_id"]]["image"], dtype=float)
        assert np.abs(a - b).mean() > 1.0, "the starting latent changes the image"


def test_reference_choice_is_deterministic(references, pipe):
    from builder.synthesis.layout import LayoutSource

    a = LayoutSource(Layout(images=str(references)), pipe, 4, 64, 64, seed=7)
    b = LayoutSource(Layout(images=str(references)), pipe, 4, 64, 64, seed=7)
    assert [a.reference(i) for i in range(20)] == [b.reference(i) for i in range(20)]
    assert len({a.reference(i) for i in range(20)}) == 3
    assert torch.equal(a.start_latents(["cat.png"]), b.start_latents(["cat.png"]))


def test_layout_needs_ddim_and_images(references, pipe, tmp_path):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from builder.synthesis.layout import LayoutSource

    with pytest.raises(ModelLoadError, match="holds no png, jpg or webp image"):
        LayoutSource(Layout(images=str(tmp_path)), pipe, 4, 64, 64, seed=0)
    ddim = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(ddim.config)
    try:
        with pytest.raises(ModelLoadError, match="set generator.scheduler: ddim"):
            LayoutSource(Layout(images=str(references)), pipe, 4, 64, 64, seed=0)
    finally:
        pipe.scheduler = ddim
    assert isinstance(pipe.scheduler, DDIMScheduler)


def test_layout_also_applies_with_an_au_adapter(references, tmp_path):
    """Regression: the adapter path once dropped the inverted starting latents."""
    from diffusers import UNet2DConditionModel

    from builder.expand.specs import shard_specs
    from builder.manifest import AUAdapterSpec
    from builder.models.tiny_sd import ensure_tiny_pipeline
    from builder.synthesis.au_adapter import AUAdapter
    from builder.synthesis.generate import GenerateStage

    demo = load_manifest(DEMO)
    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_pipeline() / "unet", local_files_only=True)
    AUAdapter.for_unet(unet, list(demo.aus.names)).save_pretrained(tmp_path / "adapter")
    adapter = AUAdapterSpec(path=str(tmp_path / "adapter"))

    def images(layout):
        stage = GenerateStage(demo.generator.model_copy(update={"au_adapter": adapter, "layout": layout}),
                              demo.aus.names, demo.labels.names, demo.seed)
        stage.setup()
        return stage.generate(shard_specs(demo, 0)[:2])

    assert np.abs(images(Layout(images=str(references))) - images(None)).mean() > 1e-3
