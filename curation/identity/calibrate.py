"""Leak threshold from verification pairs: the smallest cosine similarity whose false-match rate meets a target.

Pairs come from a CSV or JSONL file (``image_a``, ``image_b``, ``same``; paths
relative to the file) or from a folder laid out ``person/*.jpg``: every pair
within a person is genuine, and a seeded sample of pairs across people are
impostors. Each image is embedded once with the index's embedder; a pair with
an image without a face is left out and counted. A pair is a match when its
similarity is >= the threshold; the threshold is the smallest value at which
the share of impostor pairs that match is <= the target false-match rate (FMR),
and the true-accept rate (TAR) is the share of genuine pairs that match there.
"""
from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from builder.core.errors import UserError
from builder.core.paths import confined

HIST_BINS = np.round(np.linspace(-1.0, 1.0, 41), 4)  # 40 bins of 0.05 over the cosine range
IMPOSTOR_SAMPLE = 10_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Calibration:
    """A threshold picked at a target FMR, with what it achieves on the pairs and both histograms."""

    threshold: float
    target_fmr: float
    fmr: float
    tar: float | None
    genuine_pairs: int
    impostor_pairs: int
    false_matches: int
    true_matches: int
    histogram: dict

    def as_dict(self) -> dict:
        return asdict(self)


def histogram(values: Sequence[float]) -> list[int]:
    """Counts of ``values`` in the fixed 40 bins over [-1, 1] (``HIST_BINS`` are the edges)."""
    counts, _ = np.histogram(np.clip(np.asarray(values, np.float64), -1, 1), bins=HIST_BINS)
    return counts.astype(int).tolist()


def pick_threshold(similarities: Sequence[float], same: Sequence[bool], target_fmr: float) -> Calibration:
    """The smallest threshold t with #(impostor similarity >= t) / #impostors <= ``target_fmr``."""
    sims = np.asarray(similarities, np.float64)
    same = np.asarray(same, bool)
    if sims.shape != same.shape:
        raise ValueError("similarities and labels differ in length")
    if not 0 <= target_fmr < 1:
        raise ValueError("target false-match rate must be in [0, 1)")
    impostor, genuine = np.sort(sims[~same])[::-1], sims[same]
    if len(impostor) == 0:
        raise UserError("the verification pairs hold no impostor pair (two different people)",
                        fix="add pairs of different people (same: false), or folders of two or more people")
    allowed = int(np.floor(target_fmr * len(impostor) + 1e-9))
    if allowed >= len(impostor):
        threshold = -1.0
    else:
        threshold = float(np.nextafter(impostor[allowed], np.inf))  # just above the first impostor not allowed
    false = int(np.sum(impostor >= threshold))
    true = int(np.sum(genuine >= threshold))
    return Calibration(threshold=threshold, target_fmr=float(target_fmr), fmr=false / len(impostor),
                       tar=true / len(genuine) if len(genuine) else None, genuine_pairs=int(len(genuine)),
                       impostor_pairs=int(len(impostor)), false_matches=false, true_matches=true,
                       histogram={"edges": HIST_BINS.tolist(), "genuine": histogram(genuine),
                                  "impostor": histogram(impostor)})


def read_pairs(path: str | Path, seed: int = 0, impostors: int = IMPOSTOR_SAMPLE) -> list[tuple[Path, Path, bool]]:
    """(image_a, image_b, same) from a CSV/JSONL pairs file or a ``person/*.jpg`` folder (see module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _folder_pairs(path, seed, impostors)
    if not path.is_file():
        raise UserError("verification pairs not found", file=str(path),
                        fix="give a CSV/JSONL of image_a, image_b, same, or a folder with one sub-folder per person")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise UserError("unsupported pairs file type", file=str(path), fix="use .csv or .jsonl")
    out = []
    for n, row in enumerate(rows, start=1):
        try:
            same = _truth(row["same"])
            out.append((confined(path.parent, str(row["image_a"]), f"image_a (pair {n})", path),
                        confined(path.parent, str(row["image_b"]), f"image_b (pair {n})", path), same))
        except (KeyError, ValueError) as exc:
            raise UserError(f"pair {n}: {type(exc).__name__}: {exc}", file=str(path),
                            fix="each pair needs image_a, image_b and same (true/false)") from None
    return out


def _truth(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "same"):
        return True
    if text in ("0", "false", "no", "different"):
        return False
    raise ValueError(f"'same' must be true or false, got {value!r}")


def _folder_pairs(root: Path, seed: int, impostors: int) -> list[tuple[Path, Path, bool]]:
    people = {p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
              for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    people = {k: v for k, v in people.items() if v}
    if len(people) < 2:
        raise UserError("a pairs folder needs sub-folders of at least two people", file=str(root),
                        fix="lay it out as person/*.jpg, one sub-folder per person")
    genuine = [(a, b, True) for files in people.values() for a, b in itertools.combinations(files, 2)]
    names = list(people)
    cross = [(a, b) for i, j in itertools.combinations(range(len(names)), 2)
             for a in people[names[i]] for b in people[names[j]]]
    if len(cross) > impostors:
        picks = np.sort(np.random.default_rng(seed).choice(len(cross), impostors, replace=False))
        cross = [cross[k] for k in picks]
    return genuine + [(a, b, False) for a, b in cross]


def embed_images(paths, embedder, detector, policy) -> dict[Path, np.ndarray | None]:
    """Each distinct image's embedding (None: unreadable or no face)."""
    from curation.faces.detect import find_face
    from curation.identity.images import decode_rgb

    out = {}
    for path in dict.fromkeys(paths):
        try:
            image = decode_rgb(Path(path).read_bytes())
            face = find_face(detector, policy, image)
            out[path] = None if face is None else embedder.embed(image, face)
        except Exception:  # an unusable image only removes its pairs (counted by the caller)
            out[path] = None
    return out


def calibrate(pairs_source: str | Path, embedder, detector, policy, target_fmr: float, seed: int = 0) -> dict:
    """Embed the pairs' images, pick the threshold; the result plus the pairs left out and the images without a
    usable face (unreadable, or no face)."""
    pairs = read_pairs(pairs_source, seed)
    vectors = embed_images([p for a, b, _ in pairs for p in (a, b)], embedder, detector, policy)
    usable = [(vectors[a], vectors[b], same) for a, b, same in pairs
              if vectors[a] is not None and vectors[b] is not None]
    sims = [float(np.dot(a, b)) for a, b, _ in usable]
    result = pick_threshold(sims, [same for _, _, same in usable], target_fmr).as_dict()
    result.update(pairs_source=str(pairs_source), pairs_left_out=len(pairs) - len(usable),
                  images_unusable=sum(v is None for v in vectors.values()))
    return result
