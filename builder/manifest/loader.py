"""Read a manifest file (``builder.core.config`` does the reading; this module gives it the manifest model)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from builder.core.config import load_config, parse_config
from builder.manifest.root import Manifest


def load_manifest(path: str | Path, model: type[BaseModel] = Manifest):
    """Parse and validate ``path`` (a manifest by default); ``ManifestError`` naming the file, field and fix.
    An images source is not listed here: ``builder.expand.images.listed`` does that."""
    return load_config(path, model)


def parse_manifest(text: str, source: str = "<manifest>", model: type[BaseModel] = Manifest):
    """Parse and validate manifest text (from ``source``, for messages)."""
    return parse_config(text, source, model)
