"""Any torch classifier as the guide, by a YAML config: architecture, safetensors weights, labels, input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from builder.cli import main
from builder.core.errors import ModelLoadError, UserError
from builder.manifest.label_maps import LABEL_MAPS
from builder.models.store import load_fer_classifier, model_sha256


class TinyRGBNet(nn.Module):
    """An RGB classifier with 8 outputs, standing in for any user architecture."""

    def __init__(self, classes: int = 8, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_config(folder, architecture, weights_name, labels, size, channels, mean, std, **init):
    cfg = {"architecture": architecture, "init_args": init, "weights": weights_name, "labels": list(labels),
           "input": {"size": size, "channels": channels, "mean": mean, "std": std}}
    path = folder / "classifier.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_real_mini_xception_through_a_config_equals_the_hdf5_loader(tmp_path):
    from skimage import data

    reference = load_fer_classifier("mini-xception-fer2013")
    save_file({k: v.contiguous() for k, v in reference.module.state_dict().items()}, tmp_path / "mx.safetensors")
    config = write_config(tmp_path, "builder.models.fer.mini_xception:MiniXception", "mx.safetensors",
                          LABEL_MAPS["fer2013"], 64, 1, [0.5], [0.5], num_classes=7)
    configured = load_fer_classifier(str(config))
    face = torch.from_numpy(data.astronaut()[55:190, 155:290].astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert torch.equal(configured.logits(face), reference.logits(face))
        assert configured.labels[int(configured.probs(face).argmax())] == "happy"


def test_rgb_classifier_preprocessing_and_label_mapping(tmp_path):
    torch.manual_seed(0)
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    config = write_config(tmp_path, "tests.models.test_guide_config:TinyRGBNet", "net.safetensors", LABEL_MAPS["affectnet8"],
                          32, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    clf = load_fer_classifier(str(config), trust_remote_code=True)
    grey = torch.full((1, 3, 48, 48), 0.5)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(clf.preprocess(grey)[0, :, 0, 0], expected)
    assert clf.preprocess(grey).shape == (1, 3, 32, 32)
    probs, missing = clf.probs_for(torch.rand(2, 3, 64, 64), LABEL_MAPS["rafdb"])
    assert missing == () and probs.shape == (2, 7)


def test_config_classifier_guides_a_build(tmp_path, write_manifest):
    torch.manual_seed(1)
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    config = write_config(tmp_path, "tests.models.test_guide_config:TinyRGBNet", "net.safetensors", LABEL_MAPS["affectnet8"],
                          32, 3, [0.5], [0.5])
    manifest = write_manifest({"name": "custom-guide", "labels": {"label_map": "affectnet8", "counts": {"contempt": 2}},
                               "aus": {"intensity": {}},
                               "generator": {"guidance": {"classifier": str(config), "scale": 0.5, "wrt": "latents"}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2, "a class outside the tool needs the opt-in"
    assert not (out / "shards").exists()
    assert main([str(manifest), "--out", str(out), "--no-progress", "--trust-remote-code"]) == 0
    guidance = json.loads((out / "stats.json").read_text())["guidance"]
    assert guidance["unguided_classes"] == [], "this guide knows contempt"
    assert guidance["sha256"] == model_sha256(str(config))
    torch.manual_seed(2)
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    assert model_sha256(str(config)) != guidance["sha256"], "the provenance hash covers the weights"


def mean_guided_probability(clf, target_name: str, start: int, wrt: str) -> float:
    """Mean probability of ``target_name`` under ``clf`` over 4 seeds of the tiny pipeline, guided from ``start``
    (8 steps: start=8 means unguided)."""
    from builder.manifest.loader import load_manifest
    from builder.models.diffusion import load_pipeline
    from builder.synthesis.guidance import guided_sample
    from tests.conftest import DEMO

    pipe = load_pipeline(load_manifest(DEMO).generator)[0]
    target = clf.labels.index(target_name)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a face"] * 4, "cpu", 1, True, negative_prompt=[""] * 4)
    images = guided_sample(pipe, cond, uncond, [torch.Generator().manual_seed(s) for s in range(4)], steps=8,
                           cfg_scale=3.0, height=64, width=64, guide=clf, targets=[target] * 4, scale=1.0,
                           start=start, end=8, wrt=wrt)
    with torch.no_grad():
        return clf.probs(images.permute(0, 3, 1, 2))[:, target].mean().item()


def test_guided_probability_rises_for_a_config_classifier(tmp_path, tiny_model):
    torch.manual_seed(3)
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    clf = load_fer_classifier(str(write_config(tmp_path, "tests.models.test_guide_config:TinyRGBNet", "net.safetensors",
                                               LABEL_MAPS["affectnet8"], 32, 3, [0.5], [0.5])),
                              trust_remote_code=True)
    guided, unguided = (mean_guided_probability(clf, "contempt", start, "latents") for start in (2, 8))
    assert guided > unguided


@pytest.mark.parametrize("change, message", [
    ({"architecture": "nowhere.models:Net"}, "cannot be imported"),
    ({"weights": "../net.safetensors"}, "field 'weights' points outside"),
    ({"init_args": {"colours": 3}}, "does not accept init_args"),
    ({"weights": "net.pt"}, "pickled checkpoints are refused"),
    ({"init_args": {"width": 5}}, "weights do not fit"),
    ({"labels": ["happy", "joy"] + list(LABEL_MAPS["affectnet8"])[2:]}, "labels or input do not fit"),
])
def test_config_errors(tmp_path, change, message):
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    (tmp_path / "net.pt").write_bytes(b"pickle")
    config = write_config(tmp_path, "tests.models.test_guide_config:TinyRGBNet", "net.safetensors", LABEL_MAPS["affectnet8"],
                          32, 3, [0.5], [0.5])
    data = yaml.safe_load(config.read_text())
    data.update(change)
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message):
        load_fer_classifier(str(config), trust_remote_code=True)


# Loading a config never runs code its author chose: each target below would run a command (touch a marker
# file) if it were imported and called with its init_args.
HOSTILE = {
    "subprocess-popen": ("subprocess:Popen", {"args": ["touch", "{marker}"]}),
    "os-system": ("os:system", {"command": "touch {marker}"}),
    "builtins-exec": ("builtins:exec", {"source": "open('{marker}', 'w').close()"}),
    "plain-function": ("builder.cli:main", {"argv": ["schema", "--write"]}),
    "non-module-class": ("builder.core.records:Drop", {"stage": "x", "reason": "y"}),
    "project-module-function": ("torch:save", {"obj": 1, "f": "{marker}"}),
}


def hostile_config(tmp_path, target: str, init_args: dict):
    marker = tmp_path / "EXECUTED"
    args = json.loads(json.dumps(init_args).replace("{marker}", str(marker)))
    save_file(TinyRGBNet().state_dict(), tmp_path / "net.safetensors")
    config = write_config(tmp_path, target, "net.safetensors", LABEL_MAPS["affectnet8"], 32, 3, [0.5], [0.5], **args)
    return config, marker


@pytest.mark.parametrize("trust", [False, True], ids=["default", "trust_remote_code"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_config_never_calls_what_is_not_an_nn_module(tmp_path, name, trust):
    config, marker = hostile_config(tmp_path, *HOSTILE[name])
    outside = HOSTILE[name][0].split(".")[0].split(":")[0] not in ("builder", "torch")
    expected = "outside this tool and torch" if outside and not trust else "not a torch.nn.Module class"
    with pytest.raises(ModelLoadError, match=expected) as err:
        load_fer_classifier(str(config), trust_remote_code=trust)
    assert not marker.exists(), "the config's target was called"
    assert err.value.file == str(config)
    if outside and not trust:
        assert "--trust-remote-code" in err.value.fix


def test_a_user_class_needs_the_opt_in_and_is_not_imported_without_it(tmp_path, monkeypatch):
    """A class outside torch and the tool: refused by default before its module is imported (importing runs the
    module's code), loaded with trust_remote_code."""
    import sys

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "evilnet.py").write_text("open(__file__ + '.imported', 'w').close()\n"
                                        "from tests.models.test_guide_config import TinyRGBNet as Net\n")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "evilnet", raising=False)
    config, _ = hostile_config(tmp_path, "evilnet:Net", {})
    with pytest.raises(ModelLoadError, match="'evilnet:Net' is code from the package 'evilnet'"):
        load_fer_classifier(str(config))
    assert not (package / "evilnet.py.imported").exists()
    assert load_fer_classifier(str(config), trust_remote_code=True).labels[-1] == "contempt"
    assert (package / "evilnet.py.imported").exists()
