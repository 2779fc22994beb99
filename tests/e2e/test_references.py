"""A manifest's model references, checked at once and cheaply (``builder.references``), by ``validate``,
``--dry-run`` and ``build()``; and the readers of model files the loaders share."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.manifest.loader import load_manifest
from builder.models.files import PICKLE_PROBLEM, read_json_config, safetensors_problem
from builder.references import check_references, require_references
from builder.synthesis.au_adapter_config import AUAdapterConfig
from curation.labelling.feranno.config_file import FERAnnoConfigFile
from tests.conftest import ROOT
from tests.e2e.bad_inputs.cases_models import adapter_manifest, feranno, manifest
from tests.e2e.bad_inputs.env import Env

PROBE = """
import sys
from builder.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "datasets", "onnx", "insightface") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("references"))


def test_four_broken_references_are_one_message_naming_each_field(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adapters" / "x").mkdir(parents=True)
    (tmp_path / "adapters" / "x" / "au_adapter_config.json").write_text("{}")
    path = manifest(tmp_path, {"generator": {"au_adapter": {"path": "adapters/x"}, "guidance": {"decoder": "./taesd"}},
                               "labelling": {"experts": [{"name": "fer", "model": "mini-xception-fer2031"}]},
                               "curation": {"faces": {"enabled": True, "detector": "scrfd",
                                                      "detector_model": "det_10g.onnx"}}})
    for argv in (["validate", str(path)], [str(path), "--dry-run", "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert lines[0] == f"error: {path}: 4 model references are missing or invalid:", err
        assert lines[1:5] == [
            ("    - generator.au_adapter.path: 'adapters/x' has no au_adapter.safetensors (fix: give the output "
            "folder of `build-dataset train-au-adapter`)"),
            ("    - generator.guidance.decoder: './taesd' does not exist (fix: give a diffusers AutoencoderTiny "
            "folder (with config.json))"),
            ("    - labelling.experts.0.model: 'mini-xception-fer2031' is neither a registered classifier nor an "
            "existing file (fix: did you mean 'mini-xception-fer2013'? use one of: mini-xception-fer2013 "
            "(`build-dataset models list`), the path of a Keras .hdf5 file, or a classifier config (.yaml) for a "
            "torch or ONNX model)"),
            ("    - curation.faces.detector_model: 'det_10g.onnx' does not exist (fix: download the buffalo_l pack "
            "from the insightface releases, unpack it, and set curation.faces.detector_model to the path of its "
            "detector, det_10g.onnx (an SCRFD .onnx file with landmarks))")], err
        assert lines[5].startswith("  fix: fix each field listed") and len(lines) == 6, err
    assert not (tmp_path / "out").exists()


def test_build_refuses_before_the_output_folder_exists(tmp_path, capsys):
    from builder.run import build

    broken = load_manifest(manifest(tmp_path, {"generator": {"layout": {"images": str(tmp_path / "none")}}}))
    with pytest.raises(ModelLoadError) as error:
        build(broken, tmp_path / "out", progress=False, log=lambda _: None)
    assert error.value.file == "manifest 'demo'"
    assert error.value.message == f"generator.layout.images: '{tmp_path / 'none'}' does not exist"
    assert not (tmp_path / "out").exists(), "nothing is created or locked for a manifest that cannot run"


@pytest.mark.parametrize("name", ["demo.yaml", "sd15-affectnet7.yaml", "label-photos.yaml"])
def test_shipped_manifests_validate(name, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    path = ROOT / "manifests" / name
    monkeypatch.chdir(tmp_path)
    if name == "label-photos.yaml":  # `make faces`: the example photos in out/faces
        from builder.example_faces import write_example_faces

        write_example_faces(tmp_path / "out" / "faces")
    if name == "sd15-affectnet7.yaml":  # a Hub model, offline: it must be in the Hub cache
        monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert "generator.model: 'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the local Hugging Face " \
               f"cache ({tmp_path / 'hub'})" in err.splitlines()[0] and "hf download" in err
        repo = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("a" * 40)
        (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
        (repo / "snapshots" / ("a" * 40) / "model_index.json").write_text("{}")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{path}: ok (")
    if name == "sd15-affectnet7.yaml":  # online the Hub is not asked (the load does that)
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
        shutil.rmtree(tmp_path / "hub")
        assert check_references(load_manifest(path)) == []


def test_outside_classifier_code_is_reported_and_never_imported(tmp_path, capsys, monkeypatch):
    """A guide config naming a class outside torch and this tool: validate refuses it without the flag and imports
    nothing; a module that would leave a marker on import proves it."""
    import numpy as np
    from safetensors.numpy import save_file

    package = tmp_path / "code"
    package.mkdir()
    marker = tmp_path / "IMPORTED"
    (package / "fer_synth_marker_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\nclass Net(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(package))
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "net.safetensors"))
    for target in ("subprocess:Popen", "fer_synth_marker_module:Net"):
        config = tmp_path / "guide.yaml"
        config.write_text(yaml.safe_dump({"architecture": target, "weights": "net.safetensors",
                                          "labels": ["happy", "sad"], "input": {"size": 32}}))
        path = manifest(tmp_path, {"generator": {"guidance": {"classifier": str(config)}}})
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        package_name = target.split(":")[0]
        assert err.startswith(f"error: {path}: generator.guidance.classifier: {config}: field 'architecture': "
                              f"'{target}' is code from the package '{package_name}'"), err
        assert "trust_remote_code is off" in err and "--trust-remote-code" in err
    assert not marker.exists() and "fer_synth_marker_module" not in sys.modules, "nothing was imported"

    # With the opt-in, the class is imported (as the build would) and checked; it is never instantiated.
    assert main(["validate", str(path), "--trust-remote-code"]) == 0, capsys.readouterr().err
    assert marker.exists()
    config.write_text(yaml.safe_dump({"architecture": "subprocess:Popen", "weights": "net.safetensors",
                                      "labels": ["happy", "sad"], "input": {"size": 32}}))
    assert main(["validate", str(path), "--trust-remote-code"]) == 2
    assert "'subprocess:Popen' is the class Popen, not a torch.nn.Module class; it was not called" in \
           capsys.readouterr().err


def test_classifier_config_files_and_labels(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(4, np.float32)}, str(tmp_path / "net.safetensors"))
    config = tmp_path / "guide.yaml"

    def problems(**fields) -> list[str]:
        config.write_text(yaml.safe_dump({"architecture": "torch.nn:Linear", "init_args": {"in_features": 2,
                                          "out_features": 2}, "weights": "net.safetensors",
                                          "labels": ["happy", "sad"], "input": {"size": 32}, **fields}))
        return check_references(load_manifest(manifest(tmp_path, {"generator": {"guidance": {
            "classifier": str(config)}}})))

    assert problems() == []
    assert problems(weights="absent.safetensors") == [
        (f"generator.guidance.classifier: {config}: field 'weights' names 'absent.safetensors', which does not "
        "exist (fix: put the file beside the config (paths in 'weights' are relative to it))")]
    (tmp_path / "net.pt").write_bytes(b"\x80\x02}q\x00.")
    assert "not a .safetensors file" in problems(weights="net.pt")[0]
    assert "points outside" in problems(weights="../x.safetensors")[0]
    assert "field 'labels' has ['joy']" in problems(labels=["happy", "joy"])[0]
    assert "is the class Parameter, not a torch.nn.Module class" in problems(architecture="torch.nn:Parameter")[0]
    shutil.copy(tmp_path / "net.safetensors", tmp_path / "cut.safetensors")
    with open(tmp_path / "cut.safetensors", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 4)
    assert "is truncated" in problems(weights="cut.safetensors")[0]
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    [problem] = check_references(load_manifest(manifest(tmp_path, {"labelling": {"experts": [
        {"name": "onnx", "model": str(onnx)}]}})))
    assert "an ONNX model without a classifier config" in problem and "onnx: {file: model.onnx}" in problem
    fake = tmp_path / "model.hdf5"
    fake.write_bytes(b"not hdf5" * 100)
    [problem] = check_references(load_manifest(manifest(tmp_path, {"labelling": {"experts": [
        {"name": "keras", "model": str(fake)}]}})))
    assert f"'{fake}' is not an HDF5 file" in problem


def test_checks_load_no_model_and_import_no_torch(tmp_path, env):
    """validate on a manifest with a valid AU adapter, FERAnno folder and reference index paths: torch, diffusers,
    onnx and insightface stay unimported (and nothing is loaded)."""
    path, _ = adapter_manifest(tmp_path, env, lambda folder: None)
    feranno(tmp_path / "feranno")
    data = yaml.safe_load(path.read_text())
    data["labelling"] = {"feranno": {"model": "feranno"}}
    data["curation"]["identity_leak"] = {"index": "refs", "threshold": 0.6}
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-c", PROBE, "validate", str(path)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}: curation.identity_leak.index: 'refs' does not exist"), \
        result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr


def test_adapter_au_set_must_be_the_manifests(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, _ = adapter_manifest(tmp_path, env, lambda folder: None)
    data = yaml.safe_load(path.read_text())
    data["aus"]["au_set"], data["aus"]["intensity"] = "disfa8", {}
    path.write_text(yaml.safe_dump(data))
    [problem] = check_references(load_manifest(path))
    assert problem.startswith("generator.au_adapter.path: the adapter reads AUs AU1, AU2, AU4, AU5, AU6, AU9,")


def test_reference_index_checks(tmp_path, reference):
    """A real index passes; one that is damaged or unfinished is named with what is wrong."""
    index = tmp_path / "index"
    shutil.copytree(reference["index"], index)

    def problems(**leak) -> list[str]:
        return check_references(load_manifest(manifest(tmp_path, {"curation": {"identity_leak": {
            "index": str(index), "threshold": 0.6, **leak}, "dedupe": {"reference": str(index)}}})))

    assert problems() == []
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b\na.png,b.png\n")
    leak = problems(threshold=None, pairs=str(pairs), false_match_rate=0.01)
    assert leak == [(f"curation.identity_leak.pairs: '{pairs}': pair 1: KeyError: 'same' (fix: each pair needs "
                    "image_a, image_b and same (true/false))")]
    (index / "index.faiss").unlink()
    assert problems() == [(f"curation.identity_leak.index: '{index}': the reference index was not finished (its "
                          "index.faiss is missing or older than its vectors) (fix: run `build-dataset "
                          "index-reference` on its config again)")], "dedupe only needs the images' hashes"
    info = json.loads((index / "index.json").read_text())
    (index / "index.json").write_text(json.dumps({**info, "dim": "128", "format": 2}))
    found = problems()
    assert len(found) == 2 and all("not a valid reference index" in p for p in found)
    assert "field 'format': Input should be 1 (got 2)" in found[0] and "field 'dim'" in found[0]


def test_safetensors_problems(tmp_path):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.arange(6.0), "b": torch.ones(2, 2)}, good)
    assert safetensors_problem(good) is None
    data = good.read_bytes()
    cases = {
        "cut": (data[:-3], "is truncated: its header describes"),
        "header-cut": (data[:20], "is truncated or not a safetensors file"),
        "empty": (b"", "is empty or truncated (0 bytes)"),
        "tail": (data + b"\0", "1 bytes follow its tensor data"),
        "text": (b"hello world, not safetensors at all", "is truncated or not a safetensors file"),
        "json": (b"\x05\0\0\0\0\0\0\0[1,2]", "its header is not a JSON object"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert problem in safetensors_problem(tmp_path / name), name
    torch.save({"a": torch.arange(6.0)}, tmp_path / "zip.safetensors")  # torch.save's zip format
    torch.save({"a": torch.arange(6.0)}, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    assert safetensors_problem(tmp_path / "zip.safetensors") == PICKLE_PROBLEM
    assert safetensors_problem(tmp_path / "legacy.safetensors") == PICKLE_PROBLEM


def test_feranno_config_schema_keeps_the_dataclass_fields():
    """The torch-free schema of feranno_config.json keeps the FERAnno dataclass's fields and defaults (the AU
    adapter has one config model for both)."""
    from curation.labelling.feranno import model as feranno_model

    fields = {f.name: f for f in dataclasses.fields(feranno_model.FERAnnoConfig)}
    assert list(FERAnnoConfigFile.model_fields) == list(fields)
    for name, field in fields.items():
        if field.default is not dataclasses.MISSING:
            assert FERAnnoConfigFile.model_fields[name].default == field.default, name


def test_read_json_config_names_every_bad_field(tmp_path):
    path = tmp_path / "au_adapter_config.json"
    for text, message in [
        ("{not json", "not JSON (line 1, column 2"),
        ('["a"]', "it must be a JSON object {...}, found a list"),
        (json.dumps({"au_names": ["AU1", "AU1"], "cross_attention_dim": 8, "layers": {"a": 8}}),
         "au_names lists AU1 more than once"),
        (json.dumps({"au_names": [], "cross_attention_dim": 0, "layers": {"a": -1}, "format_version": 2}),
         "field 'au_names': List should have at least 1 item"),
        (json.dumps({"au_names": ["AU1"], "cross_attention_dim": True, "layers": {"a": 8}}),
         "field 'cross_attention_dim': Input should be a valid integer (got True)"),
    ]:
        path.write_text(text)
        with pytest.raises(ModelLoadError) as error:
            read_json_config(path, AUAdapterConfig, "AU adapter config", "re-save it")
        assert error.value.file == str(path) and error.value.fix == "re-save it"
        assert error.value.message.startswith("not a valid AU adapter config: ") and message in error.value.message
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ModelLoadError, match="not UTF-8 text"):
        read_json_config(path, AUAdapterConfig, "AU adapter config", "re-save it")


def test_feranno_folder_loads_and_bad_ones_are_refused(tmp_path):
    from curation.labelling.feranno.model import FERAnno

    folder = feranno(tmp_path / "good")
    assert FERAnno.from_pretrained(folder).config.meta["inversion"] == {"steps": 2, "timestep": 10, "t": 10}
    for change, message in [
        (lambda d: {**d, "heads": 3}, "heads (3) does not divide hidden_dim (8)"),
        (lambda d: {**d, "num_classes": 8}, "meta.label_names has 7 names for 8 classes"),
        (lambda d: {**d, "meta": {**d["meta"], "inversion": {"steps": 2}}}, ("field 'meta.inversion.timestep': "
         "required field is missing")),
        (lambda d: {**d, "meta": {**d["meta"], "label_names": ["happy", "joy"] + d["meta"]["label_names"][2:]}},
         "label_names ['joy'] are not classes of any label map"),
    ]:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(folder, bad)
        config = bad / "feranno_config.json"
        config.write_text(json.dumps(change(json.loads(config.read_text()))))
        with pytest.raises(ModelLoadError) as error:
            FERAnno.from_pretrained(bad)
        assert error.value.file == str(config) and message in error.value.message, error.value.message
        assert "train-feranno" in error.value.fix
    bad = tmp_path / "truncated"
    shutil.copytree(folder, bad)
    weights = bad / "feranno.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError) as error:
        FERAnno.from_pretrained(bad)
    assert error.value.file == str(weights) and "is truncated" in error.value.message


def test_require_references_passes_quietly_for_a_good_manifest(tmp_path):
    require_references(load_manifest(ROOT / "manifests" / "demo.yaml"), file="demo.yaml")
    assert check_references(load_manifest(ROOT / "manifests" / "demo.yaml")) == []
