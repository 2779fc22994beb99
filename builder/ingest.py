"""The 'ingest' stage of an ``images`` source: copy each listed image into the build, or drop it.

A readable image is copied byte for byte (its format kept), except that a
photo with an EXIF orientation other than 1 is stored upright as PNG, so face
detection and the released image see it the way viewers show it. Dataset rows
are stored as PNG. The build folder then holds every image it releases, and a
later change to the source cannot alter a finished shard. Drop reasons:
``missing_image`` (listed, then gone) and ``unreadable_image`` (not a decodable
image).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .records import Drop, Record
from .stage import ShardContext, Stage

EXIF_ORIENTATION = 0x0112


class IngestStage(Stage):
    """Bring listed images into the build folder (see the module docstring)."""

    name = "ingest"

    def __init__(self, spec, listing):
        self.spec = spec
        self.listing = listing
        self.dataset = None

    def setup(self) -> None:
        from .sources import open_dataset

        if self.spec.dataset is not None:
            self.dataset = open_dataset(self.spec)

    def meta(self) -> dict:
        listing = self.listing
        return {"kind": listing.kind, "root": listing.root, "count": listing.count, "listing_sha256": listing.sha256}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for record in records:
            try:
                self._ingest(record, ctx)
            except FileNotFoundError as exc:
                record.drop = Drop(self.name, "missing_image", f"{exc.filename or record.source} is gone")
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                record.drop = Drop(self.name, "unreadable_image", f"{type(exc).__name__}: {exc}")
            yield record

    def _ingest(self, record: Record, ctx: ShardContext) -> None:
        from PIL import Image, ImageOps

        if self.dataset is not None:
            image = self.dataset[int(record.source)][self.spec.image_column]
            if not isinstance(image, Image.Image):
                raise TypeError(f"row {record.source} holds {type(image).__name__}, not an image")
            image.load()
            self._save(record, ctx, image.convert("RGB"), ".png")
            return
        path = Path(self.listing.root) / record.source
        data = path.read_bytes()
        with Image.open(path) as im:
            im.load()  # decodes the whole file: truncated or corrupt images fail here
            width, height = im.size
            if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
                upright = ImageOps.exif_transpose(im).convert("RGB")
                self._save(record, ctx, upright, ".png")
                return
        target, stored = ctx.output_path(f"images/{record.sample_id}{path.suffix.lower()}")
        target.write_bytes(data)
        record.image = stored
        record.scores.update(width=float(width), height=float(height))

    @staticmethod
    def _save(record: Record, ctx: ShardContext, image, suffix: str) -> None:
        target, stored = ctx.output_path(f"images/{record.sample_id}{suffix}")
        image.save(target, format="PNG")
        record.image = stored
        record.scores.update(width=float(image.width), height=float(image.height))
