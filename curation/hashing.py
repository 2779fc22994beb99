"""Image fingerprints for duplicate detection: a pixel hash (exact) and a 64-bit DCT perceptual hash (near).

``pixel_sha256`` hashes the decoded RGB pixels and the size, so the same picture
saved as PNG and as a lossless WebP is one exact duplicate. ``phash`` is the
classic DCT hash: grey, 32x32, 2-D DCT, the 8x8 lowest frequencies compared to
their median (DC excluded from the median); resizing and recompression move it
by a few bits, a different picture by about 32.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

HASH_BITS = 64


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


def pixel_sha256(rgb: np.ndarray) -> str:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return hashlib.sha256(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()


def phash(rgb: np.ndarray) -> int:
    """64-bit perceptual hash of an RGB uint8 image."""
    from PIL import Image

    grey = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    d = _dct_matrix()
    coeffs = d @ np.asarray(grey, dtype=np.float64) @ d.T
    low = coeffs[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearIndex:
    """Hashes within Hamming distance ``radius`` of a query, found by pigeonhole blocks (multi-index hashing).

    The 64 bits are cut into ``radius + 1`` blocks: two hashes within ``radius``
    bits agree exactly on at least one block, so only hashes sharing a block
    value are compared.
    """

    def __init__(self, radius: int):
        self.radius = radius
        blocks = radius + 1
        edges = [round(i * HASH_BITS / blocks) for i in range(blocks + 1)]
        self._spans = list(zip(edges[:-1], edges[1:]))
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._spans]
        self._hashes: list[int] = []

    def _keys(self, h: int):
        for (lo, hi), table in zip(self._spans, self._tables):
            yield table, (h >> lo) & ((1 << (hi - lo)) - 1)

    def add(self, h: int) -> int:
        """Add a hash; return its position."""
        pos = len(self._hashes)
        self._hashes.append(h)
        for table, key in self._keys(h):
            table.setdefault(key, []).append(pos)
        return pos

    def nearest(self, h: int) -> tuple[int, int] | None:
        """(position, distance) of the closest added hash within the radius (ties: earliest), or None."""
        best = None
        seen: set[int] = set()
        for table, key in self._keys(h):
            for pos in table.get(key, ()):
                if pos in seen:
                    continue
                seen.add(pos)
                dist = hamming(h, self._hashes[pos])
                if dist <= self.radius and (best is None or (dist, pos) < best[::-1]):
                    best = (pos, dist)
        return best
