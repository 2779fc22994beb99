"""A sample's AU targets: its class's intensities from the manifest, jittered per sample (generated and edited
samples alike)."""
from __future__ import annotations

from builder.core.seeding import SampleRng
from builder.manifest import Manifest
from builder.manifest.au_sets import AU_MAX, AU_MIN


def draw_aus(manifest: Manifest, index: int, label_name: str) -> list[float]:
    """Sample ``index``'s AU intensity vector: its class's targets (``aus.intensity``), jittered, 0 elsewhere."""
    au_rng = SampleRng(manifest.seed, index, "au")
    targets = manifest.aus.intensity.get(label_name, {})
    au = []
    for name in manifest.aus.names:
        value = targets.get(name, 0.0)
        if name in targets and manifest.aus.jitter > 0:
            value = min(AU_MAX, max(AU_MIN, value + au_rng.gauss(manifest.aus.jitter)))
        au.append(round(value, 4))
    return au
