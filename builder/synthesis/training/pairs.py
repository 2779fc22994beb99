"""Image-text training pairs for ``train-generator``: from a saved dataset or an image folder with a metadata.jsonl.

Rows whose image cannot be read or whose caption is not text are counted under a reason and skipped; a source
without a caption column, or with no usable pair, is an error naming the config field and the fix. With
``resize: none`` every image must already be square at the training resolution: checked from the image headers
before any model loads.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from builder.core.errors import UserError
from builder.core.seeding import SampleRng
from builder.synthesis.training.data import metadata_entries
from builder.synthesis.training.generator_config import PairData

SIZE_EXAMPLES = 3
"""Images named in a size-mismatch message."""


class PairExamples:
    """Random access to (image, caption) pairs; images are decoded on access."""

    def __init__(self, data: PairData, resolution: int, source: str):
        self.data = data
        self.source = source
        self.skipped: Counter[str] = Counter()
        self.items: list[tuple[object, str]] = []
        if data.dataset is not None:
            self._from_dataset()
        else:
            self._from_folder()
        if not self.items:
            raise UserError(f"no usable training pair (skipped: {dict(self.skipped) or 'none'})", file=source,
                            fix="check data.dataset / data.image_folder and data.caption_column")
        if data.resize == "none":
            self._check_sizes(resolution)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """(RGB PIL image, caption) of pair ``i``."""
        from builder.core.images import open_rgb8, to_rgb8

        image, caption = self.items[i]
        return (open_rgb8(image) if isinstance(image, Path) else to_rgb8(image.image())), caption

    def _from_dataset(self) -> None:
        from builder.core.saved_datasets import open_split

        d = self.data
        ds = open_split(d.dataset, d.split, {"image_column": d.image_column, "caption_column": d.caption_column},
                        "data", self.source)
        captions = ds[d.caption_column]
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                self.skipped["caption_not_text"] += 1
                continue
            self.items.append((_Row(ds, d.image_column, i), caption))

    def _from_folder(self) -> None:
        d = self.data
        folder = Path(d.image_folder)
        meta = folder / d.metadata
        if not meta.is_file():
            raise UserError(f"'{meta}' does not exist", file=self.source,
                            fix=f"put a {d.metadata} next to the images (one JSON object per line: "
                            f'{{"file_name": ..., "{d.caption_column}": ...}})')
        for entry, image in metadata_entries(folder, meta, self.skipped):
            caption = entry.get(d.caption_column)
            if not isinstance(caption, str):
                self.skipped["caption_not_text" if d.caption_column in entry else "no_caption"] += 1
            elif not image.is_file():
                self.skipped["missing_image"] += 1
            else:
                self.items.append((image, caption))
        if self.skipped["no_caption"] and not self.items:
            raise UserError(f"no line of '{meta}' has a '{d.caption_column}' field", file=self.source,
                            fix="set data.caption_column to the metadata field that holds the captions")

    def _check_sizes(self, resolution: int) -> None:
        """With ``resize: none``: every image must be ``resolution`` square (read from headers, not decoded)."""
        from PIL import Image

        wrong: Counter[tuple[int, int]] = Counter()
        named: list[str] = []
        for i, (image, _) in enumerate(self.items):
            if isinstance(image, _Row):
                size = image.size()
            else:
                with Image.open(image) as im:
                    size = im.size
            if size != (resolution, resolution):
                wrong[size] += 1
                if len(named) < SIZE_EXAMPLES:
                    named.append(f"{image} ({size[0]}x{size[1]})" if not isinstance(image, _Row)
                                 else f"row {i} ({size[0]}x{size[1]})")
        if wrong:
            sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in wrong.most_common(5))
            raise UserError(f"data.resize is 'none' but {sum(wrong.values())} of {len(self.items)} images are not "
                            f"{resolution}x{resolution} ({sizes}; e.g. {'; '.join(named)})", file=self.source,
                            fix="set data.resize: shorter-side (scale and crop each image), or resolution to the "
                            "images' size")


class _Row:
    """A dataset row's image, decoded only when used."""

    def __init__(self, ds, column: str, index: int):
        self.ds, self.column, self.index = ds, column, index

    def __str__(self) -> str:
        return f"row {self.index}"

    def image(self):
        return self.ds[self.index][self.column]

    def size(self) -> tuple[int, int]:
        return tuple(self.image().size)


def pair_pixels(image, resolution: int, crop: str, flip: bool, rng: SampleRng):
    """An RGB PIL image -> (3, R, R) float tensor in [-1, 1]: shorter side scaled to ``resolution`` (bicubic), a
    centre or ``rng``-drawn crop, mirrored when ``flip`` and ``rng`` says so; the draws are made in a fixed order
    whatever the options, so a resumed run sees the same pixels."""
    import torch
    from PIL import Image

    u_left, u_top, u_flip = rng.uniform(), rng.uniform(), rng.uniform()
    w, h = image.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.Resampling.BICUBIC)
        w, h = image.size
    if crop == "random":
        left, top = int(u_left * (w - resolution + 1)), int(u_top * (h - resolution + 1))
    else:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip and u_flip < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)
