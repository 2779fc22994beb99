"""Bad caption models of a training-pairs manifest (``annotate.captions.model``): a causal language model
without vision, a diffusers pipeline, a model that needs its own code, and a Hub id missing from the cache
offline. Each is refused by the reference check before anything is created, loaded or run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case

FIELD = "annotate.captions.model"


def _photos(tmp: Path) -> Path:
    """happy/ and sad/ folders of one small PNG each (the refusals come before any image is read)."""
    from PIL import Image

    folder = tmp / "photos"
    for i, label in enumerate(("happy", "sad")):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (48, 48), (90 + 40 * i, 60, 30)).save(folder / label / "face.png")
    return folder


def _manifest(tmp: Path, model: str) -> Path:
    """A training-pairs manifest over ``_photos`` (labels from the folder names) captioned by ``model``."""
    data = {"name": "caption-pairs", "version": "0.1.0", "seed": 7,
            "images": {"folder": str(_photos(tmp)), "labels": "folder-names", "license": "cc0-1.0"},
            "labels": {"label_map": "affectnet7"},
            "annotate": {"captions": {"model": model}},
            "output": {"splits": {"train": 1.0}, "shard_size": 4}}
    path = tmp / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _causal_lm(env, dest: Path) -> Path:
    """A copy of a tiny GPT-2 (made once per session)."""
    from tests.fixtures.tiny_vlm import build_tiny_causal_lm

    source = env.cache / "tiny-gpt2"
    if not (source / "config.json").is_file():
        build_tiny_causal_lm(source)
    shutil.copytree(source, dest)
    return dest


def _not_created(path: Path):
    def check() -> None:
        assert not path.exists(), f"{path} was created"

    return check


@case("caption-model-a-causal-lm-build")
def _(tmp, env):
    gpt2 = _causal_lm(env, tmp / "gpt2")
    manifest, out = _manifest(tmp, str(gpt2)), tmp / "out"
    return Case([manifest, "--out", out, "--no-progress"], manifest,
                [f"{FIELD}: '{gpt2}' is a text-only causal language model (GPT2LMHeadModel)",
                 "not an image-text-to-text model", "vision-language model"],
                [gpt2, tmp / "photos"], _not_created(out))


@case("caption-model-a-causal-lm-validate")
def _(tmp, env):
    gpt2 = _causal_lm(env, tmp / "gpt2")
    manifest = _manifest(tmp, str(gpt2))
    return Case(["validate", manifest], manifest, [f"{FIELD}: '{gpt2}' is a text-only causal language model"],
                [gpt2])


@case("caption-model-a-diffusers-pipeline")
def _(tmp, env):
    from builder.models.tiny_sd import ensure_tiny_pipeline

    pipeline = ensure_tiny_pipeline(tmp / "tiny-sd")
    manifest = _manifest(tmp, str(pipeline))
    return Case(["validate", manifest], manifest, [f"{FIELD}: '{pipeline}' is a diffusers pipeline folder"],
                [pipeline])


@case("caption-model-needs-its-own-code")
def _(tmp, env):
    folder = tmp / "custom-vlm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "my_vlm", "architectures": ["MyVLM"],
                                                    "auto_map": {"AutoModel": "modeling_my.MyVLM"}}))
    marker = tmp / "executed"
    (folder / "modeling_my.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    manifest, out = _manifest(tmp, str(folder)), tmp / "out"

    def nothing_ran() -> None:
        assert not marker.exists(), "the model's own code ran"
        assert not out.exists(), f"{out} was created"

    return Case([manifest, "--out", out, "--no-progress"], manifest,
                [f"{FIELD}: '{folder}' is a 'my_vlm' model that needs its own code", "trust_remote_code is off"],
                [folder], nothing_ran)


@case("caption-model-not-cached-offline")
def _(tmp, env):
    manifest, out = _manifest(tmp, "someone/not-cached-vlm"), tmp / "out"
    return Case([manifest, "--out", out, "--no-progress"], manifest,
                [f"{FIELD}: 'someone/not-cached-vlm' is not in the local Hugging Face cache",
                 "HF_HUB_OFFLINE=1", "hf download someone/not-cached-vlm"], [tmp / "photos"], _not_created(out))


@case("caption-model-missing-folder-validate")
def _(tmp, env):
    manifest = _manifest(tmp, str(tmp / "no-such-vlm"))
    return Case(["validate", manifest], manifest, [f"{FIELD}: '{tmp / 'no-such-vlm'}' does not exist"])
