"""``train-generator`` on the built-in tiny pipeline: LoRA and full fine-tuning really train (the loss on a fixed
evaluation batch drops), the outputs load with plain diffusers, a resumed run equals an uninterrupted one, the
objective follows the scheduler's prediction type, and validation writes grids and an expert's accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from builder.cli import main

COLOURS = {"a red face": (200, 40, 40), "a blue face": (40, 40, 200), "a green face": (40, 180, 40),
           "a grey face": (128, 128, 128)}


def pairs(folder: Path, size: int = 64, sizes=None) -> Path:
    """A saved dataset of image-text pairs: each caption's colour plus seeded noise, three images per caption."""
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(0)
    images, texts = [], []
    for n, (text, colour) in enumerate(COLOURS.items()):
        for i in range(3):
            side = sizes[(3 * n + i) % len(sizes)] if sizes else size
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            texts.append(text)
    Dataset.from_dict({"image": images, "text": texts}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return pairs(tmp_path_factory.mktemp("pairs") / "hf")


def config(path: Path, data: Path, out: Path, **changes) -> Path:
    settings = {"base_model": "builtin:tiny-sd", "method": "lora", "resolution": 64, "output_dir": str(out),
                "data": {"dataset": str(data)},
                "train": {"steps": 4, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 2, "log_every": 1,
                          "eval_examples": 4},
                "validation": {"every": 0, "seeds": [0], "num_inference_steps": 2, "expressions": ["happy", "sad"]}}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def train(path: Path) -> dict:
    assert main(["train-generator", str(path), "--no-progress"]) == 0
    cfg = yaml.safe_load(path.read_text())
    return json.loads((Path(cfg["output_dir"]) / "training_summary.json").read_text())


def tiny_pipeline():
    from diffusers import StableDiffusionPipeline

    from builder.manifest import Generator
    from builder.models.diffusion import resolve_checkpoint

    folder, _ = resolve_checkpoint(Generator(model="builtin:tiny-sd"))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe) -> np.ndarray:
    return pipe("a red face", num_inference_steps=3, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def losses(out: Path) -> list[tuple[int, float]]:
    return [(line["step"], line["loss"]) for line in map(json.loads, (out / "loss.jsonl").read_text().splitlines())]


def test_lora_lowers_the_eval_loss_validates_and_loads_in_plain_diffusers(data, tmp_path):
    out = tmp_path / "lora"
    summary = train(config(tmp_path / "c.yaml", data, out, train={"steps": 12, "learning_rate": 1e-2},
                           validation={"every": 6, "expert": "mini-xception-fer2013"}))
    assert summary["eval_loss_end"] < summary["eval_loss_start"], summary
    assert summary["method"] == "lora" and summary["data"]["pairs"] == 12
    assert summary["validation_expert"]["name"] == "mini-xception-fer2013"
    assert len(summary["validation_expert"]["sha256"]) == 64
    lines = [json.loads(line) for line in (out / "validation" / "accuracy.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 12]
    assert set(lines[-1]["per_class"]) == {"happy", "sad"} and 0 <= lines[-1]["mean"] <= 1
    assert (out / "validation" / "step-0000012.png").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "- lora" in card and "| happy |" in card
    assert "12 image-text pairs" in card and "pipe.load_lora_weights" in card

    pipe = tiny_pipeline()
    base = image(pipe)
    pipe.load_lora_weights(str(out))  # the diffusers/peft layout, as the issue asks
    tuned = image(pipe)
    assert np.abs(tuned - base).max() > 1e-3, "the LoRA changes the images"
    state = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert state and all(".lora." in key or "lora_" in key for key in state)


def test_a_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    """Every random draw at once: text-encoder LoRA with dropout, random crops and flips, accumulation, offset
    noise, Min-SNR weighting, a warm-up schedule."""
    settings = dict(lora={"rank": 2, "dropout": 0.1, "text_encoder": True}, crop="random", random_flip=True,
                    train={"gradient_accumulation": 2, "noise_offset": 0.1, "snr_gamma": 5.0,
                           "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2})
    straight = tmp_path / "straight"
    train(config(tmp_path / "a.yaml", data, straight, **settings))
    resumed = tmp_path / "resumed"
    train(config(tmp_path / "b.yaml", data, resumed, **{**settings, "train": {**settings["train"], "steps": 2}}))
    summary = train(config(tmp_path / "b.yaml", data, resumed, **settings))
    a, b = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (straight, resumed))
    assert a.keys() == b.keys() and any(k.startswith("text_encoder") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ends with the same weights"
    assert losses(straight) == losses(resumed)
    assert summary["steps"] == 4


def test_full_fine_tuning_with_ema_saves_a_pipeline_and_resumes_exactly(data, tmp_path):
    from diffusers import StableDiffusionPipeline

    settings = dict(method="full", ema={"decay": 0.9}, train={"steps": 2, "checkpoint_every": 1})
    out = tmp_path / "full"
    summary = train(config(tmp_path / "f.yaml", data, out, **settings))
    assert summary["method"] == "full"
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert np.abs(image(pipe) - image(tiny_pipeline())).max() > 1e-4, "the UNet changed"
    assert "StableDiffusionPipeline.from_pretrained" in (out / "README.md").read_text()

    resumed = tmp_path / "resumed"
    train(config(tmp_path / "g.yaml", data, resumed, **{**settings, "train": {"steps": 1, "checkpoint_every": 1}}))
    train(config(tmp_path / "g.yaml", data, resumed, **settings))
    a, b = (load_file(str(o / "unet" / "diffusion_pytorch_model.safetensors")) for o in (out, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a), "the saved EMA UNet is the same after a resume"


def test_a_resume_may_change_only_what_does_not_change_the_weights(data, tmp_path, capsys):
    out = tmp_path / "out"
    train(config(tmp_path / "c.yaml", data, out, train={"steps": 2, "lr_scheduler": "linear"}))
    capsys.readouterr()
    path = config(tmp_path / "c.yaml", data, out, train={"steps": 4, "lr_scheduler": "linear"})
    assert main(["train-generator", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "changed: train.steps" in err and "only under a constant schedule" in err
    path = config(tmp_path / "c.yaml", data, out, train={"steps": 2, "lr_scheduler": "linear", "log_every": 2},
                  validation={"seeds": [3]})
    assert main(["train-generator", str(path), "--no-progress"]) == 0


def test_the_objective_follows_the_prediction_type():
    from diffusers import DDPMScheduler

    from builder.synthesis.training.objective import denoising_loss, noisy_latents, target_for

    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for kind in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=kind)
        noisy, noise, t = noisy_latents(scheduler, latents, torch.Generator().manual_seed(0))
        assert torch.allclose(noisy, scheduler.add_noise(latents, noise, t))
        target = target_for(scheduler, latents, noise, t)
        expected = scheduler.get_velocity(latents, noise, t) if kind == "v_prediction" else noise
        assert torch.equal(target, expected)
        pred = target + 0.1
        assert float(denoising_loss(pred, target, scheduler, t, None)) == pytest.approx(0.01, rel=1e-4)
        alpha = scheduler.alphas_cumprod[t]
        snr = alpha / (1 - alpha)
        weight = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if kind == "v_prediction" else snr)
        assert float(denoising_loss(pred, target, scheduler, t, 5.0)) == pytest.approx(float((0.01 * weight).mean()),
                                                                                      rel=1e-4)
    offset = noisy_latents(DDPMScheduler(), latents, torch.Generator().manual_seed(0), noise_offset=0.5)[1]
    plain = noisy_latents(DDPMScheduler(), latents, torch.Generator().manual_seed(0))[1]
    shift = (offset - plain).mean(dim=(2, 3))
    assert shift.abs().min() > 0 and torch.allclose(offset - plain, shift[..., None, None].expand_as(offset), atol=1e-6)


def test_a_v_prediction_base_model_trains_with_gradient_checkpointing(data, tmp_path):
    import shutil

    from builder.manifest import Generator
    from builder.models.diffusion import resolve_checkpoint

    folder, _ = resolve_checkpoint(Generator(model="builtin:tiny-sd"))
    base = shutil.copytree(folder, tmp_path / "v-model")
    scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({**scheduler,
                                                                          "prediction_type": "v_prediction"}))
    summary = train(config(tmp_path / "v.yaml", data, tmp_path / "out", base_model=str(base),
                           train={"steps": 1, "gradient_checkpointing": True}))
    assert summary["prediction_type"] == "v_prediction"


def test_the_au_adapter_trains_on_the_fine_tuned_generator(data, tmp_path):
    """``train-au-adapter`` with ``base_lora``: the LoRA is merged into the base model first, and the adapter's
    summary records which LoRA (path, sha256, scale) it was trained over."""
    from datasets import Dataset, load_from_disk

    from builder.models.diffusion import file_sha256

    lora = tmp_path / "lora"
    train(config(tmp_path / "g.yaml", data, lora, train={"steps": 2}))
    rows = load_from_disk(str(data))
    Dataset.from_dict({"image": rows["image"], "prompt": rows["text"],
                       "au": [[float(i % 5)] * 12 for i in range(len(rows))]}).save_to_disk(str(tmp_path / "au"))
    adapter = tmp_path / "adapter"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({
        "base_model": "builtin:tiny-sd", "base_lora": [{"path": str(lora), "scale": 0.8}], "au_set": "disfa12",
        "num_tokens": 2, "hidden_dim": 16, "resolution": 64, "output_dir": str(adapter),
        "data": {"dataset": str(tmp_path / "au")},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "eval_examples": 2}}))
    assert main(["train-au-adapter", str(tmp_path / "a.yaml"), "--no-progress"]) == 0
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["base_lora"] == [{"path": str(lora), "scale": 0.8,
                                     "sha256": file_sha256(lora / "pytorch_lora_weights.safetensors")}]


def test_the_model_card_reads_the_training_data_card(tmp_path):
    """A release's card (next to its hf folder) gives the data's name and licence; a malformed one is still named."""
    from builder.synthesis.training.model_card import data_card

    (tmp_path / "hf").mkdir()
    (tmp_path / "README.md").write_text("---\npretty_name: pairs\nlicense: other\nlicense_name: src-licence\n---\n# x\n")
    assert data_card(str(tmp_path / "hf")) == {"card": str(tmp_path / "README.md"), "name": "pairs",
                                               "license": "other", "license_name": "src-licence"}
    (tmp_path / "README.md").write_text("---\n[not: yaml\n---\n")
    assert data_card(str(tmp_path / "hf")) == {"card": str(tmp_path / "README.md")}
    assert data_card(str(tmp_path / "elsewhere" / "hf")) == {}
