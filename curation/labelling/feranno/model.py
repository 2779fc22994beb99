"""The FERAnno network: diffusion features + cross-attention maps + prompt tokens -> expression logits.

One block per decoder scale, coarse to fine. Each block convolves its feature
map concatenated with the prompt tokens' attention maps at that resolution,
adds the upsampled state of the coarser block, and runs bidirectional
cross-attention between the spatial positions and the token states (tokens
read the image, then the image reads the tokens). Token states start as a
projection of the prompt's text-encoder states and, at every scale, add the
attention-weighted pooling of that scale's spatial features. The head
classifies mean-pooled spatial and token states. Inputs are standardised per
channel with training-set statistics (buffers set by ``fit_input_stats``).
``temperature`` (a buffer, not trained by the optimizer) divides the logits in
``predict_proba``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from builder.core.errors import ModelLoadError
from curation.labelling.feranno.config_file import CONFIG_NAME, WEIGHTS_NAME

FORMAT_VERSION = 1


@dataclass
class FERAnnoConfig:
    """Shape of a FERAnno network; saved, with provenance in ``meta``, as ``feranno_config.json``."""

    feature_channels: list[int]  # per decoder scale, coarse to fine
    tokens: int  # prompt tokens (attention maps per scale, token states)
    text_dim: int  # width of the text encoder's hidden states
    num_classes: int
    hidden_dim: int = 128
    heads: int = 4
    mlp_ratio: int = 2
    meta: dict = field(default_factory=dict)  # label names, base model, inversion, prompt, shapes, ...
    format_version: int = FORMAT_VERSION


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: int):
        super().__init__(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class CrossBlock(nn.Module):
    """Tokens attend to spatial positions, then spatial positions attend to tokens (residual, LayerNorm, MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.tok_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.tok_norm1, self.tok_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tok_mlp = _Mlp(dim, mlp_ratio)
        self.sp_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.sp_norm1, self.sp_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.sp_mlp = _Mlp(dim, mlp_ratio)

    def forward(self, spatial: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tok_norm1(tokens + self.tok_attn(tokens, spatial, spatial, need_weights=False)[0])
        tokens = self.tok_norm2(tokens + self.tok_mlp(tokens))
        spatial = self.sp_norm1(spatial + self.sp_attn(spatial, tokens, tokens, need_weights=False)[0])
        spatial = self.sp_norm2(spatial + self.sp_mlp(spatial))
        return spatial, tokens


class ScaleBlock(nn.Module):
    """One decoder scale: conv over [features, attention maps] (+ coarser state), then a ``CrossBlock``."""

    def __init__(self, channels: int, tokens: int, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels + tokens, dim, 1), nn.Conv2d(dim, dim, 3, padding=1),
                                  nn.GroupNorm(_groups(dim), dim), nn.GELU())
        self.cross = CrossBlock(dim, heads, mlp_ratio)

    def forward(self, feature, attention_in, attention, coarser, tokens):
        """feature, attention_in: standardised conv inputs; attention: the maps (weights of the token pooling)."""
        x = self.conv(torch.cat([feature, attention_in], dim=1))
        if coarser is not None:
            x = x + F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=False)
        b, c, h, w = x.shape
        weights = attention.flatten(2)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-8)  # each token's map sums to 1
        spatial = x.flatten(2).transpose(1, 2)  # (B, h*w, dim)
        spatial, tokens = self.cross(spatial, tokens + weights @ spatial)
        return spatial.transpose(1, 2).reshape(b, c, h, w), tokens


