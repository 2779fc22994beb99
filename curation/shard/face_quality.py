"""The 'faces' stage: one dominant face of a usable size, sharp and well exposed.

MTCNN, or SCRFD when ``detector: scrfd`` gives its ONNX file
(``curation/scrfd.py``), finds the faces (detections under ``min_score`` are
ignored); the largest is the main face. It is aligned by its five landmarks to a tight
112 px crop, on which sharpness (variance of the Laplacian of the grey crop)
and exposure (mean grey level) are measured. The main face, its landmarks and
the number of faces go into ``record.face`` for later stages (the labellers
and the identity-leak gate reuse them); the measurements go into
``record.scores``. Drop reasons: ``no_face``, ``small_face``,
``multiple_faces``, ``blurry``, ``underexposed``, ``overexposed``, and
``error`` for an image that cannot be read.
"""
from __future__ import annotations

import numpy as np

from builder.core.records import Record
from builder.core.stage import Column, Filter, Resources, ShardContext, device_resources

CROP = 112


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image (0-255 floats): low means blurry."""
    g = np.asarray(grey, dtype=np.float64)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def box_area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


class FaceQualityFilter(Filter):
    name = "faces"
    columns = (
        Column("face_box", "float32[4]", "main face box x1, y1, x2, y2 in pixels", lambda r, meta: (r.face or {}).get("box")),
        Column("face_landmarks", "float32[5,2]", "its 5 landmarks (x, y)",
               lambda r, meta: (r.face or {}).get("landmarks")),
        Column("face_score", "float32", "detector score", lambda r, meta: (r.face or {}).get("score")),
        Column("sharpness", "float32", "Laplacian variance of the aligned face", lambda r, meta: r.scores.get("sharpness")),
        Column("brightness", "float32", "mean grey of the aligned face", lambda r, meta: r.scores.get("brightness")),
    )

    def __init__(self, spec, device: str = "cpu"):
        self.spec = spec
        self.requested_device = device
        self.detector = None

    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def setup(self) -> None:
        from builder.models.diffusion import resolve_device

        device = resolve_device(self.requested_device)
        if self.spec.detector == "scrfd":
            from curation.faces.scrfd import SCRFDDetector

            self.detector = SCRFDDetector(self.spec.detector_model, device, self.spec.detector_size,
                                          self.spec.min_score)
        else:
            from curation.faces.detect import load_detector

            self.detector = load_detector(device)

    def meta(self) -> dict:
        s = self.spec
        detector = {"detector": "mtcnn"}
        if s.detector == "scrfd":  # set up by now: the runner reads meta after setup
            detector = self.detector.describe()
        return {**detector, "min_score": s.min_score, "min_size": s.min_size,
                "max_other_face": s.max_other_face, "min_sharpness": s.min_sharpness,
                "min_brightness": s.min_brightness, "max_brightness": s.max_brightness}

    def check(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        from builder.core.images import open_rgb8
        from curation.faces.detect import align, face_entry

        image = np.asarray(open_rgb8(ctx.resolve(record.image)))
        s = self.spec
        found = sorted((d for d in self.detector.detect(image) if d.score >= s.min_score),
                       key=lambda d: box_area(d.box), reverse=True)
        if not found:
            return "no_face", f"no face with score >= {s.min_score:g}"
        main = found[0]
        record.face = face_entry(main, len(found))
        record.scores.update(face_score=round(main.score, 5), face_size=round(main.size, 2))
        if main.size < s.min_size:
            return "small_face", f"main face {main.size:.0f} px < min_size {s.min_size:g}"
        if len(found) > 1:
            ratio = box_area(found[1].box) / box_area(main.box)
            record.scores["other_face_ratio"] = round(ratio, 4)
            if ratio > s.max_other_face:
                return "multiple_faces", (f"{len(found)} faces; the second is {ratio:.2f} of the main face's area "
                                          f"(max_other_face {s.max_other_face:g})")
        grey = align(image, main.landmarks, CROP, 0.0).astype(np.float64) @ [0.299, 0.587, 0.114]
        sharp, bright = sharpness(grey), float(grey.mean())
        record.scores.update(sharpness=round(sharp, 3), brightness=round(bright, 3))
        if bright < s.min_brightness:  # before sharpness: a dark face also has little contrast
            return "underexposed", f"face brightness {bright:.1f} < min_brightness {s.min_brightness:g}"
        if bright > s.max_brightness:
            return "overexposed", f"face brightness {bright:.1f} > max_brightness {s.max_brightness:g}"
        if sharp < s.min_sharpness:
            return "blurry", f"sharpness {sharp:.1f} < min_sharpness {s.min_sharpness:g}"
        return None
