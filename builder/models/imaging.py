"""Images to model input: the shorter side resized to R (bicubic), then the centre R x R square."""
from __future__ import annotations

import numpy as np
import torch


def to_pixels(images, resolution: int) -> torch.Tensor:
    """(B, 3, R, R) float in [0, 1] from PIL images, HxWx3 arrays (uint8, or float in [0, 1]), or a float
    tensor (B, 3, H, W) in [0, 1]; shorter side resized to R (bicubic), centre crop."""
    from PIL import Image

    from builder.core.images import to_rgb8

    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    out = []
    for image in images:
        if isinstance(image, Image.Image):
            out.append(square_pixels(to_rgb8(image), resolution))
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8:
            out.append(square_pixels(to_rgb8(Image.fromarray(image)), resolution))
        else:
            chw = torch.as_tensor(image, dtype=torch.float32)
            if chw.ndim == 3 and chw.shape[0] != 3 and chw.shape[-1] == 3:
                chw = chw.permute(2, 0, 1)  # HWC array
            out.append(_float_to_tensor(chw, resolution))
    return torch.stack(out)


def square_pixels(image, resolution: int) -> torch.Tensor:
    """PIL RGB -> (3, R, R) float in [0, 1]."""
    from PIL import Image

    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def _float_to_tensor(chw: torch.Tensor, resolution: int) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = chw.shape[-2:]
    if (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        chw = F.interpolate(chw[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        chw = chw[:, top: top + resolution, left: left + resolution]
    return chw.clamp(0, 1)
