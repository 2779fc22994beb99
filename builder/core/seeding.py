"""Counter-based randomness: every draw is a pure function of (seed, index, stream).

Nothing here depends on shard size, worker count or the order samples are
processed in, and only ``random.Random.random()`` is used, whose sequence
Python guarantees across versions.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence

SEED_BITS = 63  # torch.Generator.manual_seed takes a signed 64-bit seed


def derive_seed(global_seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for one sample and one purpose (``stream``)."""
    digest = hashlib.blake2b(f"{global_seed}/{index}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << SEED_BITS) - 1)


class SampleRng:
    """Deterministic draws for one sample."""

    def __init__(self, global_seed: int, index: int, stream: str):
        self._rng = random.Random(derive_seed(global_seed, index, stream))

    def uniform(self) -> float:
        return self._rng.random()

    def choice(self, values: Sequence[str], weights: Sequence[float] | None = None) -> str:
        if weights is None:
            return values[min(int(self.uniform() * len(values)), len(values) - 1)]
        cumulative = []
        total = 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        return values[min(bisect.bisect_right(cumulative, self.uniform() * total), len(values) - 1)]

    def gauss(self, sigma: float) -> float:
        """Normal(0, sigma) by Box-Muller from two uniforms."""
        u1, u2 = self.uniform(), self.uniform()
        return sigma * math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)
