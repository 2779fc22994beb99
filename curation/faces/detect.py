"""The shared face module: detect faces (MTCNN), keep the confident ones, align crops by 5 landmarks.

Experts, FERAnno's inputs and the curation face checks all see faces through
this module, so a face is found and cropped the same way everywhere (the
'faces' stage may find it with SCRFD instead, ``curation/scrfd.py``: same
``Detection``, same landmark order, and later stages reuse its ``record.face``).
Alignment is the similarity transform (rotation, uniform scale, shift) that
best maps the 5 detected landmarks onto the standard ArcFace 112x112 template
(Umeyama 1991), optionally zoomed out by ``margin`` to keep more of the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.faces.mtcnn import Detection

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
"""Left eye, right eye, nose, left and right mouth corner in a 112x112 aligned face (insightface)."""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the least-squares similarity transform taking points ``src`` to ``dst`` (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(0).sum()
    shift = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, shift[:, None]])


def template(size: int, margin: float = 0.0) -> np.ndarray:
    """The 5-point template for a ``size`` x ``size`` crop; ``margin`` 0.25 shows 25 % more around the face."""
    return ((ARCFACE_TEMPLATE / 112.0 - 0.5) / (1.0 + margin) + 0.5) * size


def align(image: np.ndarray | Image.Image, landmarks, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """An aligned RGB uint8 face crop (size, size, 3) from an image and its 5 landmarks (x, y)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    forward = np.vstack([similarity_transform(np.asarray(landmarks), template(size, margin)), [0, 0, 1]])
    inverse = np.linalg.inv(forward)[:2].reshape(-1)  # PIL maps output pixels back to input pixels
    # pixel centres: PIL samples at (x + 0.5, y + 0.5); landmarks are in pixel-index coordinates
    a, b, c, d, e, f = inverse
    c, f = c - 0.5 * (a + b) + 0.5, f - 0.5 * (d + e) + 0.5
    out = pil.convert("RGB").transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f),
                                       resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.array(out)


@dataclass(frozen=True)
class FacePolicy:
    """Which detections count as faces: a minimum MTCNN score and a minimum box side in pixels."""

    min_score: float = 0.9
    min_size: float = 32.0

    def keep(self, detections: list[Detection]) -> list[Detection]:
        return [d for d in detections if d.score >= self.min_score and d.size >= self.min_size]


def primary(detections: list[Detection]) -> Detection | None:
    """The face a single-subject image is about: the largest box (ties: higher score)."""
    if not detections:
        return None
    return max(detections, key=lambda d: ((d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), d.score))


def load_detector(device: str = "cpu", min_face: int = 20):
    """MTCNN with the pinned weights from the model store (fetched and verified on first use)."""
    from builder.models.registry import REGISTRY
    from builder.models.store import fetch
    from curation.faces.mtcnn import MTCNN

    files = [fetch(REGISTRY[f"mtcnn-{net}"]) for net in ("pnet", "rnet", "onet")]
    return MTCNN.from_files(*files, device=device, min_face=min_face)


def face_entry(detection, count: int) -> dict:
    """The JSON form of a detection stored in ``record.face`` (box, score, 5 landmarks, number of faces)."""
    return {"box": [round(v, 2) for v in detection.box], "score": round(detection.score, 5),
            "landmarks": [[round(x, 2), round(y, 2)] for x, y in detection.landmarks], "count": count}


def find_face(detector, policy: FacePolicy, image) -> dict | None:
    """The primary face (largest box ``policy`` keeps) of an RGB image as a ``record.face`` dict, or None."""
    found = policy.keep(detector.detect(image))
    best = primary(found)
    return None if best is None else face_entry(best, len(found))


def image_and_face(path, record, detector, policy: FacePolicy) -> tuple[np.ndarray, dict | None]:
    """The record's RGB image (uint8) and its face: ``record.face`` when an earlier stage found it, else the
    primary face ``policy`` keeps (stored in ``record.face``), or None when there is none."""
    from builder.core.images import open_rgb8

    image = np.asarray(open_rgb8(path))
    if record.face is None or not record.face.get("landmarks"):
        found = find_face(detector, policy, image)
        if found is None:
            return image, None
        record.face = {**(record.face or {}), **found}
    return image, record.face


def per_face(records, stage: str, policy: FacePolicy, compute) -> tuple[list, list]:
    """``compute(record)`` for each record: (values, records) of those with a face. A record whose ``compute``
    raises is dropped as ``error``, one it returns None for as ``no_face`` (the stage contract: counted, never a
    crash)."""
    from builder.core.errors import is_run_fault
    from builder.core.records import Drop

    values, kept = [], []
    for record in records:
        try:
            value = compute(record)
        except Exception as exc:  # a bad sample is counted and skipped, never a crash
            if is_run_fault(exc):
                raise
            record.drop = Drop(stage, "error", f"{type(exc).__name__}: {exc}")
            continue
        if value is None:
            record.drop = Drop(stage, "no_face", f"no face with score >= {policy.min_score:g} and side >= "
                                                 f"{policy.min_size:g} px")
            continue
        values.append(value)
        kept.append(record)
    return values, kept
