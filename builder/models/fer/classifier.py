"""Facial-expression classifiers used as guides: a differentiable torch wrapper.

``FERClassifier`` takes RGB images in [0, 1] shaped (B, 3, H, W) on any
device and dtype, and everything from pixels to logits is differentiable, so
its gradients can steer diffusion sampling. Importing this module imports
torch; ``import builder`` and ``import builder.models.fer`` do not.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from builder.manifest.label_maps import LABEL_MAPS, align_labels, canonical
from builder.models.fer.mini_xception import INPUT_SIZE, MiniXception

__all__ = ["GRAY_WEIGHTS", "FERClassifier", "MiniXception"]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B."""


class FERClassifier(nn.Module):
    """A frozen expression classifier with its label order and its own preprocessing.

    ``module`` maps (B, channels, input_size, input_size) images, normalised as
    (x - mean) / std per channel, to logits (defaults: mini-Xception's 64x64
    grayscale in [-1, 1]); ``labels`` names its classes in index order
    (default: FER2013 order). Parameters are
    frozen (``requires_grad=False``) and the module is in eval mode: gradients
    flow to the input images only.
    """

    def __init__(self, module: nn.Module, labels: Sequence[str] = LABEL_MAPS["fer2013"],
                 input_size: int = INPUT_SIZE, channels: int = 1, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,)):
        super().__init__()
        labels = tuple(labels)
        for name in labels:
            canonical(name)  # KeyError for a name no label map knows
        num = getattr(module, "num_classes", len(labels))
        if num != len(labels):
            raise ValueError(f"{len(labels)} labels for a model with {num} classes")
        self.module = module.eval().requires_grad_(False)
        self.labels = labels
        self.input_size = input_size
        if channels not in (1, 3) or len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"channels must be 1 or 3 with 1 or {channels} mean/std values")
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> FERClassifier:
        """Keep the classifier in eval mode (BatchNorm uses its running statistics)."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) or gray (B, 1, H, W) in [0, 1] -> model input (B, channels, size, size).

        Grayscale with ITU-R 601 weights when the model takes 1 channel,
        bilinear antialiased resize to ``input_size`` when needed, then
        (x - mean) / std. Differentiable; keeps the input's device and dtype.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images shaped (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1 and self.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] == 3 and self.channels == 1:
            w = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * w).sum(dim=1, keepdim=True)
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _param_dtype(self) -> torch.dtype:
        """The dtype of the module's float weights (parameters, or buffers for an ONNX graph)."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, len(labels)) for RGB images in [0, 1], in the classifier's dtype."""
        return self.module(self.preprocess(images).to(self._param_dtype()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``logits``."""
        return self.logits(images)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, len(labels)) for RGB images in [0, 1]."""
        return torch.softmax(self.logits(images), dim=-1)

    def probs_for(self, images: torch.Tensor, target: Sequence[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Probabilities in another label order, matched by canonical emotion name.

        Returns (probs (B, len(target)), missing): target classes this model
        lacks get probability 0 and are named in ``missing``; mass on model
        classes absent from ``target`` is dropped (rows then sum below 1).
        """
        return self.map_probs(self.probs(images), target)

    def map_probs(self, probs: torch.Tensor, target: Sequence[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Reorder (B, len(labels)) probabilities onto ``target``; see ``probs_for``."""
        indices, missing = align_labels(self.labels, target)
        out = probs.new_zeros(probs.shape[0], len(indices))
        present = [j for j, i in enumerate(indices) if i is not None]
        if present:
            out[:, present] = probs[:, [indices[j] for j in present]]
        return out, missing
