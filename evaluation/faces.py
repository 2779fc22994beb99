"""Face crops for training and testing, aligned the way the curation stages align them.

Each image becomes one ``size`` x ``size`` RGB crop (``curation.faces.detect.align``:
5-point similarity alignment to the ArcFace template, zoomed out by
``margin``), with the build's labelling settings (``labelling.faces``) or the
defaults the label stage uses. The build's own landmarks are reused when the
release carries them; other images go through MTCNN (``load_detector``,
``find_face`` with the same score and size policy). An image without a face is
centre-cropped instead and counted (``no_face``); ``--no-align`` centre-crops
every image (pre-aligned sets). Crops are cached as ``.npy`` files in
``OUT/eval/cache`` (memory-mapped, so a large real set does not fill memory),
keyed by the set's identity and the crop settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from builder.manifest import FaceCrop

CACHE_VERSION = 1
STATUSES = ("landmarks", "detected", "no_face", "not_aligned", "unreadable")


@dataclass(frozen=True)
class CropSpec:
    """How faces are cropped: the labelling's face settings (or the defaults), and whether to align at all."""

    size: int = 112
    margin: float = 0.2
    min_score: float = 0.9
    min_size: float = 32.0
    align: bool = True
    settings_from: str = "defaults"  # "labelling.faces" when the build had a labelling section

    @classmethod
    def for_build(cls, manifest: dict, align: bool = True) -> CropSpec:
        labelling = manifest.get("labelling") or {}
        faces = FaceCrop.model_validate(labelling.get("faces") or {})
        return cls(faces.size, faces.margin, faces.min_score, faces.min_size, align,
                   "labelling.faces" if labelling else "defaults")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Crops:
    """Aligned crops (N, size, size, 3) uint8 (possibly memory-mapped) and how each was made."""

    pixels: np.ndarray
    status: list[str]

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUSES if (n := self.status.count(s))}

    def usable(self) -> np.ndarray:
        return np.array([s != "unreadable" for s in self.status], dtype=bool)


class Cropper:
    """Makes (or reads back from the cache) the crops of image sets; loads MTCNN once, only if needed."""

    def __init__(self, spec: CropSpec, cache_dir: Path | None, device: str = "cpu", log=print):
        self.spec = spec
        self.cache_dir = cache_dir
        self.device = device
        self.log = log
        self._detector = None

    def detector(self):
        if self._detector is None:
            from curation.faces.detect import load_detector

            self._detector = load_detector(self.device)
        return self._detector

    def key(self, imageset) -> str:
        ident = {"set": imageset.identity, "spec": self.spec.to_json(), "version": CACHE_VERSION,
                 "landmarks": imageset.landmarks is not None}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def crops(self, imageset) -> Crops:
        if self.cache_dir is not None:
            pixels_path = self.cache_dir / f"crops-{self.key(imageset)}.npy"
            status_path = pixels_path.with_suffix(".json")
            if status_path.is_file() and pixels_path.is_file():  # the .json is written last: complete
                return Crops(np.load(pixels_path, mmap_mode="r"), json.loads(status_path.read_text())["status"])
        n, s = len(imageset), self.spec.size
        self.log(f"cropping {n} {imageset.role} images "
                 f"({'aligned by 5 landmarks' if self.spec.align else 'centre crop, --no-align'}, {s} px)")
        if self.cache_dir is None:
            pixels = np.zeros((n, s, s, 3), np.uint8)
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = pixels_path.with_name(f".{pixels_path.name}.{os.getpid()}.tmp.npy")
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, s, s, 3))
        status = []
        for i in range(n):
            crop, how = self._one(imageset, i)
            if crop is not None:
                pixels[i] = crop
            status.append(how)
        if self.cache_dir is None:
            return Crops(pixels, status)
        pixels.flush()
        del pixels
        os.replace(tmp, pixels_path)
        tmp_status = status_path.with_name(f".{status_path.name}.{os.getpid()}.tmp")
        tmp_status.write_text(json.dumps({"status": status, "spec": self.spec.to_json(), "set": imageset.describe}))
        os.replace(tmp_status, status_path)
        return Crops(np.load(pixels_path, mmap_mode="r"), status)

    def _one(self, imageset, i: int) -> tuple[np.ndarray | None, str]:
        from builder.models.imaging import square_pixels
        from curation.faces.detect import FacePolicy, align, find_face

        try:
            image = imageset.load(i)
        except Exception:  # a broken image is counted and left out, never a crash
            return None, "unreadable"
        spec = self.spec
        if not spec.align:
            return _centre(square_pixels(image, spec.size)), "not_aligned"
        landmarks = imageset.landmarks[i] if imageset.landmarks is not None else None
        how = "landmarks"
        if landmarks is None:
            face = find_face(self.detector(), FacePolicy(spec.min_score, spec.min_size), np.asarray(image))
            if face is None:
                return _centre(square_pixels(image, spec.size)), "no_face"
            landmarks, how = face["landmarks"], "detected"
        return align(image, landmarks, spec.size, spec.margin), how


def face_images(imageset, cropper: Cropper | None):
    """(PIL image or None when unreadable, how it was made) for each sample of ``imageset``: its aligned face crop
    with a ``cropper`` (``Crops.status``: landmarks, detected, no_face, not_aligned), else the whole image."""
    from PIL import Image

    if cropper is not None:
        crops = cropper.crops(imageset)
        for i in range(len(imageset)):
            status = crops.status[i]
            yield (None if status == "unreadable" else Image.fromarray(np.asarray(crops.pixels[i]))), status
        return
    for i in range(len(imageset)):
        try:
            yield imageset.load(i), "whole"
        except Exception:  # a broken image is counted and left out, never a crash
            yield None, "unreadable"


def _centre(chw) -> np.ndarray:
    """(3, S, S) float [0, 1] -> (S, S, 3) uint8."""
    return (chw.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
