"""What bad-input cases build on: a finished demo build (made once per session, copied per case)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Env:
    """Shared, expensive inputs of the corpus. ``demo_build(dest)`` copies a finished build of
    manifests/demo.yaml to ``dest`` and returns it."""

    cache: Path

    def demo_build(self, dest: Path) -> Path:
        source = self.cache / "demo"
        if not (source / ".release.json").is_file():
            from builder.cli import main

            if main([str(ROOT / "manifests" / "demo.yaml"), "--out", str(source), "--no-progress"]) != 0:
                raise RuntimeError("the demo build failed")
        shutil.copytree(source, dest, symlinks=True)
        return dest
