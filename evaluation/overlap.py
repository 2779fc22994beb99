"""Overlap between what an evaluation trains on and its test set, checked before anything is trained.

A test image that is also a training image (the same file, or a resized or recompressed copy) turns the
accuracy into a memory test. Every image of the training data (the build's split, and a ``--train-real`` set
when it is mixed in) and of the test set is decoded once and hashed as the curation's dedupe hashes
(``curation.hashing``): the sha256 of its decoded RGB pixels (an exact duplicate) and the 64-bit DCT
perceptual hash of it and of its mirror image (a near duplicate: the test image's hash, or its mirror's,
within ``distance`` bits of a training image's, found with ``NearIndex``). A test image is counted once:
exact when some training image has its pixels, else near when one is within the distance.

``DEFAULT_DISTANCE`` = 4 bits, measured on the real photos of ``builder.example_faces`` (8 photos): a 2/3 or
1/3 resize, a 2x upscale, JPEG at quality 40, 50 or 75 (also after halving), WebP 60 move the hash 0-4
bits, a mirror image 0 (against the mirror's hash); different photos are 22-36 bits apart. A 3-6 % crop
(8-18) or a 5 degree rotation (4-16) is mostly not caught: that needs identity embeddings (the curation's
``embedding_similarity``). 4 rather than the dedupe's 6 because this check refuses by default: every
measured re-encoding is inside it, with the widest margin to different pictures (small aligned faces are
more alike than these photos).

Hashes are cached in ``OUT/eval/cache/hashes-<key>.npz`` (plain arrays, read without pickle), keyed by the
set's identity like the face crops, and written only once the check has passed (a refused run writes
nothing under ``OUT/eval``).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.core.errors import UserError

DEFAULT_DISTANCE = 4
"""Hamming distance (bits of the 64-bit perceptual hash) up to which a test image is a near duplicate."""
EXAMPLES = 5
HASH_VERSION = 1
CHUNK = 256  # images per task of the hashing threads


@dataclass
class Hashes:
    """Per image of a set: the sha256 of its decoded pixels (32 bytes), its perceptual hash and its mirror
    image's, and whether it decoded at all (``ok``; an unreadable image is left to the face crops to count)."""

    pixels: np.ndarray  # (N, 32) uint8
    phash: np.ndarray  # (N,) uint64
    mirror: np.ndarray  # (N,) uint64
    ok: np.ndarray  # (N,) bool

    @classmethod
    def empty(cls, n: int) -> Hashes:
        return cls(np.zeros((n, 32), np.uint8), np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, bool))

    def __len__(self) -> int:
        return len(self.ok)

    def fits(self, n: int) -> bool:
        """Whether these are the arrays of ``n`` images (shapes and types), e.g. as read back from a cache file."""
        return (self.pixels.shape == (n, 32) and self.pixels.dtype == np.uint8 and self.ok.dtype == bool
                and self.phash.shape == self.mirror.shape == self.ok.shape == (n,)
                and self.phash.dtype == self.mirror.dtype == np.uint64)


def image_hashes(image) -> tuple[bytes, int, int]:
    """(pixel sha256 digest, perceptual hash, mirror image's perceptual hash) of an 8-bit RGB PIL image; the
    mirror is Pillow's (the same pixels as ``rgb[:, ::-1]``, the curation's, without a strided copy)."""
    from PIL import Image

    from curation.hashing import phash, pixel_sha256

    rgb = np.asarray(image)
    mirror = np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return bytes.fromhex(pixel_sha256(rgb)), phash(rgb), phash(mirror)


class Hasher:
    """Hashes image sets (each image decoded once, on a few threads: decoding and resizing release the GIL),
    or reads them back from ``cache_dir``; ``save()`` writes the ones it computed."""

    def __init__(self, cache_dir: Path | None, log=print, workers: int | None = None):
        self.cache_dir = cache_dir
        self.log = log
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._computed: dict[Path, Hashes] = {}

    def _path(self, imageset) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps({"set": imageset.identity, "version": HASH_VERSION}).encode()).hexdigest()
        return self.cache_dir / f"hashes-{key[:24]}.npz"

    def hashes(self, imageset) -> Hashes:
        path = self._path(imageset)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = Hashes(data["pixels"], data["phash"], data["mirror"], data["ok"])
                if cached.fits(len(imageset)):
                    return cached
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # a damaged cache file is recomputed and replaced
        self.log(f"hashing {len(imageset)} {imageset.role} images (overlap check)")
        out = Hashes.empty(len(imageset))

        def run(start: int) -> None:
            for i in range(start, min(start + CHUNK, len(imageset))):
                try:
                    image = imageset.load(i)
                except Exception:  # a broken image is not hashed; the face crops count it as unreadable
                    continue
                digest, plain, mirror = image_hashes(image)
                out.pixels[i] = np.frombuffer(digest, np.uint8)
                out.phash[i], out.mirror[i], out.ok[i] = plain, mirror, True

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(run, range(0, len(imageset), CHUNK)))
        if path is not None:
            self._computed[path] = out
        return out

    def save(self) -> None:
        """Write the hashes computed so far into the cache (``.npz`` via a temporary file and one rename)."""
        for path, h in self._computed.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, pixels=h.pixels, phash=h.phash, mirror=h.mirror, ok=h.ok)
            os.replace(tmp, path)
        self._computed.clear()


