"""Bad model files and model references: damaged or pickled weights, configs of the wrong shape, broken ONNX
graphs, unknown registry names, a push offline or of links that leave the release, and a manifest whose model
references are checked all at once (``builder.references``)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case

ROOT = Path(__file__).resolve().parents[3]
REPO = "tester/fer-demo"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "au_adapter_config.json", "au_adapter.safetensors"
FERANNO_CONFIG, FERANNO_WEIGHTS = "feranno_config.json", "feranno.safetensors"
REFERENCES_FIX = "`build-dataset validate MANIFEST` checks them again"


# -- what the cases build on ----------------------------------------------------------------------------------------
def manifest(folder: Path, changes: dict, name: str = "manifest.yaml") -> Path:
    """The demo manifest (one sample per class) with ``changes`` deep-merged in, written to ``folder``."""
    from tests.conftest import DEMO, deep_update

    data = deep_update(yaml.safe_load(DEMO.read_text()), {"labels": {"counts": 1}, **changes})
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def adapter(env, dest: Path) -> Path:
    """A copy of a tiny AU adapter for the tiny pipeline (made once per session with ``AUAdapter.for_unet``)."""
    source = env.cache / "au-adapter"
    if not (source / ADAPTER_WEIGHTS).is_file():
        from diffusers import UNet2DConditionModel

        from builder.manifest.au_sets import AU_SETS
        from builder.models.tiny_sd import ensure_tiny_pipeline
        from builder.synthesis.au_adapter import AUAdapter

        unet = UNet2DConditionModel.from_pretrained(ensure_tiny_pipeline() / "unet", local_files_only=True)
        AUAdapter.for_unet(unet, list(AU_SETS["disfa12"]), hidden_dim=16, seed=0).save_pretrained(source)
    shutil.copytree(source, dest)
    return dest


def feranno(dest: Path) -> Path:
    """A small, valid FERAnno folder (random head; its backbone is the built-in tiny pipeline)."""
    from builder.manifest.label_maps import LABEL_MAPS
    from curation.labelling.feranno.model import FERAnno, FERAnnoConfig

    meta = {"label_names": list(LABEL_MAPS["fer2013"]), "base_model": "builtin:tiny-sd", "revision": None,
            "weights_sha256": "0" * 64, "resolution": 64, "prompt": "a face",
            "inversion": {"steps": 2, "timestep": 10, "t": 10}}
    FERAnno(FERAnnoConfig(feature_channels=[8], tokens=4, text_dim=8, num_classes=7, hidden_dim=8, heads=2,
                          meta=meta)).save_pretrained(dest)
    return dest


def pickled(path: Path) -> None:
    """Replace a safetensors file by a torch.save checkpoint of the same tensors under the same name."""
    import torch
    from safetensors.torch import load

    torch.save(load(path.read_bytes()), path)  # from a copy in memory: load_file maps the file being rewritten


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def validate(path: Path) -> list[str]:
    return ["validate", str(path)]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def adapter_manifest(tmp_path: Path, env, damage) -> tuple[Path, Path]:
    folder = adapter(env, tmp_path / "adapters" / "x")
    damage(folder)
    return manifest(tmp_path, {"generator": {"au_adapter": {"path": "adapters/x"}}}), folder


def arcface_onnx(path: Path, output_shape=(1, 8)) -> Path:
    """An ArcFace-shaped graph (1x3x112x112 input); ``output_shape`` (1, 3, 112, 112) makes it return the image."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(output_shape) == 2:
        weight = numpy_helper.from_array(np.full((3 * 112 * 112, output_shape[1]), 1e-3, np.float32), "w")
        nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
        inits = [weight]
    else:
        nodes, inits = [helper.make_node("Identity", ["x"], ["y"])], []
    graph = helper.make_graph(nodes, "arcface-shaped",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def index_reference(tmp_path: Path, model: Path) -> list[str]:
    """``index-reference`` with the insightface backend on ``model`` over one photo."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (128, 128), (120, 90, 60)).save(tmp_path / "photos" / "a.png")
    config = tmp_path / "reference.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "index"), "backend": "insightface",
                                      "model": str(model), "sources": [{"name": "r", "folder": str(tmp_path / "photos")}]}))
    return ["index-reference", str(config), "--no-progress"]


def scrfd_build(tmp_path: Path, model: Path) -> list[str]:
    path = manifest(tmp_path, {"curation": {"faces": {"enabled": True, "detector": "scrfd",
                                                      "detector_model": str(model)}}})
    return [str(path), "--out", str(tmp_path / "out"), "--no-progress"]


# -- AU adapter ----------------------------------------------------------------------------------------------------
@case("au-adapter-weights-truncated")
def _(tmp_path, env):
    path, folder = adapter_manifest(tmp_path, env, lambda f: truncate(f / ADAPTER_WEIGHTS))
    return Case(validate(path), str(path), ["generator.au_adapter.path", ADAPTER_WEIGHTS, "is truncated"],
                unchanged=[folder])


@case("au-adapter-weights-pickled-build")
def _(tmp_path, env):
    path, folder = adapter_manifest(tmp_path, env, lambda f: pickled(f / ADAPTER_WEIGHTS))
    out = tmp_path / "out"

    def nothing_created():
        assert not out.exists(), "the references are checked before the build folder is made"

    return Case([str(path), "--out", str(out), "--no-progress"], str(path),
                ["generator.au_adapter.path", "pickled torch checkpoint", "refused"], unchanged=[folder],
                check=nothing_created)


@case("au-adapter-config-wrong-types")
def _(tmp_path, env):
    def damage(folder):
        edit_json(folder / ADAPTER_CONFIG, lambda d: {**d, "num_tokens": "four", "layers": []})

    path, folder = adapter_manifest(tmp_path, env, damage)
    return Case(validate(path), str(path), ["not a valid AU adapter config", "field 'num_tokens'", "(got 'four')",
                                            "field 'layers'"], unchanged=[folder])


@case("au-adapter-config-au-names-a-string")
def _(tmp_path, env):
    path, folder = adapter_manifest(
        tmp_path, env, lambda f: edit_json(f / ADAPTER_CONFIG, lambda d: {**d, "au_names": "AU1"}))
    return Case([str(path), "--dry-run"], str(path), ["field 'au_names'", "valid list"], unchanged=[folder])


@case("au-adapter-config-missing-and-unknown-keys")
def _(tmp_path, env):
    def damage(folder):
        edit_json(folder / ADAPTER_CONFIG, lambda d: {k: v for k, v in d.items() if k != "cross_attention_dim"}
                  | {"num_token": 4})

    path, folder = adapter_manifest(tmp_path, env, damage)
    return Case(validate(path), str(path), ["field 'cross_attention_dim': required field is missing",
                                            "field 'num_token': unknown key, did you mean 'num_tokens'?"],
                unchanged=[folder])


@case("au-adapter-config-a-json-list")
def _(tmp_path, env):
    path, folder = adapter_manifest(tmp_path, env, lambda f: (f / ADAPTER_CONFIG).write_text("[1, 2]"))
    return Case(validate(path), str(path), ["must be a JSON object", "found a list"], unchanged=[folder])


# -- FERAnno ---------------------------------------------------------------------------------------------------------
def feranno_manifest(tmp_path: Path, damage) -> tuple[Path, Path]:
    folder = feranno(tmp_path / "feranno")
    damage(folder)
    path = manifest(tmp_path, {"labelling": {"feranno": {"model": "feranno"}}})
    return path, folder


@case("feranno-config-wrong-types")
def _(tmp_path, env):
    def damage(folder):
        edit_json(folder / FERANNO_CONFIG, lambda d: {**d, "tokens": "4", "feature_channels": 8})

    path, folder = feranno_manifest(tmp_path, damage)
    return Case(validate(path), str(path), ["labelling.feranno.model", "not a valid FERAnno config",
                                            "field 'tokens'", "field 'feature_channels'"], unchanged=[folder])


@case("feranno-config-without-meta")
def _(tmp_path, env):
    path, folder = feranno_manifest(
        tmp_path, lambda f: edit_json(f / FERANNO_CONFIG, lambda d: {k: v for k, v in d.items() if k != "meta"}))
    return Case(validate(path), str(path), ["field 'meta': required field is missing"], unchanged=[folder])


@case("feranno-weights-pickled")
def _(tmp_path, env):
    path, folder = feranno_manifest(tmp_path, lambda f: pickled(f / FERANNO_WEIGHTS))
    return Case([str(path), "--dry-run"], str(path), ["labelling.feranno.model", "pickled torch checkpoint"],
                unchanged=[folder])


# -- ONNX models -----------------------------------------------------------------------------------------------------
@case("arcface-onnx-garbage-bytes")
def _(tmp_path, env):
    model = tmp_path / "w600k_r50.onnx"
    model.write_bytes(b"\x00\xffnot a protobuf\x13" * 64)
    return Case(index_reference(tmp_path, model), str(model), ["cannot load w600k_r50.onnx as an ONNX model",
                                                               "w600k_r50.onnx"], unchanged=[model])


@case("arcface-onnx-truncated")
def _(tmp_path, env):
    model = arcface_onnx(tmp_path / "w600k_r50.onnx")
    truncate(model)
    return Case(index_reference(tmp_path, model), str(model), ["cannot load w600k_r50.onnx as an ONNX model"],
                unchanged=[model])


@case("arcface-onnx-wrong-output-shape")
def _(tmp_path, env):
    model = arcface_onnx(tmp_path / "w600k_r50.onnx", output_shape=(1, 3, 112, 112))
    return Case(index_reference(tmp_path, model), str(model), ["(1, 3, 112, 112) for a face",
                                                               "not one finite embedding vector"], unchanged=[model])


@case("scrfd-onnx-garbage-bytes")
def _(tmp_path, env):
    model = tmp_path / "det_10g.onnx"
    model.write_bytes(b"garbage" * 100)
    return Case(scrfd_build(tmp_path, model), str(model), ["cannot load det_10g.onnx as an ONNX model",
                                                           "det_10g.onnx"], unchanged=[model])


@case("scrfd-onnx-wrong-output-shapes")
def _(tmp_path, env):
    import onnx
    from onnx import TensorProto, helper

    model = tmp_path / "det_10g.onnx"  # SCRFD's nine outputs, each the flattened image instead of per-anchor rows
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], [f"out{i}"]) for i in range(9)], "nine",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, None])
                               for i in range(9)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, str(model))
    return Case(scrfd_build(tmp_path, model), str(model), ["is not an SCRFD detector", "output 'out0' has shape",
                                                           "stride-8 scores are (12800, 1)"], unchanged=[model])


@case("scrfd-detector-model-missing-validate")
def _(tmp_path, env):
    path = manifest(tmp_path, {"curation": {"faces": {"enabled": True, "detector": "scrfd",
                                                      "detector_model": "models/det_10g.onnx"}}})
    return Case(validate(path), str(path), ["curation.faces.detector_model: 'models/det_10g.onnx' does not exist"])


# -- registry names ----------------------------------------------------------------------------------------------------
@case("models-fetch-unknown-name")
def _(tmp_path, env):
    return Case(["models", "fetch", "mini-xcepton"], "models fetch",
                ["unknown model 'mini-xcepton'", "did you mean 'mini-xception-fer2013'?", "tiny-sd"])


@case("expert-unknown-registry-name")
def _(tmp_path, env):
    path = manifest(tmp_path, {"labelling": {"experts": [{"name": "fer", "model": "mini-xception-fer2031"}]}})
    return Case(validate(path), str(path), ["labelling.experts.0.model",
                                            "'mini-xception-fer2031' is neither a registered classifier",
                                            "did you mean 'mini-xception-fer2013'?"])


@case("expert-registry-name-of-another-kind")
def _(tmp_path, env):
    path = manifest(tmp_path, {"labelling": {"experts": [{"name": "sd", "model": "tiny-sd"}]}})
    return Case([str(path), "--dry-run"], str(path), ["labelling.experts.0.model", "is a diffusion-pipeline",
                                                      "use one of: mini-xception-fer2013"])


@case("guide-classifier-config-names-outside-code")
def _(tmp_path, env):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "net.safetensors"))
    config = tmp_path / "guide.yaml"
    config.write_text(yaml.safe_dump({"architecture": "fer_synth_probe_module:Net", "weights": "net.safetensors",
                                      "labels": ["happy", "sad"], "input": {"size": 32}}))
    path = manifest(tmp_path, {"generator": {"guidance": {"classifier": "guide.yaml"}}})

    def nothing_imported():
        assert "fer_synth_probe_module" not in sys.modules

    return Case(validate(path), str(path), ["generator.guidance.classifier", "fer_synth_probe_module",
                                            "trust_remote_code is off", "--trust-remote-code"],
                unchanged=[config], check=nothing_imported)


@case("generator-hub-model-not-cached-offline")
def _(tmp_path, env):
    path = manifest(tmp_path, {"generator": {"model": "someone/not-cached-model"}})
    return Case(validate(path), str(path), [
        "generator.model: 'someone/not-cached-model' is not in the local Hugging Face cache", "HF_HUB_OFFLINE"])


@case("identity-leak-index-json-missing-keys")
def _(tmp_path, env):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "index.json").write_text(json.dumps({"format": 1, "backend": "dlib"}))
    path = manifest(tmp_path, {"curation": {"identity_leak": {"index": "refs", "threshold": 0.6}}})
    return Case(validate(path), str(path), ["curation.identity_leak.index", "not a valid reference index",
                                            "field 'count': required field is missing"],
                unchanged=[tmp_path / "refs"])


@case("four-broken-references-at-once")
def _(tmp_path, env):
    (tmp_path / "adapters" / "x").mkdir(parents=True)
    (tmp_path / "faces").mkdir()
    path = manifest(tmp_path, {"generator": {"au_adapter": {"path": "adapters/x"}, "layout": {"images": "faces"},
                                             "guidance": {"classifier": "absent.hdf5"}},
                               "curation": {"dedupe": {"reference": "no-index"}}})
    return Case([str(path), "--dry-run"], str(path), [
        "4 model references are missing or invalid",
        "generator.au_adapter.path: 'adapters/x' has no au_adapter_config.json and no au_adapter.safetensors",
        "generator.guidance.classifier: 'absent.hdf5' is neither a registered classifier nor an existing file",
        "generator.layout.images: 'faces' holds no png, jpg or webp image",
        "curation.dedupe.reference: 'no-index' does not exist", REFERENCES_FIX])


# -- push ------------------------------------------------------------------------------------------------------------
@case("push-while-offline")
def _(tmp_path, env):
    out = env.demo_build(tmp_path / "demo")
    return Case(["push", str(out), "--repo-id", REPO], f"datasets/{REPO}@main",
                ["HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"], unchanged=[out])


@case("push-data-file-links-outside-the-release")
def _(tmp_path, env):
    out = env.demo_build(tmp_path / "demo")
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n")
    data = min((out / "data").glob("*.parquet"))
    data.unlink()
    data.symlink_to(secret)
    return Case(["push", str(out), "--repo-id", REPO, "--dry-run"], str(data),
                ["is a link to", "outside the release folder"], unchanged=[secret.parent])


@case("push-readme-links-outside-the-release")
def _(tmp_path, env):
    out = env.demo_build(tmp_path / "demo")
    outside = tmp_path / "elsewhere.md"
    outside.write_text((out / "README.md").read_text())
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(outside)
    return Case(["push", str(out), "--repo-id", REPO, "--dry-run"], str(out / "README.md"),
                ["outside the release folder", "push uploads only files inside it"], unchanged=[outside])
