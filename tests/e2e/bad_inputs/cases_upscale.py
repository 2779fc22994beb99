"""Bad super-resolution models (``annotate.upscale.model``) in a training-pairs build of real face photos: refused
by `validate` and before a build starts when the cheap checks see it (``builder.models.upscalers.
reference_problems``: a classifier, a diffusers folder, the wrong scale, a missing folder, truncated weights, a
Hub id offline), and by the 'upscale' stage's loader (``load_upscaler``) when only loading shows it (weights that
do not fit their config, a pickled checkpoint that would run code). The model is a tiny Swin2SR built from its
config (random weights)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.pairs import no_stage_output, nothing_created, pairs_build

FIX_NONE = "'none'"
"""Every refusal's fix offers resizing instead."""


def swin2sr(env, dest: Path, **config) -> Path:
    """A copy of a tiny Swin2SR (x2 unless ``config`` says otherwise), each kind made once per session."""
    source = env.cache / ("swin2sr-" + "-".join(f"{k}{v}" for k, v in sorted(config.items())) or "swin2sr")
    if not (source / "config.json").is_file():
        import torch
        from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

        torch.manual_seed(0)
        settings = {"embed_dim": 16, "depths": [1], "num_heads": [1], "upscale": 2, **config}
        Swin2SRForImageSuperResolution(Swin2SRConfig(**settings)).save_pretrained(source)
    return shutil.copytree(source, dest)


def classifier(dest: Path) -> Path:
    """A tiny image classifier (ViT) saved with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                                        intermediate_size=16, image_size=32, patch_size=8,
                                        num_labels=7)).save_pretrained(dest)
    return dest


def upscale_build(tmp_path: Path, env, model) -> tuple[list[str], Path]:
    """A training-pairs build of two real face photos (every face small at 64 px) whose faces go through
    ``model``."""
    return pairs_build(tmp_path, env, "bad-upscaler", {"upscale": {"model": str(model), "when_smaller_than": 256}})


# -- refused by the cheap checks: validate, and a build before its folder exists ------------------------------------
@case("upscale-model-is-a-classifier-build")
def _(tmp_path, env):
    model = classifier(tmp_path / "vit")
    argv, out = upscale_build(tmp_path, env, model)
    return Case(argv, str(model), ["annotate.upscale.model", "is a 'vit' model (ViTForImageClassification)",
                                   "not an image super-resolution model", "Swin2SR", FIX_NONE],
                unchanged=[model], check=nothing_created(out, "the upscaler"))


@case("upscale-model-wrong-scale")
def _(tmp_path, env):
    model = swin2sr(env, tmp_path / "x16", upscale=16)
    argv, _ = upscale_build(tmp_path, env, model)
    return Case(["validate", argv[0]], str(model), ["annotate.upscale.model", "has the wrong scale",
                                                    "'upscale' is 16", "2, 3, 4, 8"], unchanged=[model])


@case("upscale-model-denoiser-build")
def _(tmp_path, env):
    """A Swin2SR that restores (upscale 1, no upsampler) does not enlarge: the wrong scale."""
    model = swin2sr(env, tmp_path / "denoise", upscale=1, upsampler="")
    argv, out = upscale_build(tmp_path, env, model)
    return Case(argv, str(model), ["annotate.upscale.model", "has the wrong scale",
                                   "restores images at their own size"], unchanged=[model], check=nothing_created(out, "the upscaler"))


@case("upscale-model-diffusers-pipeline")
def _(tmp_path, env):
    from builder.models.tiny_sd import ensure_tiny_pipeline

    model = shutil.copytree(ensure_tiny_pipeline(), tmp_path / "tiny-sd")
    argv, _ = upscale_build(tmp_path, env, model)
    return Case(["validate", argv[0]], str(model), ["annotate.upscale.model", "diffusers pipeline folder",
                                                    "model_index.json", FIX_NONE], unchanged=[model])


@case("upscale-model-missing-folder-build")
def _(tmp_path, env):
    model = tmp_path / "models" / "swin2sr-x2"
    argv, out = upscale_build(tmp_path, env, model)
    return Case(argv, str(model), ["annotate.upscale.model", "does not exist", "save_pretrained folder"],
                check=nothing_created(out, "the upscaler"))


@case("upscale-model-truncated-weights")
def _(tmp_path, env):
    model = swin2sr(env, tmp_path / "x2")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv, _ = upscale_build(tmp_path, env, model)
    return Case(["validate", argv[0]], str(model), ["annotate.upscale.model", "model.safetensors", "truncated",
                                                    "save_pretrained"], unchanged=[model])


@case("upscale-model-hub-id-offline-build")
def _(tmp_path, env):
    argv, out = upscale_build(tmp_path, env, "fer-synth-tests/absent-swin2sr")
    return Case(argv, argv[0], ["annotate.upscale.model", "'fer-synth-tests/absent-swin2sr' is not in the local "
                                "Hugging Face cache", "HF_HUB_OFFLINE=1", "hf download fer-synth-tests/absent-swin2sr"],
                check=nothing_created(out, "the upscaler"))


# -- refused by the stage's loader, in a build ------------------------------------------------------------------------
@case("upscale-model-weights-do-not-fit-config-build")
def _(tmp_path, env):
    model = swin2sr(env, tmp_path / "x2")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "embed_dim": 32}))
    argv, out = upscale_build(tmp_path, env, model)
    return Case(argv, str(model), ["annotate.upscale.model", "do not fit its config.json", "save_pretrained"],
                unchanged=[model], check=no_stage_output(out, "upscale"))


@case("upscale-model-pickled-checkpoint-never-runs-build")
def _(tmp_path, env):
    """pytorch_model.bin holding a pickle that would create a file when unpickled: loaded with weights_only,
    refused, nothing runs."""
    import torch

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (str(ran), "w")

    model = swin2sr(env, tmp_path / "x2")
    (model / "model.safetensors").unlink()
    torch.save({"swin2sr.first_convolution.weight": Payload()}, model / "pytorch_model.bin")
    argv, out = upscale_build(tmp_path, env, model)

    def nothing_ran():
        no_stage_output(out, "upscale")()
        assert not ran.exists(), "the pickle ran"

    return Case(argv, str(model), ["annotate.upscale.model", "could not load an image super-resolution model",
                                   "Weights only load failed", "model.safetensors"], unchanged=[model],
                check=nothing_ran)