@dataclass(frozen=True)
class Source:
    """One set of training images: ``key`` ('train' or 'train_real'), its sample ids and hashes."""

    key: str
    ids: list[str]
    hashes: Hashes


def find(training: list[Source], test_ids: list[str], test: Hashes, distance: int = DEFAULT_DISTANCE,
         examples: int = EXAMPLES) -> dict:
    """The overlap of the test set with the training sets: how many test images have an exact copy among the
    training images, how many (of the others) a near copy within ``distance`` bits, and the first ``examples``
    of them (test order) with the training image each matched."""
    from curation.hashing import NearIndex

    exact: dict[bytes, tuple[int, int]] = {}
    near = NearIndex(distance)
    where: list[tuple[int, int]] = []
    for s, source in enumerate(training):
        h = source.hashes
        rows = np.flatnonzero(h.ok)
        for i, pixels, plain in zip(rows.tolist(), h.pixels[rows], h.phash[rows].tolist()):
            exact.setdefault(pixels.tobytes(), (s, i))
            near.add(plain)
            where.append((s, i))
    counts = {"exact": 0, "near": 0}
    found = []
    rows = np.flatnonzero(test.ok)
    for i, pixels, plain, mirror in zip(rows.tolist(), test.pixels[rows], test.phash[rows].tolist(),
                                        test.mirror[rows].tolist()):
        hit = exact.get(pixels.tobytes())
        if hit is not None:
            kind, dist, mirrored = "exact", 0, False  # same pixels: same perceptual hash
        else:
            hits = [(h[1], h[0], flag) for flag, value in ((False, plain), (True, mirror))
                    if (h := near.nearest(value)) is not None]
            if not hits:
                continue
            dist, pos, mirrored = min(hits)
            kind, hit = "near", where[pos]
        counts[kind] += 1
        if len(found) < examples:
            source = training[hit[0]]
            found.append({"test": test_ids[i], "training": source.ids[hit[1]], "training_set": source.key,
                          "kind": kind, "distance": int(dist), "mirrored": mirrored})
    return {"threshold": distance, **counts, "test_images": int(test.ok.sum()),
            "training_images": {s.key: int(s.hashes.ok.sum()) for s in training},
            "examples": found,
            "definition": "test images whose decoded pixels equal a training image's (exact), or whose 64-bit "
                          "perceptual hash, or its mirror image's, is within the threshold of a training image's "
                          "(near; each test image counted once)"}


def describe(report: dict, labels: dict[str, str]) -> str:
    """'2 exact and 1 near duplicates of 40 test images (...)' with the examples, for a message."""
    shown = []
    for e in report["examples"]:
        how = "same pixels" if e["kind"] == "exact" else \
            f"{e['distance']} bits{', mirror image' if e['mirrored'] else ''}"
        shown.append(f"'{e['test']}' ~ {labels[e['training_set']]} '{e['training']}' ({how})")
    return (f"{report['exact']} exact and {report['near']} near duplicate(s) (perceptual hash within "
            f"{report['threshold']} bits) among its {report['test_images']} images; e.g. " + "; ".join(shown))


def check(report: dict, allow: bool, test_option: str, test_path, labels: dict[str, str]) -> None:
    """Refuse (UserError) a test set that overlaps the training data, unless ``allow``."""
    if allow or not (report["exact"] or report["near"]):
        return
    trained = " and ".join(labels[k] for k in report["training_images"])
    raise UserError(f"{test_option} '{test_path}' overlaps the training data ({trained}): {describe(report, labels)}",
                    fix="test on images the model does not train on (remove the copies from the test set or the "
                        "training data), or pass --allow-overlap to evaluate anyway (the result and the card then "
                        "report the overlap)")
