"""Where the tool keeps what it builds or downloads."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The tool's cache (``FER_SYNTH_HOME``, default ``~/.cache/fer-synth``): built models, fetched files."""
    return Path(os.environ.get("FER_SYNTH_HOME") or Path.home() / ".cache" / "fer-synth")
