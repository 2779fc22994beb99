"""Bad fidelity inputs: a missing reference set, an encoder folder with only pickled weights (whose pickle would
run code), a model that is not a vision model, the Inception network this install cannot offer, and a release
with no images."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from tests.e2e.bad_inputs import Case, case


class _Touch:
    """Unpickling this creates ``path``: a pickle that runs code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def _reference(out: Path, dest: Path) -> Path:
    """A labelled image folder of a few of the release's own images (class_name/*.png)."""
    rows = [json.loads(line) for line in (out / "records" / "train.jsonl").read_text().splitlines() if line.strip()]
    for k, row in enumerate(rows[:6]):
        folder = dest / row["label_name"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / row["image"], folder / f"{k}.png")
    return dest


def _tiny_clip(dest: Path) -> Path:
    """A tiny CLIP vision encoder with its image processor, saved with save_pretrained (safetensors)."""
    import torch
    import transformers
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=1, num_attention_heads=2, projection_dim=16)
                                  ).save_pretrained(dest)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(dest)
    return dest


def _nothing_written(out: Path):
    def check():
        assert not (out / "fidelity").exists(), "a refused fidelity run wrote OUT/fidelity"

    return check


@case("fidelity-reference-missing")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    missing = tmp / "no-such-set"
    return Case(["fidelity", out, "--reference", missing, "--encoder", tmp / "never-loaded"], missing,
                ["--reference", "neither a dataset saved with save_to_disk nor a folder", "class_name/*.jpg"],
                [out], _nothing_written(out))


@case("fidelity-encoder-pickle-only")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    reference = _reference(out, tmp / "reference")
    encoder = _tiny_clip(tmp / "encoder")
    marker = tmp / "EXECUTED"
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Touch(marker)}))

    def check():
        assert not marker.exists(), "the encoder's pickle ran"
        _nothing_written(out)()

    return Case(["fidelity", out, "--reference", reference, "--encoder", encoder], encoder,
                ["holds only pickled weights (pytorch_model.bin)", "refused because loading one can run code",
                 "safetensors"], [out, reference, encoder], check)


@case("fidelity-encoder-not-a-vision-model")
def _(tmp, env):
    import transformers
    from transformers import BertConfig, BertModel

    out = env.demo_build(tmp / "out")
    reference = _reference(out, tmp / "reference")
    transformers.utils.logging.disable_progress_bar()
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50)).save_pretrained(tmp / "bert")
    return Case(["fidelity", out, "--reference", reference, "--encoder", tmp / "bert"], tmp / "bert" / "config.json",
                ["'bert' model", "does not read images", "not a vision model", "openai/clip-vit-base-patch32"],
                [out, reference, tmp / "bert"], _nothing_written(out))


@case("fidelity-encoder-inception-unavailable")
def _(tmp, env):
    import torch

    from evaluation.encoders import INCEPTION_WEIGHTS

    out = env.demo_build(tmp / "out")
    reference = _reference(out, tmp / "reference")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    return Case(["fidelity", out, "--reference", reference, "--encoder", "inception"], weights,
                ["torch-fidelity", "torchvision", "pickle", "DINOv2"], [out, reference], _nothing_written(out))


@case("fidelity-release-without-images")
def _(tmp, env):
    from builder.cli import main

    out = env.demo_build(tmp / "out")
    reference = _reference(out, tmp / "reference")  # taken before every sample is rejected
    ids = [json.loads(line)["sample_id"] for split in ("train", "validation", "test")
           for line in (out / "records" / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    decisions = tmp / "reject-all.json"
    decisions.write_text(json.dumps({"decisions": {i: "reject" for i in ids}}))
    assert main(["release", str(out), "--decisions", str(decisions), "--allow-empty"]) == 0
    return Case(["fidelity", out, "--reference", reference, "--encoder", tmp / "never-loaded"], out,
                ["has no images", "build-dataset release OUT"], [out, reference], _nothing_written(out))
