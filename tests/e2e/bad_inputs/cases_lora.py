"""Bad LoRA folders (``generator.lora``): refused by `validate`, `--dry-run` and before a build folder exists when
the cheap checks see it (``builder.models.lora.reference_problems``: a missing folder, pickled weights, a truncated
file, a component Stable Diffusion 1.x/2.x lacks), and by the generation stage's set-up, once the pipeline is
loaded and before any image, when only the pipeline shows it (a LoRA made on a UNet of another width or depth).
Nothing pickled is ever loaded: the pickles here would create a marker file if they were."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.cases_models import manifest, truncate, validate
from tests.e2e.bad_inputs.pairs import no_stage_output, nothing_created

WEIGHTS = "pytorch_lora_weights.safetensors"
FIELD = "generator.lora[0].path"


class Probe:
    """Unpickling it creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def lora(env, dest: Path) -> Path:
    """A copy of a valid LoRA for the tiny pipeline (made once per session, as diffusers' LoRA script does)."""
    source = env.cache / "lora"
    if not (source / WEIGHTS).is_file():
        from tests.fixtures.lora import save_lora

        save_lora(source, seed=0)
    return shutil.copytree(source, dest)


def lora_manifest(tmp_path: Path, folder: str = "loras/x") -> Path:
    return manifest(tmp_path, {"generator": {"lora": {"path": folder, "scale": 0.8}}})


def build_argv(path: Path, out: Path) -> list[str]:
    return [str(path), "--out", str(out), "--no-progress"]


def pickled_lora(folder: Path, name: str, marker: Path) -> None:
    """``torch.save`` of a LoRA state dict with a probe in it, as ``folder/name``."""
    import torch
    from safetensors.torch import load

    state = load((folder / WEIGHTS).read_bytes())
    torch.save({**state, "probe": Probe(marker)}, folder / name)


def never_unpickled(marker: Path, out: Path | None = None):
    def check():
        assert not marker.exists(), "a pickle was loaded"
        if out is not None:
            nothing_created(out, "the LoRA")()

    return check


# -- refused by the cheap checks: validate, --dry-run, and a build before its folder exists --------------------------
@case("lora-folder-missing-dry-run")
def _(tmp_path, env):
    path = lora_manifest(tmp_path, "loras/absent")
    return Case([str(path), "--dry-run"], str(path), [FIELD, "'loras/absent' does not exist",
                                                      "StableDiffusionPipeline.save_lora_weights"])


@case("lora-pickle-only-build")
def _(tmp_path, env):
    folder = lora(env, tmp_path / "loras" / "x")
    marker = tmp_path / "unpickled"
    pickled_lora(folder, "pytorch_lora_weights.bin", marker)
    (folder / WEIGHTS).unlink()
    out = tmp_path / "out"
    path = lora_manifest(tmp_path)
    return Case(build_argv(path, out), str(path),
                [FIELD, "holds only pickled weights (pytorch_lora_weights.bin)", "pickles are refused",
                 "safetensors.torch.save_file(torch.load(FILE, weights_only=True)"],
                unchanged=[folder], check=never_unpickled(marker, out))


@case("lora-pickle-under-the-safetensors-name-validate")
def _(tmp_path, env):
    folder = lora(env, tmp_path / "loras" / "x")
    marker = tmp_path / "unpickled"
    pickled_lora(folder, WEIGHTS, marker)
    path = lora_manifest(tmp_path)
    return Case(validate(path), str(path), [FIELD, WEIGHTS, "pickled torch checkpoint (torch.save)",
                                            "refused"], unchanged=[folder], check=never_unpickled(marker))


@case("lora-safetensors-truncated-validate")
def _(tmp_path, env):
    folder = lora(env, tmp_path / "loras" / "x")
    truncate(folder / WEIGHTS)
    path = lora_manifest(tmp_path)
    return Case(validate(path), str(path), [FIELD, WEIGHTS, "is truncated", "save_lora_weights"],
                unchanged=[folder])


@case("lora-for-an-sdxl-text-encoder-validate")
def _(tmp_path, env):
    """Keys for a second text encoder (SDXL's): the header alone shows the architecture is another."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "loras" / "x"
    folder.mkdir(parents=True)
    module = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": torch.zeros(4, 1280), f"{module}.lora_B.weight": torch.zeros(1280, 4)},
              folder / WEIGHTS)
    path = lora_manifest(tmp_path)
    return Case(validate(path), str(path), [FIELD, f"key '{module}.lora_A.weight' (shape [4, 1280])",
                                            "adapts component 'text_encoder_2'", "another architecture"],
                unchanged=[folder])


# -- refused by the generation stage's set-up, in a build, before any image -------------------------------------------
@case("lora-for-another-cross-attention-width-build")
def _(tmp_path, env):
    """Made on a UNet that reads 48-wide text embeddings: the tiny pipeline's read 32."""
    from tests.fixtures.lora import save_lora, tiny_unet

    folder = save_lora(tmp_path / "loras" / "x", unet=tiny_unet(cross_attention_dim=48))
    out = tmp_path / "out"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight"
    return Case(build_argv(lora_manifest(tmp_path), out), f"loras/x/{WEIGHTS}",  # as the manifest names it
                [FIELD, f"key '{key}' (shape [4, 48])", "a Linear from 32 to 64 features",
                 "down matrix has shape [rank, 32]", "made for another architecture", "build-dataset train-generator"],
                unchanged=[folder], check=no_stage_output(out, "generate"))


@case("lora-keys-name-modules-the-unet-lacks-build")
def _(tmp_path, env):
    """Made on a UNet with three layers per block: its third attention block of down_blocks.1 is not here."""
    from tests.fixtures.lora import save_lora, tiny_unet

    folder = save_lora(tmp_path / "loras" / "x", unet=tiny_unet(layers_per_block=3))
    out = tmp_path / "out"
    module = "down_blocks.1.attentions.2.transformer_blocks.0.attn1.to_k"
    return Case(build_argv(lora_manifest(tmp_path), out), f"loras/x/{WEIGHTS}",  # as the manifest names it
                [FIELD, f"key 'unet.{module}.lora.down.weight' (shape [4, 64])",
                 f"names module '{module}', which the pipeline's unet does not have", "set generator.model to"],
                unchanged=[folder], check=no_stage_output(out, "generate"))
