"""Bad inputs to ``train-generator``: data without captions, images of mixed sizes where none may be resized, a
metadata path leaving its folder, a pickled-code checkpoint, a base model whose weights are a pickle with code, an
unknown LoRA target module, a resume that would change the weights. Each is refused before training (or before
the checkpoint is used), with nothing executed."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case

MARKER = "fer-synth-pickle-ran"


class _Payload:
    """Unpickling this calls ``os.system`` (writes MARKER): what torch.load(weights_only=True) must refuse."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.target}",)


def _never_ran(target: Path):
    def check() -> None:
        assert not target.exists(), "the pickle's code ran"

    return check


def _dataset(tmp: Path, sizes=(64,), caption: str | None = "text") -> Path:
    from datasets import Dataset
    from PIL import Image

    images = [Image.new("RGB", (s, s), (40 * i, 90, 30)) for i, s in enumerate(sizes * 2)]
    columns = {"image": images}
    if caption:
        columns[caption] = ["a happy face"] * len(images)
    Dataset.from_dict(columns).save_to_disk(str(tmp / "hf"))
    return tmp / "hf"


def _config(tmp: Path, data: dict, **changes) -> Path:
    config = {"base_model": "builtin:tiny-sd", "resolution": 64, "output_dir": str(tmp / "gen"), "data": data,
              "train": {"steps": 1, "batch_size": 1, "checkpoint_every": 1, "eval_examples": 1},
              "validation": {"every": 0, "seeds": [0], "num_inference_steps": 1, "expressions": ["happy"]}, **changes}
    path = tmp / "generator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _no_weights(tmp: Path):
    def check() -> None:
        assert not list((tmp / "gen").glob("checkpoints/step-*")), "training ran"

    return check


@case("train-generator-no-caption-column")
def _(tmp, env):
    config = _config(tmp, {"dataset": str(_dataset(tmp, caption="prompt"))})
    return Case(["train-generator", config, "--no-progress"], config,
                ["data.caption_column 'text' is not a column", "use one of: image, prompt"], check=_no_weights(tmp))


@case("train-generator-mixed-sizes-without-resize")
def _(tmp, env):
    config = _config(tmp, {"dataset": str(_dataset(tmp, sizes=(64, 96))), "resize": "none"})
    return Case(["train-generator", config, "--no-progress"], config,
                ["data.resize is 'none' but 2 of 4 images are not 64x64", "96x96: 2", "set data.resize: shorter-side"],
                check=_no_weights(tmp))


@case("train-generator-metadata-path-outside")
def _(tmp, env):
    from PIL import Image

    folder = tmp / "pairs"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(tmp / "outside.png")
    meta = folder / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "../outside.png", "text": "a happy face"}) + "\n")
    config = _config(tmp, {"image_folder": str(folder)})
    return Case(["train-generator", config, "--no-progress"], meta,
                ["field 'file_name (line 1)' points outside", "'../outside.png'"], check=_no_weights(tmp))


@case("train-generator-pickled-optimizer-checkpoint")
def _(tmp, env):
    from builder.cli import main

    config = _config(tmp, {"dataset": str(_dataset(tmp))}, train={"steps": 1, "batch_size": 1, "eval_examples": 1,
                                                                  "checkpoint_every": 1})
    assert main(["train-generator", str(config), "--no-progress"]) == 0
    checkpoint = tmp / "gen" / "checkpoints" / "step-0000001"
    target = tmp / MARKER
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps(_Payload(target)))
    data = yaml.safe_load(config.read_text())
    data["train"]["steps"] = 2  # resume from the poisoned checkpoint
    config.write_text(yaml.safe_dump(data))
    return Case(["train-generator", config, "--no-progress"], checkpoint,
                ["cannot be resumed from (UnpicklingError", "fix: delete"], check=_never_ran(target))


@case("train-generator-base-model-pickle-with-code")
def _(tmp, env):
    from builder.manifest import Generator
    from builder.models.diffusion import resolve_checkpoint

    folder, _ = resolve_checkpoint(Generator(model="builtin:tiny-sd"))
    base = shutil.copytree(folder, tmp / "base")
    for weights in (base / "unet").glob("*.safetensors"):
        weights.unlink()
    target = tmp / MARKER
    (base / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(target)))
    config = _config(tmp, {"dataset": str(_dataset(tmp))}, base_model=str(base))
    return Case(["train-generator", config, "--no-progress"], config,
                ["could not load a Stable Diffusion pipeline from", "base_model must be"],
                check=_never_ran(target))


@case("train-generator-unknown-lora-target")
def _(tmp, env):
    config = _config(tmp, {"dataset": str(_dataset(tmp))}, lora={"target_modules": ["to_q", "query_proj"]})
    return Case(["train-generator", config, "--no-progress"], config,
                ["lora.target_modules: query_proj name no module of the base model's unet", "e.g. "],
                check=_no_weights(tmp))


@case("train-generator-ema-with-lora")
def _(tmp, env):
    config = _config(tmp, {"dataset": str(_dataset(tmp))}, ema={"decay": 0.99})
    return Case(["train-generator", config, "--no-progress"], config,
                ["field 'ema'", "'ema' settings are given but method is 'lora'"])
