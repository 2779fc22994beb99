"""The 'align' stage: each image's main face, aligned by its five landmarks and cropped square.

Per record: the image and its main face (``record.face`` when an earlier stage found one, else MTCNN's largest
face that ``curation.faces.detect.FacePolicy()`` keeps). The similarity transform that maps the face's five
landmarks onto the template of a ``crop.size`` crop with ``crop.margin`` (``curation.faces.detect.align``) has a
scale ``s``: the crop covers ``crop.size / s`` source pixels, the face region's side (``scores['face_side']``).
A region of at least ``upscale.when_smaller_than`` pixels is warped straight to ``crop.size``; a smaller one is
warped at its own resolution (``round(side)``, at least 8 pixels: no detail is invented by the warp) and marked
for the 'upscale' stage (``scores['upscale_from']``, the side of the crop written). The crop is stored as PNG in
this shard's folder and becomes ``record.image``; the landmarks in crop pixels go into
``face['aligned_landmarks']``. Drop reasons: ``no_face``, and ``error`` for an image that cannot be read.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from builder.core.errors import is_run_fault, storage_error
from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources
from builder.manifest.annotate import Annotate

MIN_SIDE = 8
"""The smallest crop the stage writes for a tiny face (pixels)."""


def transform(landmarks, size: int, margin: float) -> np.ndarray:
    """The 2x3 similarity transform taking a face's 5 landmarks (source pixels) onto the template of a ``size``
    crop with ``margin`` (what ``curation.faces.detect.align`` warps by)."""
    from curation.faces.detect import similarity_transform, template

    return similarity_transform(np.asarray(landmarks, np.float64), template(size, margin))


def region_side(landmarks, size: int, margin: float) -> float:
    """Side, in source pixels, of the region a ``size`` crop with ``margin`` covers: ``size`` over the transform's
    scale (the same at any crop size)."""
    matrix = transform(landmarks, size, margin)
    return size / float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


class AlignStage(Stage):
    """Five-point alignment and square crops, small faces marked for super-resolution (see the module docstring)."""

    name = "align"
    columns = (
        Column("face_side", "float32", "side of the face region in the source image, pixels",
               lambda r, meta: r.scores.get("face_side")),
    )

    def __init__(self, spec: Annotate, device: str = "auto"):
        self.spec = spec
        self.requested_device = device
        self.detector = None

    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def setup(self) -> None:
        from builder.models.diffusion import resolve_device
        from curation.faces.detect import load_detector

        self.detector = load_detector(resolve_device(self.requested_device))

    def meta(self) -> dict:
        from curation.faces.detect import FacePolicy

        policy = FacePolicy()
        crop = self.spec.crop
        return {"size": crop.size, "align": crop.align, "margin": crop.margin,
                "when_smaller_than": self.spec.upscale.when_smaller_than, "detector": "mtcnn",
                "min_score": policy.min_score, "min_size": policy.min_size}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for record in records:
            try:
                verdict = self._align(record, ctx)
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):  # the run's input or disk is at fault: stop, commit nothing
                    raise
                verdict = ("error", f"{type(exc).__name__}: {exc}")
            if verdict is not None:
                record.drop = Drop(self.name, *verdict)
            yield record

    def _align(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        from PIL import Image

        from curation.faces.detect import FacePolicy, align, image_and_face

        policy = FacePolicy()
        image, face = image_and_face(ctx.resolve(record.image), record, self.detector, policy)
        if face is None:
            return "no_face", f"no face with score >= {policy.min_score:g} and side >= {policy.min_size:g} px"
        crop, spec = self.spec.crop, self.spec.upscale
        landmarks = np.asarray(face["landmarks"], np.float64)
        region = region_side(landmarks, crop.size, crop.margin)
        small = region < spec.when_smaller_than
        side = max(MIN_SIDE, int(round(region))) if small else crop.size
        pixels = align(image, landmarks, size=side, margin=crop.margin)
        matrix = transform(landmarks, side, crop.margin)
        aligned = landmarks @ matrix[:, :2].T + matrix[:, 2]
        target = ctx.staging / f"images/{record.sample_id}.png"
        try:
            target, stored = ctx.output_path(f"images/{record.sample_id}.png")
            Image.fromarray(pixels).save(target, format="PNG")
        except OSError as exc:  # the build folder's fault, not the sample's
            exc.filename = exc.filename or str(target)
            raise storage_error(exc, ctx.root) from None
        record.image = stored
        record.face["aligned_landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in aligned]
        record.scores["face_side"] = round(region, 2)
        if small:
            record.scores["upscale_from"] = float(side)
        return None
