"""Where the tool keeps what it builds or downloads."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The tool's cache (``FER_SYNTH_HOME``, default ``~/.cache/fer-synth``): built models, fetched files."""
    return Path(os.environ.get("FER_SYNTH_HOME") or Path.home() / ".cache" / "fer-synth")


def confined(folder: Path, relative: str, field: str, file: str | Path) -> Path:
    """``folder / relative``, refused (``UserError``) unless it stays inside ``folder`` once links are resolved.

    For paths read from a file (a config names its weights, a record its image): a file someone else made
    must not make the tool read or write outside its own folder (``../``, absolute paths, links out).
    """
    from builder.core.errors import UserError

    folder = Path(folder)
    target = folder / relative
    try:
        inside = target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if Path(relative).is_absolute() or not inside:
        raise UserError(f"field '{field}' points outside {folder}/ ('{relative}')", file=str(file),
                        fix=f"put the file inside {folder}/ and give its path relative to it")
    return target


def record_file(root: Path, stored: str) -> Path:
    """The file a record of the build folder ``root`` names (``record.image``), refused when it leaves ``root``:
    a build folder someone handed you must not make a release read (and publish) files from elsewhere."""
    from builder.core.errors import OutputDirError

    root = Path(root)
    path = root / stored
    try:
        inside = not Path(stored).is_absolute() and path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise OutputDirError(f"a record names the file '{stored}', which is outside the build folder",
                             file=str(root), fix="this build folder was altered; rebuild it from its manifest with "
                             "`build-dataset MANIFEST --out NEW_FOLDER`")
    return path
