"""Image integrity: drop images that cannot be decoded or carry no picture.

Catches truncated or missing files and flat frames (all black, all one colour:
the usual result of fp16 overflow in a VAE decode). Reasons: ``missing_image``,
``unreadable_image``, ``blank_image``.
"""
from __future__ import annotations

from builder.manifest import Integrity
from builder.records import Record
from builder.stage import Filter, ShardContext


class IntegrityFilter(Filter):
    name = "integrity"

    def __init__(self, spec: Integrity):
        self.spec = spec

    def check(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        if not record.image:
            return "missing_image", "record has no image"
        path = ctx.resolve(record.image)
        if not path.is_file():
            return "missing_image", f"{record.image} does not exist"
        try:
            with Image.open(path) as im:
                im.load()
                pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return "unreadable_image", f"{type(exc).__name__}: {exc}"
        std = float(pixels.std())
        record.scores["pixel_std"] = round(std, 3)
        if std < self.spec.min_std:
            return "blank_image", f"pixel std {std:.2f} < min_std {self.spec.min_std:g}"
        return None
