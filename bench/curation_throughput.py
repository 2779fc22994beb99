"""CPU curation throughput and peak memory against dataset size: dedupe hashing, near search, dataset writing.

    .venv/bin/python bench/curation_throughput.py [--sizes 1000 4000 16000] [--out bench/curation.json]

Images: N distinct 128x128 PNG face crops made from the offline example photos
(``builder.example_faces``) by a seeded random crop, scale and brightness, so
perceptual hashes spread like real near-duplicate-free data. For each N, in
its own subprocess (peak RSS is that size's alone), it times what the
whole-set stages and the release do per image on the CPU:

- ``hash``: read, decode, pixel sha256, 64-bit pHash and the mirror's pHash
  (``curation.whole_set.dedupe._hash``, the dedupe stage's per-image work);
- ``near``: the dedupe pass over the hashes (``NearIndex`` query and insert);
- ``write``: the release's dataset writing (``cards.dataset`` features, an
  Arrow dataset through an on-disk cache, ``save_to_disk`` and parquet).

Memory: peak RSS (``ru_maxrss``) counts the Arrow files' memory-mapped pages,
which the kernel can drop; anonymous RSS (``RssAnon``, the heap) after each
step is what the process itself holds.

The leak gate's search (1M references, FAISS IVF) is measured by
``bench/leak_index.py``; its figures are combined with these in RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(n: int, folder: Path, seed: int = 0) -> list[Path]:
    from PIL import Image, ImageEnhance

    from builder.example_faces import example_faces

    photos = list(example_faces().values())
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.4, 0.95))
        x, y = int(rng.uniform(0, w - side)), int(rng.uniform(0, h - side))
        image = photo.crop((x, y, x + side, y + side)).resize((128, 128), Image.Resampling.BILINEAR)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        path = folder / f"{i:06d}.png"
        image.save(path)
        paths.append(path)
    return paths


def rss_anon_mb() -> float:
    """Anonymous resident memory now (heap, not the file pages Arrow memory-maps, which the kernel can drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_size(n: int) -> dict:
    from builder.core.records import Record
    from builder.manifest.loader import load_manifest
    from cards.dataset import build_dataset_dict
    from curation.hashing import NearIndex
    from curation.whole_set.dedupe import _hash, _nearest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = make_images(n, root / "img")
        made = time.perf_counter() - started
        records = [Record(sample_id=f"b-{i:07d}", index=i, label=i % 7, label_name="", au=[0.0] * 12,
                          attributes={}, prompt="p", negative_prompt="", seed=i,
                          image=p.relative_to(root).as_posix()) for i, p in enumerate(paths)]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        anon_before = rss_anon_mb()

        t = time.perf_counter()
        hashes = [_hash(r, root) for r in records]
        hash_s = time.perf_counter() - t
        anon = {"after_hash": rss_anon_mb()}

        t = time.perf_counter()
        index, dropped = NearIndex(6), 0
        for h in hashes:
            if _nearest(index, h) is not None:
                dropped += 1
            else:
                index.add(h.phash)
        near_s = time.perf_counter() - t
        anon["after_near"] = rss_anon_mb()

        manifest = load_manifest(ROOT / "manifests" / "demo.yaml")
        manifest = manifest.model_copy(update={"prompts": manifest.prompts.model_copy(update={"axes": {}})})
        provenance = {"model": "bench", "revision": "bench", "weights_sha256": "0" * 64}
        t = time.perf_counter()
        dataset = build_dataset_dict({"train": records}, manifest, provenance, root, root / "arrow-cache")
        dataset.save_to_disk(str(root / "hf"))
        dataset["train"].to_parquet(str(root / "train.parquet"))
        write_s = time.perf_counter() - t
        anon["after_write"] = rss_anon_mb()
        return {"n": n, "make_images_s": round(made, 2), "near_duplicates_found": dropped,
                "hash_img_per_s": round(n / hash_s, 1), "near_img_per_s": round(n / near_s, 1),
                "write_img_per_s": round(n / write_s, 1),
                "all_three_img_per_s": round(n / (hash_s + near_s + write_s), 1),
                "peak_rss_mb_before_curation": round(rss_before / 1024, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_anon_mb": anon, "rss_anon_mb_before_curation": anon_before}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--out", type=Path)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess for one size
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one)))
        return 0
    rows = []
    for n in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
