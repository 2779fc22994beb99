"""IR-50: the improved-residual ResNet-50 face backbone (ArcFace's iResNet; ``IR_50`` of face.evoLVe).

The layout and the parameter names follow face.evoLVe's ``backbone/model_irse.py``
``Backbone(input_size, 50, 'ir')``, so its checkpoints (and the ``ir50`` that
FER models such as POSTER start from) load with ``strict=True``:

- ``input_layer``: 3x3 conv 3->64 (no bias), BatchNorm, PReLU;
- ``body``: 24 IR bottlenecks in 4 stages of 3, 4, 14, 3 units (64, 128, 256, 512
  channels; the first unit of each stage has stride 2). A unit is
  BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN, added to a shortcut that
  is a 1x1 max-pool (same width) or a 1x1 conv + BN;
- ``output_layer``: BN, dropout, flatten, linear to 512, BatchNorm1d: the 512-d face embedding.

Input: RGB 112x112 (or 224x224), normalised as (x - 0.5) / 0.5.
Checkpoints are read from safetensors or with ``torch.load(weights_only=True)``
(no pickled code); a ``module.`` / ``backbone.`` prefix and a ``state_dict``
wrapper are accepted.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))  # (channels, units)
EMBEDDING = 512


class Flatten(nn.Module):
    """(B, C, H, W) -> (B, C*H*W); a module of its own, as in face.evoLVe (it shifts the output_layer indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class BottleneckIR(nn.Module):
    """One improved-residual unit (see the module docstring)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """IR-50 for 112x112 or 224x224 inputs; ``forward`` gives the 512-d embedding."""

    def __init__(self, input_size: int = 112):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError("IR-50 takes 112x112 or 224x224 inputs")
        self.input_size = input_size
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, channels = [], 64
        for depth, count in STAGES:
            for k in range(count):
                units.append(BottleneckIR(channels, depth, 2 if k == 0 else 1))
                channels = depth
        self.body = nn.Sequential(*units)
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), Flatten(),
                                          nn.Linear(512 * side * side, EMBEDDING), nn.BatchNorm1d(EMBEDDING))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: safetensors, or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the file holds no state dict of tensors")
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def input_size_of(state: dict[str, torch.Tensor]) -> int:
    """112 or 224, from the size of the embedding layer in a checkpoint."""
    weight = state.get("output_layer.3.weight")
    if weight is None:
        raise ValueError("no output_layer.3.weight: not an IR-50 checkpoint")
    return 224 if weight.shape[1] == 512 * 14 * 14 else 112
