"""Run an ONNX classifier as a differentiable torch module (no onnxruntime, no torchvision).

Semantic guidance needs the gradient of the guide's output with respect to
its input image, which onnxruntime cannot give. ``OnnxModule`` reads the
ONNX graph with the ``onnx`` package (protobuf, no code execution) and
evaluates its nodes in order with torch functions, so autograd flows through
it. Initializers become frozen buffers. The op set covers what image
classifiers exported from PyTorch, Keras (tf2onnx) and the ONNX model zoo use,
including the shape arithmetic exporters emit (Shape, Gather, Slice, Concat,
Reshape ...). An op outside the set is refused at load time, naming the op.

Only the standard ``ai.onnx`` domain is read. Where an op moved an attribute
to an input across opsets (Squeeze/Unsqueeze/Reduce* axes, Slice, Pad, Clip,
Split), both forms are handled; the tests cover opsets 1 to 18.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from builder.core.errors import ModelLoadError

# ONNX TensorProto data types -> torch dtypes (the ones classifiers use).
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class _Node:
    """One graph node: op, input and output names, decoded attributes."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs")

    def __init__(self, node, to_tensor: Callable):
        from onnx import helper

        self.op = node.op_type
        self.name = node.name or f"{node.op_type}->{node.output[0]}"
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.attrs = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode()
            elif hasattr(value, "raw_data") or hasattr(value, "float_data"):
                value = to_tensor(value)
            self.attrs[attr.name] = value


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _same_pads(spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               mode: str) -> list[int]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER pads as [begin..., end...]."""
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(big if mode == "SAME_LOWER" else small)
        ends.append(small if mode == "SAME_LOWER" else big)
    return begins + ends


def _pads(node: _Node, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    n = len(kernel)
    mode = node.attrs.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, mode)
    if mode == "VALID":
        return [0] * (2 * n)
    return list(node.attrs.get("pads", [0] * (2 * n)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] (first axis first) -> F.pad's (last axis first) pairs."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _split_pads(pads: list[int]) -> tuple[list[int] | None, list[int]]:
    """Symmetric pads go to the op itself; asymmetric ones are applied first with F.pad."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return None, pads[:n]
    return pads, [0] * n


def _conv(node, x, w, b=None):
    kernel = list(w.shape[2:])
    n = len(kernel)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pre, sym = _split_pads(_pads(node, x, kernel, strides, dilations))
    if pre is not None:
        x = F.pad(x, _torch_pad(pre))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return fn(x, w, b, stride=strides, padding=sym, dilation=dilations, groups=node.attrs.get("group", 1))


def _pool(node, x, kind):
    kernel = list(node.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    ceil = bool(node.attrs.get("ceil_mode", 0))
    pads = _pads(node, x, kernel, strides, dilations)
    pre, sym = _split_pads(pads)
    if kind == "max":
        if pre is not None:
            x = F.pad(x, _torch_pad(pre), value=-math.inf)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return fn(x, kernel, strides, sym, dilation=dilations, ceil_mode=ceil)
    include = bool(node.attrs.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    if pre is None:
        return fn(x, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)
    padded = F.pad(x, _torch_pad(pre))
    total = fn(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include:
        return total
    # asymmetric pads that do not count: divide by the share of real (unpadded) inputs in each window
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pre))
    return total / fn(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)


def _gemm(node, a, b, c=None):
    a = a.t() if node.attrs.get("transA", 0) else a
    b = b.t() if node.attrs.get("transB", 0) else b
    out = node.attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        out = out + node.attrs.get("beta", 1.0) * c
    return out


def _reshape(node, x, shape):
    shape = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(node, axes_input, key="axes"):
    axes = _ints(axes_input) if axes_input is not None else node.attrs.get(key)
    return None if axes is None else list(axes)


def _reduce(fn):
    def run(node, x, axes=None):
        dims = _axes(node, axes)
        keep = bool(node.attrs.get("keepdims", 1))
        if not dims:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.ndim))
        return fn(x, [_axis(d, x.ndim) for d in dims], keep)
    return run


def _squeeze(node, x, axes=None):
    dims = _axes(node, axes)
    if dims is None:
        return x.squeeze()
    for d in sorted((_axis(d, x.ndim) for d in dims), reverse=True):
        x = x.squeeze(d)
    return x


def _unsqueeze(node, x, axes=None):
    dims = _axes(node, axes)
    ndim = x.ndim + len(dims)
    for d in sorted(_axis(d, ndim) for d in dims):
        x = x.unsqueeze(d)
    return x


