"""mini-Xception (Arriaga et al. 2017) in PyTorch, layer for layer equal to the Keras model.

The network is described once, as a list of Keras layers (``LayerSpec``: name,
Keras class, inputs, settings) in the order and with the names of the Keras
file; ``MiniXception`` builds its parameters from that list and runs it as a
graph, so every intermediate activation can be returned under its Keras name,
and the loader (``keras_h5``) can check a file's ``model_config`` against it.

Keras conventions reproduced: "same" padding puts the extra row/column at the
bottom/right (explicit ``F.pad``), "same" max pooling pads with -inf,
BatchNormalization uses the file's epsilon (1e-3), SeparableConv2D is a
depthwise then a pointwise convolution without bias. Tensors are NCHW.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 64
"""Side of the square grayscale input, in pixels."""


@dataclass(frozen=True)
class LayerSpec:
    """One Keras layer: its name, Keras class name, input layer names and settings.

    ``kernel``, ``stride`` and ``pool`` are square sizes in pixels; ``padding``
    is Keras' "same" or "valid"; ``filters`` is the output channel count.
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    filters: int | None = None
    kernel: int | None = None
    stride: int | None = None
    padding: str | None = None
    use_bias: bool | None = None
    pool: int | None = None
    activation: str | None = None
    epsilon: float | None = None


def mini_xception_specs(num_classes: int = 7, in_channels: int = 1, stem_filters: int = 8,
                        block_filters: tuple[int, ...] = (16, 32, 64, 128), eps: float = 1e-3) -> list[LayerSpec]:
    """The Keras layer list of mini-Xception, named as Keras 2 numbers them when building it.

    Defaults are the FER2013 emotion model (7 classes, 1 input channel, 8 stem
    filters, 4 residual blocks of 16/32/64/128 filters, BN epsilon 1e-3).
    """
    specs = [LayerSpec("input_1", "InputLayer", filters=in_channels)]
    counters: dict[str, int] = {}

    def add(kind: str, prefix: str, inputs: tuple[str, ...], **kw) -> str:
        counters[prefix] = counters.get(prefix, 0) + 1
        name = f"{prefix}_{counters[prefix]}"
        specs.append(LayerSpec(name, kind, inputs, **kw))
        return name

    def conv(x: str, filters: int, kernel: int, stride: int = 1, padding: str = "valid", bias: bool = False) -> str:
        return add("Conv2D", "conv2d", (x,), filters=filters, kernel=kernel, stride=stride, padding=padding,
                   use_bias=bias)

    def bn(x: str) -> str:
        return add("BatchNormalization", "batch_normalization", (x,), epsilon=eps)

    def relu(x: str) -> str:
        return add("Activation", "activation", (x,), activation="relu")

    def sep(x: str, filters: int) -> str:
        return add("SeparableConv2D", "separable_conv2d", (x,), filters=filters, kernel=3, stride=1,
                   padding="same", use_bias=False)

    x = relu(bn(conv("input_1", stem_filters, 3)))
    x = relu(bn(conv(x, stem_filters, 3)))
    for filters in block_filters:
        # Keras creates the shortcut first, so it takes the lower layer numbers.
        shortcut = bn(conv(x, filters, 1, stride=2, padding="same"))
        y = relu(bn(sep(x, filters)))
        y = bn(sep(y, filters))
        y = add("MaxPooling2D", "max_pooling2d", (y,), pool=3, stride=2, padding="same")
        x = add("Add", "add", (y, shortcut))
    x = conv(x, num_classes, 3, padding="same", bias=True)
    x = add("GlobalAveragePooling2D", "global_average_pooling2d", (x,))
    specs.append(LayerSpec("predictions", "Activation", (x,), activation="softmax"))
    return specs


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow "same" padding (before, after) for one axis: the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class KerasConv2d(nn.Conv2d):
    """Conv2D with Keras padding ("same" pads bottom/right first, "valid" none)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: str = "valid",
                 bias: bool = False, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, bias=bias, groups=groups)
        self.keras_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_padding == "same":
            x = _pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class KerasSeparableConv2d(nn.Module):
    """SeparableConv2D (depth multiplier 1): depthwise ``depthwise`` then 1x1 ``pointwise``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, padding: str = "same", bias: bool = False):
        super().__init__()
        self.depthwise = KerasConv2d(in_ch, in_ch, kernel, padding=padding, bias=False, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class KerasMaxPool2d(nn.Module):
    """MaxPooling2D; "same" pads with -inf, the odd pixel at the bottom/right."""

    def __init__(self, pool: int, stride: int, padding: str):
        super().__init__()
        self.pool, self.stride, self.keras_padding = pool, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_padding == "same":
            x = _pad_same(x, self.pool, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.pool, self.stride)


class MiniXception(nn.Module):
    """mini-Xception classifier returning LOGITS (the Keras model's softmax input).

    Input: (B, 1, 64, 64) float, grayscale scaled to [-1, 1] as (x/255 - 0.5) * 2.
    Parameters live in ``self.layers``, a ModuleDict keyed by Keras layer name.
    """

    def __init__(self, num_classes: int = 7, in_channels: int = 1, stem_filters: int = 8,
                 block_filters: tuple[int, ...] = (16, 32, 64, 128), eps: float = 1e-3):
        super().__init__()
        self.num_classes = num_classes
        self.specs = mini_xception_specs(num_classes, in_channels, stem_filters, tuple(block_filters), eps)
        self.layers = nn.ModuleDict()
        channels: dict[str, int] = {"input_1": in_channels}
        for s in self.specs[1:]:
            c_in = channels[s.inputs[0]]
            if s.kind == "Conv2D":
                self.layers[s.name] = KerasConv2d(c_in, s.filters, s.kernel, s.stride, s.padding, bool(s.use_bias))
            elif s.kind == "SeparableConv2D":
                self.layers[s.name] = KerasSeparableConv2d(c_in, s.filters, s.kernel, s.padding, bool(s.use_bias))
            elif s.kind == "BatchNormalization":
                self.layers[s.name] = nn.BatchNorm2d(c_in, eps=s.epsilon)
            elif s.kind == "MaxPooling2D":
                self.layers[s.name] = KerasMaxPool2d(s.pool, s.stride, s.padding)
            channels[s.name] = s.filters or c_in
        self.eval()

    def forward(self, x: torch.Tensor, return_intermediates: bool = False
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits (B, num_classes); with ``return_intermediates``, a dict of every Keras layer's output.

        The dict maps each Keras layer name (except ``input_1``) to its output,
        NCHW for feature maps; ``global_average_pooling2d_1`` holds the logits
        and ``predictions`` the softmax probabilities.
        """
        out: dict[str, torch.Tensor] = {"input_1": x}
        logits = x
        for s in self.specs[1:]:
            h = out[s.inputs[0]]
            if s.name in self.layers:
                h = self.layers[s.name](h)
            elif s.kind == "Add":
                h = h + out[s.inputs[1]]
            elif s.kind == "GlobalAveragePooling2D":
                h = logits = h.mean(dim=(-2, -1))
            elif s.kind == "Activation" and s.activation == "relu":
                h = F.relu(h)
            elif s.kind == "Activation" and s.activation == "softmax":
                if not return_intermediates:
                    break
                h = torch.softmax(h, dim=-1)
            else:  # pragma: no cover - specs are built above
                raise ValueError(f"unsupported layer {s}")
            out[s.name] = h
        if return_intermediates:
            del out["input_1"]
            return out
        return logits
