"""Bad audit inputs: a classifier folder with only pickled weights (whose pickle would run code), a model that is
not an image classifier (a ViT backbone without a head), a --map value the manifest never prompted, a --map label
the classifier does not have, and a release with no images."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.cases_fidelity import _Touch


def _classifier(dest: Path, head: bool = True) -> Path:
    """A tiny ViT age classifier (young / old) with its image processor, or the bare backbone (``head=False``)."""
    import torch
    import transformers
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label={0: "young", 1: "old"}, label2id={"young": 0, "old": 1})
    (ViTForImageClassification(config) if head else ViTModel(config)).save_pretrained(dest)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dest)
    return dest


def _nothing_written(out: Path):
    def check():
        for name in ("eval/audit.json", "report"):
            assert not (out / name).exists(), f"a refused audit wrote OUT/{name}"

    return check


@case("audit-classifier-pickle-only")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    model = _classifier(tmp / "age")
    marker = tmp / "EXECUTED"
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Touch(marker)}))

    def check():
        assert not marker.exists(), "the classifier's pickle ran"
        _nothing_written(out)()

    return Case(["audit", out, "--classifier", f"age={model}"], model,
                ["--classifier", "holds only pickled weights (pytorch_model.bin)", "can run code", "safetensors"],
                [out, model], check)


@case("audit-classifier-not-a-classifier")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    model = _classifier(tmp / "backbone", head=False)
    return Case(["audit", out, "--classifier", f"age={model}", "--whole-image"], model / "config.json",
                ["'vit' model (ViTModel)", "not an image-classification model", "id2label"], [out, model],
                _nothing_written(out))


@case("audit-map-unknown-value")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    model = _classifier(tmp / "age")
    return Case(["audit", out, "--classifier", f"age={model}", "--map", "age:teenager=young", "--whole-image"],
                out / "build.json", ["--map age:teenager", "'teenager' is not a value of age", "young, middle-aged, old",
                        "prompts.axes.age"], [out, model], _nothing_written(out))


@case("audit-map-unknown-label")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    model = _classifier(tmp / "age")
    return Case(["audit", out, "--classifier", f"age={model}", "--map", "age:young=0-19,20-29", "--whole-image"],
                model, ["'0-19', '20-29' are not labels", "labels: young, old", "id2label"], [out, model],
                _nothing_written(out))


@case("audit-release-without-images")
def _(tmp, env):
    from builder.cli import main

    out = env.demo_build(tmp / "out")
    ids = [json.loads(line)["sample_id"] for split in ("train", "validation", "test")
           for line in (out / "records" / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    decisions = tmp / "reject-all.json"
    decisions.write_text(json.dumps({"decisions": {i: "reject" for i in ids}}))
    assert main(["release", str(out), "--decisions", str(decisions), "--allow-empty"]) == 0
    return Case(["audit", out, "--classifier", f"age={tmp / 'never-loaded'}"], out,
                ["has no images", "build-dataset release OUT"], [out], _nothing_written(out))