def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    starts = _ints(starts) if starts is not None else list(node.attrs["starts"])
    ends = _ints(ends) if ends is not None else list(node.attrs["ends"])
    axes = _ints(axes) if axes is not None else list(node.attrs.get("axes", range(len(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.ndim)
        size = x.shape[axis]
        if step > 0:
            index[axis] = slice(*slice(start, end, step).indices(size))
        else:  # torch has no negative steps: take the reversed range, then flip it
            lo, hi, st = slice(start, end, step).indices(size)
            picked = list(range(lo, hi, st))
            index[axis] = torch.tensor(picked, dtype=torch.long, device=x.device) if picked else slice(0, 0)
            flips.append(axis)
    out = x
    for axis, idx in enumerate(index):
        if isinstance(idx, torch.Tensor):
            out = out.index_select(axis, idx)
        elif idx != slice(None):
            out = out[(slice(None),) * axis + (idx,)]
    return out


def _pad(node, x, pads=None, value=None, axes=None):
    pads = _ints(pads) if pads is not None else list(node.attrs.get("pads", []))
    if axes is not None:  # opset 18: pads only for the given axes
        full = [0] * (2 * x.ndim)
        dims = [_axis(a, x.ndim) for a in _ints(axes)]
        for i, d in enumerate(dims):
            full[d], full[d + x.ndim] = pads[i], pads[i + len(dims)]
        pads = full
    mode = node.attrs.get("mode", "constant")
    fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else node.attrs.get("value", 0.0)
    torch_pads = _torch_pad(pads)
    # drop leading (batch/channel) zero pairs torch's reflect/replicate modes refuse
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


def _clip(node, x, lo=None, hi=None):
    lo = float(lo.reshape(-1)[0]) if lo is not None and lo.numel() else node.attrs.get("min")
    hi = float(hi.reshape(-1)[0]) if hi is not None and hi.numel() else node.attrs.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _split(node, x, split=None):
    axis = _axis(node.attrs.get("axis", 0), x.ndim)
    sizes = _ints(split) if split is not None else node.attrs.get("split")
    if sizes is None:
        parts = node.attrs.get("num_outputs", len(node.outputs))
        chunk = math.ceil(x.shape[axis] / parts)
        return tuple(torch.split(x, chunk, dim=axis))
    return tuple(torch.split(x, list(sizes), dim=axis))


def _gather(node, x, idx):
    axis = _axis(node.attrs.get("axis", 0), x.ndim)
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _shape(node, x):
    dims = list(x.shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64, device=x.device)


def _softmax_like(fn):
    def run(node, x):
        return fn(x, dim=node.attrs.get("axis", -1))
    return run


def _batchnorm(node, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=node.attrs.get("epsilon", 1e-5))


def _constant(node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            if isinstance(value, torch.Tensor):
                return value
            dtype = torch.float32 if key.startswith("value_float") else torch.int64
            return torch.tensor(value, dtype=dtype)
    raise ValueError(f"Constant without a numeric tensor value ({sorted(node.attrs)})")


def _constant_of_shape(node, shape):
    value = node.attrs.get("value", torch.zeros(1))
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)


def _instance_norm(node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attrs.get("epsilon", 1e-5))


def _flatten(node, x):
    axis = _axis(node.attrs.get("axis", 1), x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _transpose(node, x):
    return x.permute(node.attrs.get("perm", list(reversed(range(x.ndim)))))


def _unary(fn):
    return lambda node, x: fn(x)


def _binary(fn):
    return lambda node, a, b: fn(a, b)


def _variadic(fn):
    def run(node, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


OPS: dict[str, Callable] = {
    # layers
    "Conv": _conv, "Gemm": _gemm, "MatMul": _binary(torch.matmul), "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instance_norm,
    "MaxPool": lambda node, x: _pool(node, x, "max"), "AveragePool": lambda node, x: _pool(node, x, "avg"),
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)),
    "GlobalMaxPool": _unary(lambda x: x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)),
    # activations
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, node.attrs.get("alpha", 0.01)),
    "Elu": lambda node, x: F.elu(x, node.attrs.get("alpha", 1.0)),
    "PRelu": _binary(lambda x, slope: torch.where(x >= 0, x, x * slope)),
    "HardSigmoid": lambda node, x: torch.clamp(node.attrs.get("alpha", 0.2) * x + node.attrs.get("beta", 0.5), 0, 1),
    "HardSwish": _unary(F.hardswish), "Softplus": _unary(F.softplus), "Erf": _unary(torch.erf),
    "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax), "Clip": _clip,
    # element-wise arithmetic
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(torch.pow), "Sum": _variadic(torch.add), "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Exp": _unary(torch.exp),
    "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil),
    # reductions
    "ReduceMean": _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k)),
    "ReduceMax": _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k)),
    "ReduceMin": _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k)),
    # shapes and plumbing
    "Identity": _unary(lambda x: x), "Dropout": _unary(lambda x: x), "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Slice": _slice, "Pad": _pad,
    "Concat": lambda node, *xs: torch.cat(xs, dim=node.attrs["axis"]), "Split": _split, "Gather": _gather,
    "Shape": _shape, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "Cast": lambda node, x: x.to(_DTYPES[node.attrs["to"]]),
    "Expand": _binary(lambda x, shape: x * torch.ones(_ints(shape), dtype=x.dtype, device=x.device)),
}
"""Supported ONNX ops (ai.onnx domain), each a function (node, *inputs) -> output(s)."""


