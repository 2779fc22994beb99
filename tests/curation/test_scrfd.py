"""SCRFD as the faces stage's detector, on a tiny SCRFD-format ONNX model built here.

No SCRFD weights exist offline, so this tests the loading and decoding path, not detection quality: the
model has SCRFD's real output layout (9 outputs: score, box distances and 5 keypoint offsets for strides 8,
16 and 32, two anchors per cell; dynamic or fixed 640 input) with *constructed* weights. Anchor 0 of a
stride-8 cell scores high exactly when the cell's mean red level is high (red: channel 0 of the RGB blob
insightface feeds the network); every other anchor scores ~0; box distances and keypoint offsets are
constants. insightface's own SCRFD code letterboxes, runs and decodes it, so a red square whose top-left
corner falls on a stride-8 cell corner of the resized image gives one face at a box and landmarks we can
compute: the anchor is that corner, mapped back by the letterbox scale.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.core.shards import ShardStore
from builder.manifest import FaceQuality
from builder.manifest.loader import load_manifest
from builder.models.diffusion import file_sha256
from curation.faces.scrfd import SCRFDDetector
from curation.shard.face_quality import FaceQualityFilter
from tests.curation.test_curation import run_faces

STRIDES = (8, 16, 32)
BOX = (64.0, 64.0, 64.0, 64.0)  # left, top, right, bottom distances from the anchor, in letterboxed pixels
KEYPOINTS = ((-24, -16), (24, -16), (0, 8), (-16, 32), (16, 32))  # eyes, nose, mouth corners from the anchor
RED, BLUE = (255, 0, 0), (0, 0, 255)


def scrfd_onnx(path: Path, fixed: int | None = None, keypoints: bool = True) -> Path:
    """Write the constructed SCRFD-format model (see the module docstring); ``fixed``: a static input side."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights, outputs = [], [], []

    def head(name: str, stride: int, channels: int, kernel: np.ndarray | None, bias, width: int) -> None:
        """Conv with kernel = stride = ``stride`` -> (1, C, H/s, W/s) -> (H/s * W/s * 2, width), SCRFD's layout."""
        kernel = np.zeros((channels, 3, stride, stride), np.float32) if kernel is None else kernel
        weights.extend([numpy_helper.from_array(kernel.astype(np.float32), f"{name}.w"),
                        numpy_helper.from_array(np.asarray(bias, np.float32), f"{name}.b")])
        nodes.extend([helper.make_node("Conv", ["input.1", f"{name}.w", f"{name}.b"], [f"{name}.conv"],
                                       kernel_shape=[stride, stride], strides=[stride, stride])])
        last = f"{name}.conv"
        if name.startswith("score"):
            nodes.append(helper.make_node("Sigmoid", [last], [f"{name}.sigmoid"]))
            last = f"{name}.sigmoid"
        nodes.extend([helper.make_node("Transpose", [last], [f"{name}.nhwc"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}.nhwc", f"shape{width}"], [name])])
        rows = (fixed // stride) ** 2 * 2 if fixed else f"anchors{stride}"
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows, width]))

    for width in (1, 4, 10):
        weights.append(numpy_helper.from_array(np.array([-1, width], np.int64), f"shape{width}"))
    gain, level = 20.0, 0.5  # logit = 20 * (mean red of the cell in [-1, 1] - 0.5): ~0.995 for a red cell
    for stride in STRIDES:
        kernel, bias = np.zeros((2, 3, stride, stride), np.float32), [-30.0, -30.0]
        if stride == 8:
            kernel[0, 0] = gain / stride**2
            bias[0] = -gain * level
        head(f"score{stride}", stride, 2, kernel, bias, 1)
    for stride in STRIDES:  # insightface multiplies box and keypoint predictions by the stride
        head(f"bbox{stride}", stride, 8, None, np.tile(np.array(BOX) / stride, 2), 4)
    for stride in STRIDES if keypoints else ():
        head(f"kps{stride}", stride, 20, None, np.tile(np.array(KEYPOINTS, float).reshape(-1) / stride, 2), 10)
    side = fixed or "?"
    graph = helper.make_graph(nodes, "scrfd-constructed",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, side, side])],
                              outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scrfd")
    return {"dynamic": scrfd_onnx(folder / "det_dynamic.onnx"),
            "fixed": scrfd_onnx(folder / "det_640.onnx", fixed=640)}


