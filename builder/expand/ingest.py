"""The 'ingest' stage of an ``images`` source: copy each listed image into the build, or drop it.

A readable image is stored so that its bytes show what the labellers see (``builder.core.images.to_rgb8``):
a file in a format released as is (``image_io.RELEASED_AS_IS``: PNG, JPEG, WebP) holding upright 8-bit RGB
or grey pixels is copied byte for byte under its format's suffix; any other file (GIF, TIFF, BMP, 16-bit,
transparency, an EXIF rotation, several frames) and every dataset row is stored as the 8-bit RGB PNG of
``to_rgb8``. The build folder then holds every image it releases, and a later change to the source cannot
alter a finished shard.

Drop reasons: ``unknown_source_label`` (the source gives labels, not this one or one no label map knows),
``missing_image`` (listed, then gone), ``link_outside_folder``
(it became a link out of ``images.folder`` after the listing), ``corrupt_image`` (cut, garbled, or a tail
the decoder filled in: ``image_io.read_checked``) and ``unreadable_image`` (not a decodable image). A
failure to write into the build folder is no drop: it stops the run with a ``StorageError`` and the shard
is not committed, so the same command redoes it once the fault is cleared.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.core.errors import storage_error
from builder.core.images import CorruptImage, kept_suffix, to_rgb8
from builder.core.listed_images import OutsideFolder, read_entry, row_image, undecoded
from builder.core.records import Drop, Record
from builder.core.stage import Column, ShardContext, Stage


@dataclass
class _Source:
    """What a record's image becomes: its bytes kept under ``suffix``, or ``rgb`` stored as PNG."""

    width: int
    height: int
    data: bytes | None = None
    suffix: str | None = None
    rgb: object = None


class IngestStage(Stage):
    """Bring listed images into the build folder (see the module docstring)."""

    name = "ingest"
    columns = (
        Column("sample_id", "string", "the sample's id (dataset name and index)", lambda r, meta: r.sample_id),
        Column("source_file", "string", "the image's path in the source folder, or its row in the source dataset",
               lambda r, meta: r.source),
    )

    def __init__(self, spec, listing):
        self.spec = spec
        self.listing = listing
        self.dataset = None

    def setup(self) -> None:
        from builder.expand.images import open_dataset

        if self.spec.dataset is not None:
            self.dataset = undecoded(open_dataset(self.spec), self.spec.image_column)

    def meta(self) -> dict:
        listing = self.listing
        meta = {"kind": listing.kind, "root": listing.root, "count": listing.count, "listing_sha256": listing.sha256}
        if skipped := listing.reported_skips():
            meta["skipped"] = skipped
        return meta

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for record in records:
            raw = record.attributes.get("source_label")
            if raw is not None and record.label < 0:  # the source gives labels, and this one is none we know
                record.drop = Drop(self.name, "unknown_source_label", f"label {raw!r} is no class of the label map"
                                   if raw else "the source gives this image no label")
                yield record
                continue
            try:
                source = self._read(record)
            except FileNotFoundError as exc:
                record.drop = Drop(self.name, "missing_image", f"{exc.filename or record.source} is gone")
            except OutsideFolder as exc:
                record.drop = Drop(self.name, "link_outside_folder", str(exc))
            except CorruptImage as exc:
                record.drop = Drop(self.name, "corrupt_image", str(exc))
            except Exception as exc:  # a bad source image is counted and skipped, never a crash
                record.drop = Drop(self.name, "unreadable_image", f"{type(exc).__name__}: {exc}")
            else:
                self._store(record, ctx, source)  # a write error stops the run (StorageError), never a drop
            yield record

    def _read(self, record: Record) -> _Source:
        """Read and decode the record's source image (every failure here is the sample's)."""
        if self.dataset is not None:
            rgb = to_rgb8(row_image(self.dataset, int(record.source), self.spec.image_column))
            return _Source(rgb.width, rgb.height, rgb=rgb)
        image, data = read_entry(self.listing.root, record.source, self.spec.follow_links_outside, "images.folder")
        suffix = kept_suffix(image, data, Path(record.source).suffix)
        if suffix is not None:
            return _Source(image.width, image.height, data=data, suffix=suffix)
        rgb = to_rgb8(image)
        return _Source(rgb.width, rgb.height, rgb=rgb)

    @staticmethod
    def _store(record: Record, ctx: ShardContext, source: _Source) -> None:
        """Write the image into the shard's staging folder; any OSError is the build folder's, a StorageError."""
        relative = f"images/{record.sample_id}{source.suffix or '.png'}"
        target = ctx.staging / relative
        try:
            target, stored = ctx.output_path(relative)
            if source.data is not None:
                target.write_bytes(source.data)
            else:
                source.rgb.save(target, format="PNG")
        except OSError as exc:
            exc.filename = exc.filename or str(target)
            raise storage_error(exc, ctx.root) from None
        record.image = stored
        record.scores.update(width=float(source.width), height=float(source.height))