class OnnxModule(nn.Module):
    """An ONNX graph evaluated with torch ops: differentiable, on any device and float dtype.

    ``forward`` takes the graph's one image input and returns its first output
    (or ``output``). A graph exported with a fixed batch of 1 is run one
    sample at a time. Float initializers follow ``.to(dtype)``; integer ones
    (shapes, indices) keep their type.
    """

    def __init__(self, model, output: str | None = None, source: str = "<onnx>"):
        super().__init__()
        from onnx import numpy_helper

        def to_tensor(proto) -> torch.Tensor:
            array = numpy_helper.to_array(proto)
            return torch.from_numpy(np.array(array, copy=True))

        graph = model.graph
        self.source = source
        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            key = f"init_{i}"
            self.register_buffer(key, to_tensor(init))
            self._names[init.name] = key
        inputs = [v for v in graph.input if v.name not in self._names]
        if len(inputs) != 1:
            raise ModelLoadError(f"the graph has {len(inputs)} non-constant inputs "
                                 f"({', '.join(v.name for v in inputs)}); a classifier takes one image tensor",
                                 file=source, fix="export the classifier with a single image input")
        self.input_name = inputs[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.fixed_batch_of_one = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1
        outputs = [v.name for v in graph.output]
        if output is not None and output not in outputs:
            raise ModelLoadError(f"output '{output}' is not in the graph (outputs: {', '.join(outputs)})",
                                 file=source, fix="name one of the graph's outputs, or leave 'output' out")
        self.output_name = output or outputs[0]
        self._nodes = [_Node(n, to_tensor) for n in graph.node]
        unknown = sorted({f"{n.op}" for n in self._nodes if n.op not in OPS}
                         | {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
        if unknown:
            raise ModelLoadError(f"ONNX ops not supported by the torch runner: {', '.join(unknown)}", file=source,
                                 fix=f"export with standard image-classifier ops (supported: {', '.join(sorted(OPS))})")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for name, key in self._names.items():
            values[name] = getattr(self, key)
        for node in self._nodes:
            args = [values[i] if i else None for i in node.inputs]
            while args and args[-1] is None:
                args.pop()
            try:
                out = OPS[node.op](node, *args)
            except (RuntimeError, IndexError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"ONNX node '{node.name}' ({node.op}) failed: {str(exc).splitlines()[0]}",
                                     file=self.source, fix="check the input size and layout in the classifier "
                                     "config match what the model was exported with") from None
            if isinstance(out, tuple):
                values.update(zip(node.outputs, out))
            else:
                values[node.outputs[0]] = out
            if node.op == "Constant":
                values[node.outputs[0]] = values[node.outputs[0]].to(x.device)
        return values[self.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_batch_of_one and x.shape[0] != 1:
            return torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run(x)


def load_onnx_module(path: str | Path, output: str | None = None) -> OnnxModule:
    """An ``OnnxModule`` from an .onnx file (external data is read from beside it)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file '{path}' does not exist", file=str(path),
                             fix="give the path of an exported .onnx model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ModelLoadError(f"'{path.name}' is not a readable ONNX model ({type(exc).__name__}: {exc})",
                             file=str(path), fix="export the classifier with torch.onnx.export or tf2onnx") from None
    return OnnxModule(model, output=output, source=str(path))
