"""The 'aus' stage and AU detector configs: a tiny AU net built here (exported to ONNX by torch, or a torch class
with safetensors weights) against onnxruntime and torch on real face crops, the mapping onto AU sets (order,
sides, scaling, None for what the detector lacks), the refusals, the cheap reference checks, determinism."""
from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from builder.annotate.aus import AUStage
from builder.core.errors import ModelLoadError, OutputDirError
from builder.core.records import Record
from builder.core.stage import ShardContext
from builder.manifest.annotate import AUDetection
from builder.manifest.au_sets import AU_SETS
from builder.models.au_detector import (
    KNOWN_AUS,
    load_au_detector,
    map_to_set,
    missing_aus,
    reference_problems,
)

CROP = 64  # the crops' side (the training size of a test build)
SIDED_AUS = ["AUL1", "AUR1", "AU2", "AU4", "AU12", None, "AU25", "AU26"]
"""A detector with OpenGraphAU-style sides for AU1 and an output no set uses (null)."""
GRAY = (0.299, 0.587, 0.114)


class TinyAUNet(nn.Module):
    """A small AU regressor: strided conv, ReLU, global average, linear. ``head='intensity'`` spreads its outputs
    around 0-5 (some below 0, some above 5: clipping is exercised); ``head='sigmoid'`` gives probabilities;
    ``nhwc`` takes channels-last images. Weights are seeded, whatever the global RNG."""

    def __init__(self, num_aus: int = 8, channels: int = 3, head: str = "intensity", nhwc: bool = False,
                 seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(channels, 8, 3, stride=2, padding=1)
            self.head = nn.Linear(8, num_aus)
        with torch.no_grad():
            self.head.bias.copy_(torch.linspace(-3, 3, num_aus))
        self.kind, self.nhwc = head, nhwc

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        y = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return torch.sigmoid(y) if self.kind == "sigmoid" else y * 2 + 2.5


def export(module: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    """torch's TorchScript-based ONNX exporter, as users run it (opset 17, dynamic batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["aus"], dynamic_axes={"image": {0: "batch"}})
    return path


def write_config(folder: Path, name: str = "detector.yaml", **config) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def onnx_detector(folder: Path, aus=SIDED_AUS, returns: str = "intensities", size: int = 32, channels: int = 3,
                  head: str = "intensity", name: str = "detector.yaml", **extra) -> Path:
    """An exported TinyAUNet and its config in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    export(TinyAUNet(len(aus), channels, head), folder / f"{stem}.onnx", (1, channels, size, size))
    return write_config(folder, name, onnx={"file": f"{stem}.onnx"}, aus=list(aus), returns=returns,
                        input={"size": size, "channels": channels, "mean": [0.5] * channels,
                               "std": [0.25] * channels}, **extra)


def onnxruntime_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def model_input(crops: torch.Tensor, size: int, channels: int, mean: float = 0.5, std: float = 0.25) -> np.ndarray:
    """The model input by the InputSpec rules, computed here independently: resize first, then grey (linear, so
    the order does not matter), then normalise."""
    x = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()
    if channels == 1:
        x = np.tensordot(np.array(GRAY, np.float32), x, axes=([0], [1]))[:, None]
    return ((x - mean) / std).astype(np.float32)


# -- real face crops ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """A build folder whose crops/ holds a square CROP x CROP crop of every example face photo (as the align
    stage writes them), plus a file that is no image."""
    from builder.example_faces import write_example_faces

    root = tmp_path_factory.mktemp("build")
    (root / "crops").mkdir()
    for photo in write_example_faces(tmp_path_factory.mktemp("photos")):
        with Image.open(photo) as im:
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im.convert("RGB").crop((left, top, left + side, top + side)).resize(
                (CROP, CROP), Image.Resampling.BICUBIC).save(root / "crops" / photo.name)
    (root / "crops" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def crop_names(build: Path) -> list[str]:
    return sorted(p.name for p in (build / "crops").glob("*.png") if p.name != "broken.png")


def crops_tensor(build: Path) -> torch.Tensor:
    arrays = [np.asarray(Image.open(build / "crops" / n).convert("RGB")) for n in crop_names(build)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def records(names: list[str]) -> list[Record]:
    return [Record(sample_id=f"s{i:03d}", index=i, label=-1, label_name="", au=[], attributes={}, prompt="",
                   negative_prompt="", seed=0, image=f"crops/{n}" if "/" not in n else n)
            for i, n in enumerate(names)]


def run_stage(build: Path, config: Path, au_set: str = "disfa12", names=None, trust: bool = False):
    stage = AUStage(AUDetection(model=str(config), au_set=au_set), "cpu", trust_remote_code=trust)
    stage.setup()
    ctx = ShardContext(root=build, shard=0, staging=build / "staging", final=build / "final")
    out = list(stage.process(records(names if names is not None else crop_names(build)), ctx))
    return stage, out


# -- the detector against onnxruntime and torch --------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 1])
def test_onnx_detector_equals_onnxruntime_on_face_crops(build, tmp_path, channels):
    config = onnx_detector(tmp_path, size=32 if channels == 3 else 48, channels=channels)
    detector = load_au_detector(config)
    crops = crops_tensor(build)
    assert len(crops) == 8 and detector.au_names == tuple(SIDED_AUS)
    size = 32 if channels == 3 else 48
    expected = onnxruntime_run(tmp_path / "detector.onnx", model_input(crops, size, channels))
    assert expected.min() < 0 and expected.max() > 5, "the tiny net must exercise the clipping"
    assert np.abs(detector.raw(crops).numpy() - expected).max() < 1e-4
    got = detector.predict(crops)
    assert got.shape == (8, len(SIDED_AUS)) and got.dtype == np.float32
    assert np.abs(got - np.clip(expected, 0, 5)).max() < 1e-4


def test_probabilities_are_scaled_to_intensities(build, tmp_path):
    crops = crops_tensor(build)
    default = load_au_detector(onnx_detector(tmp_path / "a", returns="probabilities", head="sigmoid"))
    scaled = load_au_detector(onnx_detector(tmp_path / "b", returns="probabilities", head="sigmoid", scale=4.0))
    probs = onnxruntime_run(tmp_path / "a" / "detector.onnx", model_input(crops, 32, 3))
    assert 0 < probs.min() and probs.max() < 1
    assert np.abs(default.predict(crops) - probs * 5).max() < 1e-4
    assert np.abs(scaled.predict(crops) - probs * 4).max() < 1e-4  # the same net: seeded weights


def test_nhwc_onnx_detector(build, tmp_path):
    export(TinyAUNet(3, nhwc=True), tmp_path / "nhwc.onnx", (1, 32, 32, 3))
    config = write_config(tmp_path, onnx={"file": "nhwc.onnx", "layout": "NHWC"}, aus=["AU6", "AU12", "AU25"],
                          returns="intensities", input={"size": 32, "mean": [0.5], "std": [0.25]})
    crops = crops_tensor(build)
    expected = onnxruntime_run(tmp_path / "nhwc.onnx", model_input(crops, 32, 3).transpose(0, 2, 3, 1).copy())
    assert np.abs(load_au_detector(config).predict(crops) - np.clip(expected, 0, 5)).max() < 1e-4


def torch_detector(folder: Path, weights_name: str = "net.safetensors", **config) -> tuple[Path, TinyAUNet]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    net = TinyAUNet(12, seed=3)
    save_file(net.state_dict(), folder / "net.safetensors")
    defaults = {"architecture": f"{__name__}:TinyAUNet", "init_args": {"num_aus": 12, "seed": 3},
                "weights": weights_name, "aus": list(AU_SETS["disfa12"]), "returns": "intensities",
                "input": {"size": 40, "mean": [0.5], "std": [0.25]}}
    return write_config(folder, **{**defaults, **config}), net


def test_torch_class_with_safetensors_weights_when_trusted(build, tmp_path):
    config, net = torch_detector(tmp_path)
    with pytest.raises(ModelLoadError, match="trust_remote_code is off"):
        load_au_detector(config)  # a class from outside torch and this tool: only when trusted
    detector = load_au_detector(config, trust_remote_code=True)
    crops = crops_tensor(build)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(model_input(crops, 40, 3))).numpy()
    assert np.abs(detector.predict(crops) - np.clip(expected, 0, 5)).max() < 1e-5
    _, out = run_stage(build, config, trust=True)
    assert [r.au for r in out] == [[round(float(v), 6) for v in row] for row in detector.predict(crops)]


# -- the mapping onto AU sets ----------------------------------------------------------------------------------------
def test_map_to_set_by_name_sides_and_missing():
    values = [1.0, 3.0, 2.0, 4.0, 5.0, 9.9, 0.5, 0.25]  # SIDED_AUS; 9.9 is the ignored output
    assert map_to_set(SIDED_AUS, values, "disfa12") == [2.0, 2.0, 4.0, None, None, None, 5.0, None, None, None,
                                                        0.5, 0.25]
    assert missing_aus(SIDED_AUS, "disfa12") == ["AU5", "AU6", "AU9", "AU15", "AU17", "AU20"]
    og = dict(zip(AU_SETS["opengraphau41"], map_to_set(SIDED_AUS, values, "opengraphau41")))
    assert (og["AU1"], og["AUL1"], og["AUR1"], og["AU2"]) == (2.0, 1.0, 3.0, 2.0)
    assert og["AUL2"] is None and og["AUR2"] is None  # a bilateral AU is not copied onto each side
    one_side = ["AUL1", "AU2"]
    assert map_to_set(one_side, [1.0, 2.0], "disfa8")[:2] == [None, 2.0]  # one side alone is not the AU
    both = ["AU1", "AUL1", "AUR1"]
    assert map_to_set(both, [4.0, 1.0, 2.0], "disfa8")[0] == 4.0  # the detector's own bilateral output wins
    with pytest.raises(ValueError):
        map_to_set(SIDED_AUS, values[:3], "disfa12")


def test_stage_maps_detector_outputs_onto_the_set(build, tmp_path):
    config = onnx_detector(tmp_path)
    detector = load_au_detector(config)
    p = detector.predict(crops_tensor(build)).astype(np.float64)
    stage, out = run_stage(build, config)
    assert len(out) == 8 and all(r.drop is None for r in out)
    for record, row in zip(out, p):
        expected = [(row[0] + row[1]) / 2, row[2], row[3], None, None, None, row[4], None, None, None, row[6],
                    row[7]]
        assert len(record.au) == len(AU_SETS["disfa12"])
        for got, want in zip(record.au, expected):
            assert (got is None) == (want is None) and (want is None or abs(got - want) < 1e-5), (record.au, expected)
        assert all(v is None or 0 <= v <= 5 for v in record.au)
    assert any(v == 0.0 for r in out for v in r.au) and any(v == 5.0 for r in out for v in r.au), "clipped values"
    meta = stage.meta()
    assert meta == {"detector": str(config), "sha256": meta["sha256"], "detector_aus": SIDED_AUS,
                    "returns": "intensities", "scale": None, "au_set": "disfa12",
                    "missing": ["AU5", "AU6", "AU9", "AU15", "AU17", "AU20"]}
    files = hashlib.sha256(config.read_bytes()).hexdigest() + "\n" + hashlib.sha256(
        (tmp_path / "detector.onnx").read_bytes()).hexdigest()
    assert meta["sha256"] == detector.sha256 == hashlib.sha256(files.encode()).hexdigest()
    (column,) = stage.dataset_columns()
    assert (column.name, column.dtype) == ("au", "aus:disfa12") and "null where" in column.doc
    assert column.value(out[0], meta) == out[0].au


def test_stage_with_probabilities_and_another_set(build, tmp_path):
    config = onnx_detector(tmp_path, returns="probabilities", head="sigmoid", scale=4.0)
    probs = onnxruntime_run(tmp_path / "detector.onnx", model_input(crops_tensor(build), 32, 3))
    stage, out = run_stage(build, config, au_set="opengraphau41")
    names = AU_SETS["opengraphau41"]
    for record, row in zip(out, probs):
        au = dict(zip(names, record.au, strict=True))
        assert abs(au["AUL1"] - 4 * row[0]) < 1e-5 and abs(au["AUR1"] - 4 * row[1]) < 1e-5
        assert abs(au["AU1"] - 2 * (row[0] + row[1])) < 1e-5 and abs(au["AU26"] - 4 * row[7]) < 1e-5
        assert sum(v is not None for v in record.au) == 8  # AU1, its sides, AU2, AU4, AU12, AU25, AU26
    assert stage.meta()["scale"] == 4.0 and len(stage.meta()["missing"]) == len(names) - 8


def test_unreadable_crop_is_dropped_and_a_record_leaving_the_build_stops_the_run(build, tmp_path):
    config = onnx_detector(tmp_path)
    names = crop_names(build)[:2] + ["broken.png", "missing.png"]
    _, out = run_stage(build, config, names=names)
    assert [r.drop and (r.drop.stage, r.drop.reason) for r in out] == [None, None, ("aus", "error"), ("aus", "error")]
    assert out[0].au and out[2].au == []
    with pytest.raises(OutputDirError, match="outside the build folder"):
        run_stage(build, config, names=["../elsewhere.png"])


def test_a_detector_output_that_is_not_a_number_drops_the_record(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # log(mean of each channel - 0.4): finite for the grey check at load, NaN for a dark crop
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["m"]), helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Sub", ["f", "c"], ["d"]), helper.make_node("Log", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
                              [numpy_helper.from_array(np.full((1, 3), 0.4, np.float32), "c")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "nan.onnx"))
    config = write_config(tmp_path, onnx={"file": "nan.onnx"}, aus=["AU1", "AU2", "AU4"], returns="intensities",
                          input={"size": 8, "mean": [0], "std": [1]})
    (tmp_path / "crops").mkdir()
    Image.new("RGB", (CROP, CROP), (20, 20, 20)).save(tmp_path / "crops" / "dark.png")
    Image.new("RGB", (CROP, CROP), (230, 230, 230)).save(tmp_path / "crops" / "light.png")
    _, out = run_stage(tmp_path, config, names=["dark.png", "light.png"])
    assert out[0].drop.reason == "error" and "not a number" in out[0].drop.detail
    assert out[1].drop is None and out[1].au[:3] == [0.0, 0.0, 0.0]  # log(0.9 - 0.4) < 0, clipped


# -- refusals ---------------------------------------------------------------------------------------------------------
def refusal(config: Path, *expected: str, trust: bool = False) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_au_detector(config, trust_remote_code=trust)
    exc = info.value
    assert exc.file == str(config) and exc.fix, exc
    for text in expected:
        assert text in exc.message + "\n" + exc.fix, exc
    return exc


def test_unknown_or_repeated_au_names_are_refused(tmp_path):
    config = onnx_detector(tmp_path, aus=["AU1", "AU2", "AU4", "AU1R", "AU12", "AU99", "AU25", "AU26"])
    exc = refusal(config, "field 'aus.3'", "'AU1R' is not an AU of any AU set", "did you mean 'AUR1'?")
    assert ", ".join(KNOWN_AUS) in exc.fix and "null" in exc.fix
    refusal(write_config(tmp_path, "dup.yaml", **{**yaml.safe_load(config.read_text()),
                                                  "aus": ["AU1", "AU2", "AU1"]}),
            "field 'aus.2'", "already names output 0")
    refusal(write_config(tmp_path, "nulls.yaml", **{**yaml.safe_load(config.read_text()), "aus": [None, None]}),
            "names no AU")


def test_output_width_must_match_the_au_names(tmp_path):
    onnx_detector(tmp_path)  # 8 outputs
    data = yaml.safe_load((tmp_path / "detector.yaml").read_text())
    config = write_config(tmp_path, "narrow.yaml", **{**data, "aus": list(AU_SETS["disfa12"])})
    refusal(config, "field 'aus'", "outputs shape (1, 8)", "names 12 outputs", "one AU name per output")


def test_other_config_refusals(tmp_path):
    onnx_detector(tmp_path)
    data = yaml.safe_load((tmp_path / "detector.yaml").read_text())
    refusal(tmp_path / "absent.yaml", "does not exist")
    refusal(write_config(tmp_path, "scale.yaml", **{**data, "scale": 3}), "field 'scale'",
            "'returns: probabilities' only")
    refusal(write_config(tmp_path, "gone.yaml", **{**data, "onnx": {"file": "gone.onnx"}}), "'gone.onnx'",
            "does not exist", "beside the config")
    refusal(write_config(tmp_path, "out.yaml", **{**data, "onnx": {"file": "../detector.onnx"}}),
            "field 'onnx.file' points outside")
    refusal(write_config(tmp_path, "both.yaml", **{**data, "weights": "w.safetensors"}), "both a torch class")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff" * 8)
    refusal(write_config(tmp_path, "junk.yaml", **{**data, "onnx": {"file": "junk.onnx"}}), "field 'onnx.file'",
            "junk.onnx")
    refusal(write_config(tmp_path, "size.yaml", **{**data, "input": {"size": 32, "channels": 1}}),
            "fails on a 1x32x32 input", "input.channels")
    refusal(write_config(tmp_path, "mean.yaml", **{**data, "input": {"size": 32, "mean": [0.5, 0.5]}}),
            "field 'input.mean'", "2 values for 3 channel(s)", "give 1 or 3 values")
    refusal(write_config(tmp_path, "std.yaml", **{**data, "input": {"size": 32, "std": [0.0]}}),
            "field 'input.std'", "divided by zero")


def test_pickled_or_escaping_weights_are_refused(tmp_path):
    from safetensors.torch import load_file

    config, _ = torch_detector(tmp_path / "t")
    torch.save(load_file(tmp_path / "t" / "net.safetensors"), tmp_path / "t" / "net.pt")
    refusal(torch_detector(tmp_path / "t", weights_name="net.pt")[0], "'net.pt', not a .safetensors file",
            "pickled checkpoints are refused", trust=True)
    pickled = tmp_path / "t" / "pickled.safetensors"
    pickled.write_bytes((tmp_path / "t" / "net.pt").read_bytes())
    refusal(torch_detector(tmp_path / "t", weights_name="pickled.safetensors")[0], "field 'weights'",
            "pickled torch checkpoint", trust=True)
    refusal(torch_detector(tmp_path / "t", weights_name="../net.safetensors")[0], "field 'weights' points outside",
            trust=True)


def test_untrusted_architecture_is_refused_before_anything_is_imported(tmp_path):
    onnx_detector(tmp_path)
    data = {k: v for k, v in yaml.safe_load((tmp_path / "detector.yaml").read_text()).items() if k != "onnx"}
    popen = write_config(tmp_path, "popen.yaml", **data, architecture="subprocess:Popen", weights="w.safetensors",
                         init_args={"args": ["touch", str(tmp_path / "ran")]})
    refusal(popen, "field 'architecture'", "'subprocess:Popen'", "trust_remote_code is off", "--trust-remote-code")
    exc = refusal(popen, "is the class Popen, not a torch.nn.Module class; it was not called", trust=True)
    assert "subprocess" in exc.message and not (tmp_path / "ran").exists()
    never = write_config(tmp_path, "never.yaml", **data, architecture="au_net_never_imported.nets:Net",
                         weights="w.safetensors")
    refusal(never, "trust_remote_code is off")
    assert "au_net_never_imported" not in sys.modules


# -- the cheap checks of `validate` ------------------------------------------------------------------------------------
def test_reference_problems_without_loading(tmp_path):
    good = onnx_detector(tmp_path)
    assert reference_problems(good) == []
    data = yaml.safe_load(good.read_text())
    torch_good, _ = torch_detector(tmp_path / "t")
    assert reference_problems(torch_good, trust_remote_code=True) == []
    cases = {
        "names.yaml": ({**data, "aus": ["AU1L", *data["aus"][1:]]}, "'AU1L' is not an AU", "did you mean 'AUL1'?"),
        "gone.yaml": ({**data, "onnx": {"file": "gone.onnx"}}, "'gone.onnx', which does not exist", "beside"),
        "out.yaml": ({**data, "onnx": {"file": "../x.onnx"}}, "points outside", "inside"),
        "kind.yaml": ({k: v for k, v in data.items() if k != "onnx"}, "names no model", "architecture"),
    }
    for name, (config, message, fix) in cases.items():
        path = write_config(tmp_path, name, **config)
        ((got_message, got_fix),) = reference_problems(path)
        assert got_message.startswith(f"{path}: ") and message in got_message and fix in got_fix, (got_message, got_fix)
    ((message, fix),) = reference_problems(tmp_path / "t" / "detector.yaml")  # untrusted class: nothing imported
    assert "trust_remote_code is off" in message and "--trust-remote-code" in fix
    (tmp_path / "t" / "net.safetensors").write_bytes(b"\x80\x04" + b"\x00" * 30)
    ((message, fix),) = reference_problems(torch_good, trust_remote_code=True)
    assert "pickled" in message and "safetensors" in fix
    ((message, _),) = reference_problems(tmp_path / "absent.yaml")
    assert "does not exist" in message


# -- determinism -------------------------------------------------------------------------------------------------------
def test_same_crops_same_intensities(build, tmp_path):
    config = onnx_detector(tmp_path)
    a, b = load_au_detector(config), load_au_detector(config)
    crops = crops_tensor(build)
    assert a.sha256 == b.sha256 and np.array_equal(a.predict(crops), b.predict(crops))
    first, second = run_stage(build, config)[1], run_stage(build, config)[1]
    assert [r.au for r in first] == [r.au for r in second]
    assert [r.to_json() for r in first] == [r.to_json() for r in second]


def test_import_loads_no_torch():
    import subprocess

    code = ("import sys, builder.annotate.aus, builder.models.au_detector; "
            "print(sorted(m for m in ('torch', 'onnx', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
