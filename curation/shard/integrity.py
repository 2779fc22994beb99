"""Image integrity: drop images that cannot be decoded, are damaged, or carry no picture.

Catches missing files, files that do not decode, damaged files that do (a cut or garbled JPEG or PNG, a
JPEG tail the decoder filled with grey: ``builder.core.images.read_checked``) and flat frames (all black, all
one colour: the usual result of fp16 overflow in a VAE decode). Reasons: ``missing_image``,
``unreadable_image``, ``corrupt_image``, ``blank_image``. Pixels are read as ``to_rgb8`` gives them.
"""
from __future__ import annotations

from builder.core.images import CorruptImage, read_checked, to_rgb8
from builder.core.records import Record
from builder.core.stage import Filter, ShardContext
from builder.manifest import Integrity


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
            pixels = np.asarray(to_rgb8(read_checked(path.read_bytes())), dtype=np.float32)
        except CorruptImage as exc:
            return "corrupt_image", str(exc)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            return "unreadable_image", f"{type(exc).__name__}: {exc}"
        std = float(pixels.std())
        record.scores["pixel_std"] = round(std, 3)
        if std < self.spec.min_std:
            return "blank_image", f"pixel std {std:.2f} < min_std {self.spec.min_std:g}"
        return None
