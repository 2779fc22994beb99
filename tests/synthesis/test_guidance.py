"""Semantic guidance with the real mini-Xception guide on the real tiny pipeline."""
from __future__ import annotations

import gc
import json
import warnings

import pytest
import torch

from builder.cli import main
from builder.manifest import Guidance
from builder.manifest.loader import load_manifest
from builder.models.store import load_fer_classifier
from builder.synthesis.guidance import guided_sample, predict_x0
from tests.conftest import DEMO

SEEDS = range(8)


@pytest.fixture(scope="module")
def guide():
    return load_fer_classifier("mini-xception-fer2013")


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from builder.models.diffusion import load_pipeline

    return load_pipeline(load_manifest(DEMO).generator)[0]


def happy_probability(pipe, guide, scale: float, wrt: str, steps: int = 10, on_step=None) -> float:
    happy = guide.labels.index("happy")
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a happy face"] * len(SEEDS), "cpu", 1, True, negative_prompt=[""] * len(SEEDS))
    images = guided_sample(pipe, cond, uncond, [torch.Generator().manual_seed(s) for s in SEEDS], steps=steps,
                           cfg_scale=3.0, height=64, width=64, guide=guide, targets=[happy] * len(SEEDS),
                           scale=scale, start=2, end=steps, wrt=wrt, on_step=on_step)
    with torch.no_grad():
        return guide.probs(images.permute(0, 3, 1, 2))[:, happy].mean().item()


def unguided_probability(pipe, guide) -> float:
    # start == end: the same sampler with no guided step
    happy = guide.labels.index("happy")
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a happy face"] * len(SEEDS), "cpu", 1, True, negative_prompt=[""] * len(SEEDS))
    images = guided_sample(pipe, cond, uncond, [torch.Generator().manual_seed(s) for s in SEEDS], steps=10,
                           cfg_scale=3.0, height=64, width=64, guide=guide, targets=[happy] * len(SEEDS),
                           scale=1.0, start=10, end=10)
    with torch.no_grad():
        return guide.probs(images.permute(0, 3, 1, 2))[:, happy].mean().item()


def test_unguided_sampler_equals_the_pipeline(pipe, guide):
    import numpy as np

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a sad face"], "cpu", 1, True, negative_prompt=["blurry"])
    ours = guided_sample(pipe, cond, uncond, [torch.Generator().manual_seed(3)], steps=4, cfg_scale=3.0, height=64,
                         width=64, guide=guide, targets=[None], scale=1.0, start=0, end=4)
    with torch.inference_mode():
        theirs = pipe(prompt=["a sad face"], negative_prompt=["blurry"], num_inference_steps=4, guidance_scale=3.0,
                      height=64, width=64, generator=[torch.Generator().manual_seed(3)], output_type="np").images
    assert np.abs(ours.numpy() - theirs).max() < 1e-5


@pytest.mark.parametrize("wrt, scale, min_gain", [("text", 8.0, 0.0), ("latents", 0.5, 0.2)])
def test_guidance_raises_the_target_probability(pipe, guide, wrt, scale, min_gain):
    off = unguided_probability(pipe, guide)
    on = happy_probability(pipe, guide, scale, wrt)
    assert on > off + min_gain, (off, on)


def _holds_graph(obj) -> bool:
    """A tensor with an autograd graph (a dead weak proxy among the collected objects is not one)."""
    try:
        return isinstance(obj, torch.Tensor) and obj.grad_fn is not None
    except ReferenceError:
        return False


def test_guidance_keeps_no_graph_between_steps(pipe, guide):
    """20 guided steps: no tensor with an autograd graph survives a step, and memory stays flat."""
    rss, graphs = [], []

    def on_step(i):
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on every object touches deprecated torch aliases
            warnings.simplefilter("ignore")
            graphs.append(sum(1 for o in gc.get_objects() if _holds_graph(o)))
        with open("/proc/self/statm") as fh:
            rss.append(int(fh.read().split()[1]) * 4096)

    happy_probability(pipe, guide, scale=0.5, wrt="latents", steps=22, on_step=on_step)
    assert graphs == [0] * 22
    settled = rss[5:]
    assert max(settled) - settled[0] < 64 * 2**20, [r // 2**20 for r in rss]


def test_x0_prediction_inverts_the_forward_process(pipe):
    """Noise clean latents with the scheduler, then recover them from the true noise."""
    from diffusers import EulerDiscreteScheduler

    x0 = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    for scheduler in (pipe.scheduler, EulerDiscreteScheduler.from_config(pipe.scheduler.config)):
        scheduler.set_timesteps(10)
        for index, t in enumerate(scheduler.timesteps[:5]):
            if hasattr(scheduler, "sigmas") and float(scheduler.init_noise_sigma) > 1:
                noisy = x0 + scheduler.sigmas[index] * noise
            else:
                noisy = scheduler.add_noise(x0, noise, t.reshape(1))
            assert torch.allclose(predict_x0(scheduler, noisy, noise, t, index), x0, atol=1e-3)


def test_build_with_guidance_records_it(tmp_path, write_manifest):
    manifest = write_manifest({"name": "guided", "labels": {"label_map": "affectnet8", "counts": {"happy": 2, "contempt": 1}},
                               "aus": {"intensity": {}},
                               "generator": {"guidance": {"scale": 0.5, "start_step": 1, "wrt": "latents"}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["guidance"]["classifier"] == "mini-xception-fer2013"
    assert stats["guidance"]["unguided_classes"] == ["contempt"]
    assert stats["released"]["total"] == 3
    card = (out / "README.md").read_text()
    assert "not guided (unknown to the guide): contempt" in card and "Do not use the same model" in card


def test_guidance_window_is_validated():
    from pydantic import ValidationError

    from builder.manifest import Generator

    with pytest.raises(ValidationError, match="do not fit in 4 denoising steps"):
        Generator(model="builtin:tiny-sd", steps=4, guidance=Guidance(start_step=4))


def test_text_gradient_skips_the_unconditional_branch(pipe, guide):
    """With wrt=text only the conditional half of the CFG batch is differentiated: the same noise estimate and
    the same gradient as differentiating the whole batch."""
    from builder.synthesis.guidance import _noise, two_pass_noise

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a happy face"] * 2, "cpu", 1, True, negative_prompt=[""] * 2)
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[3]
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    grads, values = [], []
    for fn in (_noise, two_pass_noise):
        c = cond.clone().requires_grad_(True)
        eps = fn(pipe, latents, t, c, uncond, 5.0)
        (grad,) = torch.autograd.grad(eps.square().sum(), c)
        grads.append(grad)
        values.append(eps.detach())
    assert torch.allclose(values[0], values[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    assert grads[0].abs().sum() > 0
