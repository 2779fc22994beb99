"""The 'upscale' stage: bring the small faces the 'align' stage marked up to the crop size.

A record without ``scores['upscale_from']`` already has a ``crop.size`` crop and passes through (``upscaled_by``
'none'). A marked one (its crop is ``upscale_from`` pixels square) is enlarged to exactly ``crop.size``: with
``upscale.model: none`` by a bicubic resize (``upscaled_by`` 'resize'); with a super-resolution model
(``builder.models.upscalers``) by the model, applied as many times as it takes to reach the crop size (at least
once: a marked face always goes through the model), then resized to exactly ``crop.size`` with a Lanczos filter
(``upscaled_by`` the model's reference). The new PNG goes into this stage's shard folder and
``face['aligned_landmarks']`` are scaled with it. Drop reason: ``error`` for a crop that cannot be read or that the
model fails on (alone).
"""
from __future__ import annotations

from collections.abc import Iterator

from builder.core.errors import is_run_fault, storage_error
from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources
from builder.manifest.annotate import Annotate

CHUNK = 32
"""Marked records read, enlarged and written together (bounds the memory of a shard's images)."""
MAX_PASSES = 12
"""More model passes than any crop size needs (a factor of at least 2 from 8 pixels reaches 2048 in 8)."""


def passes_needed(side: int, size: int, scale: int) -> int:
    """How many passes of a ``scale`` model take a ``side`` crop to at least ``size`` pixels (at least one)."""
    n, reached = 1, side * scale
    while reached < size and n < MAX_PASSES:
        n, reached = n + 1, reached * scale
    return n


def scale_points(points, fx: float, fy: float) -> list[list[float]]:
    """Pixel-index coordinates after resizing an image by ``fx`` across and ``fy`` down (pixel centres map onto
    pixel centres)."""
    return [[round((x + 0.5) * fx - 0.5, 2), round((y + 0.5) * fy - 0.5, 2)] for x, y in points]


class UpscaleStage(Stage):
    """Super-resolution (or a resize) of the faces 'align' marked as small (see the module docstring)."""

    name = "upscale"
    columns = (
        Column("upscaled_by", "string", "how a small face reached the crop size: the super-resolution model, "
               "'resize' or 'none'", lambda r, meta: r.attributes.get("upscaled_by")),
    )

    def __init__(self, spec: Annotate, device: str = "auto"):
        self.spec = spec
        self.requested_device = device
        self.upscaler = None

    @property
    def uses_model(self) -> bool:
        return self.spec.upscale.model != "none"

    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device) if self.uses_model else Resources()

    def setup(self) -> None:
        if self.uses_model:
            from builder.models.diffusion import resolve_device
            from builder.models.upscalers import load_upscaler

            self.upscaler = load_upscaler(self.spec.upscale.model, resolve_device(self.requested_device))

    def meta(self) -> dict:
        head = {"size": self.spec.crop.size}
        if not self.uses_model:
            return {**head, "model": "none", "resize": "bicubic"}
        if self.upscaler is None:  # not set up: what the manifest names
            return {**head, "model": self.spec.upscale.model}
        return {**head, **self.upscaler.provenance(), "resize": "lanczos"}

    def runtime(self) -> dict:
        return {"device": self.upscaler.device} if self.upscaler is not None else {}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        marked = []
        for record in records:
            if "upscale_from" in record.scores:
                marked.append(record)
            else:
                record.attributes["upscaled_by"] = "none"
        for start in range(0, len(marked), CHUNK):
            self._enlarge(marked[start:start + CHUNK], ctx)
        yield from records

    def _enlarge(self, records: list[Record], ctx: ShardContext) -> None:
        from builder.core.images import open_rgb8

        readable, images = [], []
        for record in records:
            try:
                images.append(open_rgb8(ctx.resolve(record.image)))
                readable.append(record)
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):
                    raise
                record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")
        if self.upscaler is None:
            done = {id(r): (self._resize(im, "bicubic"), "resize") for r, im in zip(readable, images)}
        else:
            done = self._super_resolve(readable, images)
        for record, image in zip(readable, images):
            if id(record) in done:
                self._store(record, ctx, image.size, *done[id(record)])

    def _resize(self, image, kind: str):
        from PIL import Image

        size = self.spec.crop.size
        if image.size == (size, size):
            return image
        resample = Image.Resampling.BICUBIC if kind == "bicubic" else Image.Resampling.LANCZOS
        return image.resize((size, size), resample)

    def _super_resolve(self, records: list[Record], images: list) -> dict:
        """id(record) -> (crop.size image, upscaled_by) for every record the model enlarged; a record whose image
        the model fails on, alone, is dropped as ``error``."""
        size, scale = self.spec.crop.size, self.upscaler.scale
        current = dict(zip(map(id, records), images))
        needed = {id(r): passes_needed(min(im.size), size, scale) for r, im in zip(records, images)}
        for step in range(1, max(needed.values(), default=0) + 1):
            batch = [r for r in records if id(r) in current and needed[id(r)] >= step]
            for record, result in zip(batch, self._model([current[id(r)] for r in batch])):
                if isinstance(result, Exception):
                    record.drop = Drop(self.name, "error", f"super-resolution failed: {type(result).__name__}: "
                                       f"{result}")
                    del current[id(record)]
                else:
                    current[id(record)] = result
        return {key: (self._resize(image, "lanczos"), self.upscaler.name) for key, image in current.items()}

    def _model(self, images: list) -> list:
        """The model's output for each image; when the batch fails, each image alone (its exception if it fails
        again)."""
        try:
            return self.upscaler.upscale(images)
        except Exception as exc:
            if is_run_fault(exc):
                raise
            if len(images) == 1:
                return [exc]
        out = []
        for image in images:
            try:
                out.append(self.upscaler.upscale([image])[0])
            except Exception as exc:
                if is_run_fault(exc):
                    raise
                out.append(exc)
        return out

    def _store(self, record: Record, ctx: ShardContext, before: tuple[int, int], image, upscaled_by: str) -> None:
        target = ctx.staging / f"images/{record.sample_id}.png"
        try:
            target, stored = ctx.output_path(f"images/{record.sample_id}.png")
            image.save(target, format="PNG")
        except OSError as exc:  # the build folder's fault, not the sample's
            exc.filename = exc.filename or str(target)
            raise storage_error(exc, ctx.root) from None
        record.image = stored
        record.attributes["upscaled_by"] = upscaled_by
        if record.face and record.face.get("aligned_landmarks"):
            record.face["aligned_landmarks"] = scale_points(record.face["aligned_landmarks"],
                                                            image.width / before[0], image.height / before[1])
