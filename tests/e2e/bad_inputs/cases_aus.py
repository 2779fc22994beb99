"""Bad AU detector configs (``annotate.aus.model``): refused by `validate` and before a build starts when the cheap
checks see it (``builder.models.au_detector.reference_problems``: unknown AU names, pickled or escaping
weights, code from outside the tool), and by the 'aus' stage's loader (``load_au_detector``) in a build of real
face photos when only loading the model shows it (an output width that does not match ``aus``, an ONNX file that
is not one). The AU net is a small ONNX graph written here: channel means times a fixed matrix."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.pairs import no_stage_output, nothing_created, pairs_build

OUTPUTS = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU25"]


def au_onnx(path: Path, outputs: int = len(OUTPUTS)) -> Path:
    """A (b, 3, 32, 32) -> (b, outputs) graph: channel means times a fixed matrix, plus 2."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.linspace(-1, 1, 3 * outputs, dtype=np.float32).reshape(3, outputs), "w")
    shift = numpy_helper.from_array(np.full((outputs,), 2, np.float32), "b")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["m"]), helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])]
    graph = helper.make_graph(nodes, "au-net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", outputs])], [weight, shift])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def detector(folder: Path, **changes) -> Path:
    """An AU detector config and its ONNX file in ``folder``, with ``changes`` to the config."""
    folder.mkdir(parents=True, exist_ok=True)
    au_onnx(folder / "au-net.onnx")
    config = {"onnx": {"file": "au-net.onnx"}, "aus": OUTPUTS, "returns": "intensities",
              "input": {"size": 32, "channels": 3, "mean": [0.5], "std": [0.25]}, **changes}
    path = folder / "detector.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def aus_build(tmp_path: Path, env, config: Path) -> tuple[list[str], Path]:
    """A training-pairs build of two real face photos measured by the AU detector ``config``."""
    return pairs_build(tmp_path, env, "bad-aus", {"aus": {"model": str(config), "au_set": "disfa12"}})


# -- refused by the cheap checks: validate, and a build before its folder exists ------------------------------------
@case("aus-detector-unknown-au-name")
def _(tmp_path, env):
    config = detector(tmp_path / "det", aus=["AU1L", *OUTPUTS[1:]])
    argv, _ = aus_build(tmp_path, env, config)
    return Case(["validate", argv[0]], str(config), ["annotate.aus.model", "field 'aus.0'", "'AU1L' is not an AU",
                                                      "did you mean 'AUL1'?", "AUR14"], unchanged=[config.parent])


@case("aus-detector-pickled-weights-build")
def _(tmp_path, env):
    import torch

    from builder.models.fer.mini_xception import MiniXception

    folder = tmp_path / "det"
    config = detector(folder, architecture="builder.models.fer.mini_xception:MiniXception",
                      init_args={"num_classes": len(OUTPUTS)}, weights="net.safetensors", onnx=None,
                      input={"size": 64, "channels": 1})
    torch.save(MiniXception(num_classes=len(OUTPUTS)).state_dict(), folder / "net.safetensors")
    argv, out = aus_build(tmp_path, env, config)
    return Case(argv, str(config), ["annotate.aus.model", "field 'weights'", "pickled torch checkpoint",
                                    "safetensors.torch.save_file"], unchanged=[folder], check=nothing_created(out, "the AU detector"))


@case("aus-detector-weights-outside-its-folder")
def _(tmp_path, env):
    config = detector(tmp_path / "det", onnx={"file": "../elsewhere/au-net.onnx"})
    (tmp_path / "elsewhere").mkdir()
    au_onnx(tmp_path / "elsewhere" / "au-net.onnx")
    argv, _ = aus_build(tmp_path, env, config)
    return Case(["validate", argv[0]], str(config), ["field 'onnx.file' points outside", "inside"],
                unchanged=[config.parent])


@case("aus-detector-untrusted-architecture-build")
def _(tmp_path, env):
    folder = tmp_path / "det"
    ran = tmp_path / "ran"
    config = detector(folder, architecture="subprocess:Popen", init_args={"args": ["touch", str(ran)]},
                      weights="w.safetensors", onnx=None)
    argv, out = aus_build(tmp_path, env, config)

    def nothing_ran():
        nothing_created(out, "the AU detector")()
        assert not ran.exists(), "the architecture was called"

    return Case(argv, str(config), ["annotate.aus.model", "'subprocess:Popen'", "trust_remote_code is off",
                                    "--trust-remote-code"], unchanged=[folder], check=nothing_ran)


@case("aus-detector-architecture-never-imported")
def _(tmp_path, env):
    module = "au_detector_bad_input_probe"
    config = detector(tmp_path / "det", architecture=f"{module}.nets:Net", weights="w.safetensors", onnx=None)
    argv, _ = aus_build(tmp_path, env, config)

    def not_imported():
        assert module not in sys.modules

    return Case(["validate", argv[0]], str(config), ["field 'architecture'", "trust_remote_code is off"],
                unchanged=[config.parent], check=not_imported)


# -- refused by the stage's loader, in a build ------------------------------------------------------------------------
@case("aus-detector-output-width-mismatch-build")
def _(tmp_path, env):
    config = detector(tmp_path / "det", aus=OUTPUTS + ["AU26"])
    argv, out = aus_build(tmp_path, env, config)
    return Case(argv, str(config), ["field 'aus'", "outputs shape (1, 6)", "names 7 outputs",
                                    "one AU name per output"], unchanged=[config.parent], check=no_stage_output(out, "aus"))


@case("aus-detector-onnx-file-not-onnx-build")
def _(tmp_path, env):
    config = detector(tmp_path / "det")
    (config.parent / "au-net.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 16)
    argv, out = aus_build(tmp_path, env, config)
    return Case(argv, str(config), ["field 'onnx.file'", "au-net.onnx", "is not a readable ONNX model",
                                    "torch.onnx.export"], unchanged=[config.parent], check=no_stage_output(out, "aus"))
