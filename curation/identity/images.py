"""Reading photos and finding the one face to embed, the same way for the reference, calibration and the stage."""
from __future__ import annotations

import io

import numpy as np


def decode_rgb(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) from encoded image bytes, as ``builder.core.images.to_rgb8`` reads them (EXIF orientation
    applied; raises on unreadable data)."""
    from PIL import Image

    from builder.core.images import to_rgb8

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(to_rgb8(im))


def load_detector(min_score: float, min_size: float, device: str = "cpu"):
    """(MTCNN detector, FacePolicy); MTCNN searches faces from ``min_size`` pixels (at least 20) up."""
    from curation.faces.detect import FacePolicy
    from curation.faces.detect import load_detector as load_mtcnn

    return load_mtcnn(device, min_face=max(20, int(min_size))), FacePolicy(min_score, min_size)