def picture(height: int, width: int, squares=(), seed: int = 0) -> np.ndarray:
    """An RGB image: dim red (<= 60), noisy green and blue, and solid squares ``(x, y, side, colour)``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 0] //= 4
    for x, y, side, colour in squares:
        image[y:y + side, x:x + side] = colour
    return image


def expected(x: float, y: float, scale: float) -> tuple[tuple, tuple]:
    """Box and landmarks in image pixels of the anchor at image point (x, y), the letterbox scale ``scale``."""
    left, top, right, bottom = BOX
    box = (x - left / scale, y - top / scale, x + right / scale, y + bottom / scale)
    return box, tuple((x + dx / scale, y + dy / scale) for dx, dy in KEYPOINTS)


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
@pytest.mark.parametrize("height, width, x, y, side, scale", [
    (320, 320, 100, 100, 4, 2.0),     # square, enlarged 2x: the 4 px square covers one 8 px cell
    (640, 1280, 800, 400, 16, 0.5),   # wide, halved and letterboxed (padding below)
    (320, 160, 60, 240, 4, 2.0),      # tall, enlarged and letterboxed (padding on the right)
])
def test_box_and_landmarks_come_back_in_image_coordinates(models, kind, height, width, x, y, side, scale):
    detector = SCRFDDetector(models[kind], threshold=0.5)
    found = detector.detect(picture(height, width, [(x, y, side, RED)]))
    assert len(found) == 1
    box, landmarks = expected(x, y, scale)
    assert found[0].box == pytest.approx(box, abs=1e-3)
    assert np.allclose(found[0].landmarks, landmarks, atol=1e-3)
    assert found[0].score > 0.99 and found[0].size == pytest.approx(128 / scale)


def test_colour_order_reaches_the_network_as_rgb(models):
    """Only the red square is a face: a wrapper that passed RGB where insightface wants BGR would find the blue."""
    detector = SCRFDDetector(models["dynamic"])
    found = detector.detect(picture(320, 320, [(40, 40, 4, BLUE), (200, 200, 4, RED)]))
    assert [d.box[:2] for d in found] == [pytest.approx((200 - 32, 200 - 32))]
    assert detector.detect(picture(320, 320, [(200, 200, 4, BLUE)])) == []


def test_several_faces_best_first_and_the_input_size(models):
    detector = SCRFDDetector(models["dynamic"], size=320)
    image = picture(320, 320, [(64, 64, 8, RED), (200, 200, 8, RED)])
    image[64, 64:72] = 120  # one dimmer row: a lower score for the first square
    found = detector.detect(image)
    assert [d.box[0] for d in found] == [200 - 64, 64 - 64] and found[0].score > found[1].score
    assert detector.describe() == {"detector": "scrfd", "detector_model": "det_dynamic.onnx",
                                   "detector_sha256": file_sha256(models["dynamic"]), "detector_size": [320, 320]}
    assert SCRFDDetector(models["fixed"], size=320).describe()["detector_size"] == [640, 640]  # the model's own


def test_files_that_are_not_scrfd_detectors_are_refused(models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    arcface_like = tmp_path / "w600k_r50.onnx"  # one 112 px input, one output: insightface sees a recogniser
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "embedder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3 * 112 * 112])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(arcface_like))
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    cases = {tmp_path / "missing.onnx": "does not exist",
             tmp_path / "broken.onnx": "cannot load broken.onnx as an ONNX model",
             arcface_like: "is not an SCRFD face detector (insightface loads it as ArcFaceONNX)",
             scrfd_onnx(tmp_path / "no_kps.onnx", keypoints=False): "without landmark outputs (6 outputs)"}
    for path, message in cases.items():
        with pytest.raises(ModelLoadError) as error:
            SCRFDDetector(path)
        assert message in error.value.message, error.value.message
        assert error.value.file == str(path) and "det_10g.onnx" in error.value.fix


def test_truncated_and_misshapen_scrfd_graphs_are_refused_at_setup(models, tmp_path):
    """A truncated export, and a graph with SCRFD's nine outputs of other shapes: refused when the detector is made
    (naming the file), not on the first image; an intact model still detects nothing on a blank image."""
    import onnx
    from onnx import TensorProto, helper

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(models["dynamic"].read_bytes()[:2000])
    nine = tmp_path / "nine.onnx"  # nine outputs, each the flattened image instead of rows per anchor
    graph = helper.make_graph([helper.make_node("Flatten", ["input.1"], [f"out{i}"]) for i in range(9)], "nine",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, None])
                               for i in range(9)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(nine))
    cases = {truncated: "cannot load truncated.onnx as an ONNX model: [ONNXRuntimeError]",
             nine: "nine.onnx is not an SCRFD detector: output 'out0' has shape (1, 307200) for a 320x320 image, "
                   "SCRFD's stride-8 scores are (3200, 1)"}
    for path, message in cases.items():
        with pytest.raises(ModelLoadError) as error:
            SCRFDDetector(path, size=320)
        assert error.value.file == str(path) and error.value.message.startswith(message), error.value.message
        assert "det_10g.onnx" in error.value.fix
    assert SCRFDDetector(models["fixed"], size=320).detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_manifest_fields_for_the_detector(write_manifest, tmp_path, capsys):
    with pytest.raises(ValidationError, match="the scrfd detector needs 'detector_model'"):
        FaceQuality(detector="scrfd")
    assert FaceQuality().detector == "mtcnn" and FaceQuality().detector_model is None
    for faces, message in [
        ({"detector": "scrfd"}, "field 'curation.faces.detector_model'"),
        ({"detector_model": "det_10g.onnx"}, "'detector_model' is for the scrfd detector"),
        ({"detector_size": 320}, "'detector_size' is for the scrfd detector"),
        ({"detector": "scrfd", "detector_model": "d.onnx", "detector_size": 600}, "multiple of 32"),
        ({"detector": "retinaface"}, "curation.faces.detector"),
    ]:
        assert main(["validate", str(write_manifest({"curation": {"faces": faces}}))]) == 2
        err = capsys.readouterr().err
        assert message in err and "fix:" in err, err
    # the detector changes the dataset, so it is part of the build's identity
    mtcnn = load_manifest(write_manifest({}, name="a.yaml")).identity()
    scrfd = load_manifest(write_manifest({"curation": {"faces": {"detector": "scrfd", "detector_model": "d.onnx"}}},
                                         name="b.yaml")).identity()
    assert scrfd["curation"]["faces"]["detector"] == "scrfd" and mtcnn != scrfd


def test_faces_stage_drop_reasons_with_scrfd(models, tmp_path):
    for name, squares in {"one.png": [(100, 100, 4, RED)], "two.png": [(40, 40, 4, RED), (200, 200, 4, RED)],
                          "none.png": [(100, 100, 4, BLUE)]}.items():
        Image.fromarray(picture(320, 320, squares)).save(tmp_path / name)
    scrfd = {"detector": "scrfd", "detector_model": str(models["dynamic"]), "min_score": 0.5, "min_sharpness": 0,
             "min_brightness": 0, "max_brightness": 255}
    out = run_faces(tmp_path, ["one.png", "two.png", "none.png"], **scrfd)
    assert {name: reason for name, (reason, _) in out.items()} == {"one.png": None, "two.png": "multiple_faces",
                                                                    "none.png": "no_face"}
    assert out["one.png"][1]["face_size"] == 64 and out["two.png"][1]["other_face_ratio"] == 1.0
    assert run_faces(tmp_path, ["one.png"], **scrfd, min_size=100)["one.png"][0] == "small_face"  # box: 64 px


def test_build_with_the_scrfd_faces_stage(models, tmp_path, capsys):
    """An images-source build end to end (ingest, integrity, faces with SCRFD, label, dedupe, release);
    the faces stage's record.face carries SCRFD's box and landmarks to the later stages."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, squares in enumerate([[(100, 100, 4, RED)], [(60, 60, 4, RED), (200, 200, 4, RED)], []]):
        Image.fromarray(picture(320, 320, squares, seed=i)).save(folder / f"{i}.png")
    manifest = {"name": "scrfd-build", "seed": 1, "labels": {"label_map": "affectnet7"},
                "images": {"folder": str(folder)},
                "labelling": {"experts": [{"name": "fer", "model": "mini-xception-fer2013"}],
                              "min_confidence": 0, "min_agreement": 0},
                "curation": {"faces": {"detector": "scrfd", "detector_model": str(models["dynamic"]),
                                       "min_score": 0.5, "min_sharpness": 0, "min_brightness": 0,
                                       "max_brightness": 255}},
                "output": {"shard_size": 2}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())["stages"]
    assert (stats["faces"]["in"], stats["faces"]["kept"]) == (3, 1)
    assert stats["faces"]["dropped"] == {"multiple_faces": 1, "no_face": 1}
    meta = ShardStore(out).stats("faces", 0)["meta"]  # the detector's provenance, with each shard
    assert meta["detector"] == "scrfd" and meta["detector_sha256"] == file_sha256(models["dynamic"])
    assert stats["label"]["kept"] == 1
    kept = ShardStore(out).kept("faces", 0)
    box, landmarks = expected(100, 100, 2.0)
    assert [r.source for r in kept] == ["0.png"]
    assert kept[0].face["box"] == pytest.approx(box) and kept[0].face["count"] == 1
    assert np.allclose(kept[0].face["landmarks"], landmarks)
    assert ShardStore(out).kept("label", 0)[0].face == kept[0].face  # the labeller used SCRFD's face

    manifest["curation"]["faces"]["detector_model"] = str(tmp_path / "buffalo_l" / "det_10g.onnx")
    path.write_text(yaml.safe_dump(manifest))
    capsys.readouterr()
    assert main([str(path), "--out", str(tmp_path / "out-missing"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "curation.faces.detector_model" in err and "does not exist" in err and "fix: download" in err, err
    assert "Traceback" not in err


def test_mtcnn_is_the_default_and_its_meta_is_unchanged():
    stage = FaceQualityFilter(FaceQuality())
    assert stage.meta() == {"detector": "mtcnn", "min_score": 0.9, "min_size": 32, "max_other_face": 0.25,
                            "min_sharpness": 20.0, "min_brightness": 40.0, "max_brightness": 220.0}


def test_cuda_provider_only_when_onnxruntime_has_it(monkeypatch):
    """The provider choice alone (no GPU onnxruntime here): CUDA for a cuda device when available, else CPU."""
    import onnxruntime

    from curation.faces.scrfd import providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    assert providers("cuda:1") == ([("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], 1)
    assert providers("cpu") == (["CPUExecutionProvider"], -1)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert providers("cuda") == (["CPUExecutionProvider"], -1)
