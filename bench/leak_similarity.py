"""Genuine and impostor similarities of the dlib embedder on the real photos available offline, and timings.

    .venv/bin/python bench/leak_similarity.py [--min-size 40]

People: the six faces of insightface's group photo (cropped around MTCNN boxes
as ``builder.example_faces`` does), its portrait, and skimage's astronaut.
Genuine: each person's original against four near copies (2/3 resize, JPEG
quality 40, horizontal flip, a 3-6 % crop). Impostor: every pair of different
people (originals). Prints per-augmentation ranges, the impostor range, a
threshold calibrated on all these pairs at FMR 0, and the time per face of
MTCNN and of the embedder (median over the originals).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-size", type=float, default=40)
    args = p.parse_args()
    from builder.example_faces import example_faces, near_copy
    from curation.faces.detect import find_face
    from curation.identity.calibrate import pick_threshold
    from curation.identity.embedders import load_embedder
    from curation.identity.images import load_detector

    detector, policy = load_detector(0.9, args.min_size)
    embedder = load_embedder("dlib")
    photos = example_faces()
    detect_s, embed_s = [], []

    def embed(image) -> np.ndarray | None:
        rgb = np.asarray(image)
        started = time.perf_counter()
        face = find_face(detector, policy, rgb)
        detect_s.append(time.perf_counter() - started)
        if face is None:
            return None
        started = time.perf_counter()
        vector = embedder.embed(rgb, face)
        embed_s.append(time.perf_counter() - started)
        return vector

    originals = {name: embed(img) for name, img in photos.items()}
    timings = (float(np.median(detect_s)), float(np.median(embed_s)))
    genuine = {kind: {} for kind in ("resize", "jpeg", "flip", "crop")}
    for kind, name in itertools.product(genuine, photos):
        vector = embed(near_copy(photos[name], kind))
        genuine[kind][name] = None if vector is None else float(vector @ originals[name])
    impostor = {(a, b): float(originals[a] @ originals[b]) for a, b in itertools.combinations(photos, 2)}

    print(f"dlib, faces min_score 0.9 min_size {args.min_size:g}; {len(photos)} people")
    for kind, sims in genuine.items():
        found = [v for v in sims.values() if v is not None]
        lowest = min(sims, key=lambda n: sims[n] if sims[n] is not None else 2)
        print(f"genuine {kind:6s}: {min(found):.4f}-{max(found):.4f} (lowest {lowest}); no face: "
              f"{[n for n, v in sims.items() if v is None] or 'none'}")
    top = max(impostor, key=impostor.get)
    print(f"impostor: {min(impostor.values()):.4f}-{max(impostor.values()):.4f} (highest {top[0]}-{top[1]}), "
          f"{len(impostor)} pairs")
    sims = [v for s in genuine.values() for v in s.values() if v is not None] + list(impostor.values())
    same = [True] * (len(sims) - len(impostor)) + [False] * len(impostor)
    cal = pick_threshold(sims, same, 0.0)
    print(f"calibrated at FMR 0: threshold {cal.threshold:.4f}, TAR {cal.tar:.3f} "
          f"({cal.genuine_pairs} genuine, {cal.impostor_pairs} impostor pairs)")
    print(f"median seconds per image: MTCNN {timings[0]:.3f}, dlib embedding {timings[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
