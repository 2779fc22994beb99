"""CPU cost of writing generated images as PNG, on 1..N writer threads (why the generate stage overlaps it).

    python bench/png_encoding.py --size 512 --images 64 --threads 1 2

Images are smooth gradients with seeded noise (a generated face's PNG size and
zlib effort are close to this); each is converted from float [0, 1] as the
generate stage does, encoded by Pillow at its default compression and written
to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def images(size: int, count: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = np.outer(ramp, ramp)[..., None] * np.array([0.8, 0.6, 0.5], dtype=np.float32)
    return [np.clip(base + rng.normal(0, 0.03, base.shape).astype(np.float32), 0, 1) for _ in range(count)]


def main(argv=None) -> dict:
    from builder.synthesis.generate import _write_png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    pixels = images(args.size, args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_png(Path(tmp) / "warm.png", pixels[0])
        for threads in args.threads:
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda a: _write_png(Path(tmp) / f"{a[0]}.png", a[1]), enumerate(pixels)))
            seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in Path(tmp).glob("[0-9]*.png")) / args.images
            rows.append({"threads": threads, "ms_per_image": round(1000 * seconds / args.images, 2),
                         "images_per_s": round(args.images / seconds, 1), "kb_per_image": round(size / 1024, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"size": args.size, "images": args.images, "runs": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