class FERAnno(nn.Module):
    """``forward(features, attention, text) -> logits``; see the module docstring."""

    def __init__(self, config: FERAnnoConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.text_proj = nn.Linear(config.text_dim, dim)
        self.scales = nn.ModuleList(ScaleBlock(c, config.tokens, dim, config.heads, config.mlp_ratio)
                                    for c in config.feature_channels)
        self.head = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim), nn.GELU(),
                                  nn.Linear(dim, config.num_classes))
        self.register_buffer("temperature", torch.ones(()))
        for i, channels in enumerate(config.feature_channels):  # input normalisation, set by fit_input_stats
            for name, size in ((f"feature_{i}", channels), (f"attention_{i}", config.tokens)):
                self.register_buffer(f"{name}_mean", torch.zeros(size))
                self.register_buffer(f"{name}_std", torch.ones(size))

    def forward(self, features: list[torch.Tensor], attention: dict, text: torch.Tensor) -> torch.Tensor:
        """features: (B, C_s, h_s, w_s) per scale; attention: {(h, w): (B, tokens, h, w)}; text: (1 or B, tokens, D)."""
        batch = features[0].shape[0]
        tokens = self.text_proj(text).expand(batch, -1, -1)
        state = None
        for i, (block, feature) in enumerate(zip(self.scales, features, strict=True)):
            maps = attention_at(attention, feature.shape[-2:])
            state, tokens = block(self._standardise(feature, f"feature_{i}"), self._standardise(maps, f"attention_{i}"),
                                  maps, state, tokens)
        return self.head(torch.cat([state.flatten(2).mean(-1), tokens.mean(1)], dim=-1))

    def _standardise(self, x: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        return (x - mean[:, None, None]) / std[:, None, None]

    @torch.no_grad()
    def fit_input_stats(self, batches) -> None:
        """Set the per-channel mean and std of every scale's features and attention maps from
        ``(features, attention)`` batches of the training set (a frozen input normalisation)."""
        sums: dict[str, list] = {}
        for features, attention in batches:
            for i, feature in enumerate(features):
                for name, x in ((f"feature_{i}", feature), (f"attention_{i}", attention_at(attention, feature.shape[-2:]))):
                    x = x.detach().cpu().double().transpose(0, 1).flatten(1)  # (C, B*h*w)
                    acc = sums.setdefault(name, [0, 0.0, 0.0])
                    acc[0] += x.shape[1]
                    acc[1] = acc[1] + x.sum(1)
                    acc[2] = acc[2] + (x * x).sum(1)
        for name, (n, total, squares) in sums.items():
            mean = total / n
            std = (squares / n - mean * mean).clamp_min(0).sqrt()
            std = std.clamp_min(max(float(std.median()) * 1e-2, 1e-12))  # near-constant channels are not blown up
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)

    def predict_proba(self, features, attention, text) -> torch.Tensor:
        """Softmax of logits / temperature."""
        return torch.softmax(self(features, attention, text) / self.temperature, dim=-1)

    # -- files ----------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``feranno.safetensors`` and ``feranno_config.json`` (the config records the temperature)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                  folder / WEIGHTS_NAME, metadata={"format": "pt"})
        config = asdict(self.config)
        config["meta"] = {**config["meta"], "temperature": float(self.temperature)}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FERAnno:
        """Load a saved model: the config validated field by field (with the ``meta`` the labeller reads), the
        weights from safetensors only (a pickled, truncated or mismatched file is a ``ModelLoadError``)."""
        from builder.models.files import load_safetensors, read_json_config
        from curation.labelling.feranno.config_file import FERAnnoConfigFile

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(f"is not a FERAnno model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})",
                                 file=str(folder), fix="point at the output_dir of `build-dataset train-feranno`")
        fix = "re-train the model with `build-dataset train-feranno` (this version of the tool)"
        checked = read_json_config(config_path, FERAnnoConfigFile, "FERAnno config", fix)
        config = FERAnnoConfig(**checked.model_dump())
        state = load_safetensors(weights_path, fix)
        model = cls(config)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError) as exc:
            raise ModelLoadError(f"weights do not match its config ({str(exc).splitlines()[0]})",
                                 file=str(weights_path),
                                 fix="config and weights must come from the same training run") from None
        return model.eval()


def attention_at(attention: dict, size) -> torch.Tensor:
    """The attention maps at ``size`` (h, w), or the nearest resolution's maps resized to it (bilinear)."""
    size = tuple(int(s) for s in size)
    if size in attention:
        return attention[size]
    nearest = min(attention, key=lambda hw: abs(math.log(hw[0] * hw[1] / (size[0] * size[1]))))
    return F.interpolate(attention[nearest], size=size, mode="bilinear", align_corners=False)


def _groups(channels: int) -> int:
    """GroupNorm groups of >= 32 channels: per-channel (instance) norm would erase each map's global statistics."""
    return next(g for g in range(max(1, channels // 32), 0, -1) if channels % g == 0)
