"""A build folder's own files: the record of its manifest (``build.json``), the release marker
(``.release.json``), and the lock one process holds while it writes.

Layout (see README "Output folder")::

    build.json       fingerprint, tool version, the manifest's identity, compute threads, images listing
    .release.json    fingerprint of the build whose release is complete (written last)
    .lock            advisory lock (the kernel drops it when the process dies), holder's pid
    shards/          the resume state (``builder.core.shards``)

Every reader here turns a damaged file into an ``OutputDirError`` naming it; every writer is atomic and durable.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from builder.core.errors import OutputDirError
from builder.core.shards import write_durably

BUILD_FILE = "build.json"
MARKER = ".release.json"


def fingerprint_of(identity: dict) -> str:
    """sha256 of a manifest's identity. Key order counts: the order of splits and axes changes samples."""
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


@contextmanager
def lock_build_folder(out: Path):
    """Hold the build folder's lock (builds, releases and evaluations take it); another holder is an error."""
    fh = open(Path(out) / ".lock", "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise OutputDirError(f"another build-dataset process (pid {fh.read().strip() or '?'}) is writing to '{out}'",
                                 fix="wait for it to finish, or stop it; its finished shards are kept") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def read_build_file(out: Path) -> dict:
    """``out/build.json``, checked enough to use: missing or damaged is an ``OutputDirError`` naming it."""
    path = Path(out) / BUILD_FILE
    if not path.is_file():
        raise OutputDirError(f"'{out}' holds no build (no {BUILD_FILE})",
                             fix="give the --out folder of a build made with `build-dataset MANIFEST --out OUT`")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict) or not isinstance(recorded.get("manifest"), dict) \
                or not isinstance(recorded.get("fingerprint"), str):
            raise ValueError("it lacks 'fingerprint' or 'manifest'")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutputDirError(f"the build record is damaged ({exc})", file=str(path),
                             fix="restore build.json from a backup, or rebuild into a new --out folder; nothing was "
                                 "changed") from None
    return recorded


def write_build_file(out: Path, recorded: dict) -> None:
    """Replace ``out/build.json`` atomically and durably."""
    write_durably(Path(out) / BUILD_FILE, json.dumps(recorded, indent=1))


def has_committed_work(out: Path) -> bool:
    """True once any shard of any stage, or a release, was committed in ``out``."""
    out = Path(out)
    return (out / MARKER).exists() or any((out / "shards").glob("*/[0-9]*/stats.json"))


def is_released(out: Path, fingerprint: str) -> bool:
    """True when ``out`` holds a complete release of the build ``fingerprint`` (a damaged marker: not)."""
    try:
        return json.loads((Path(out) / MARKER).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def write_marker(out: Path, fingerprint: str, shards: int) -> None:
    """Say that ``out`` holds a complete release of the build ``fingerprint`` (the release's last write)."""
    write_durably(Path(out) / MARKER, json.dumps({"fingerprint": fingerprint, "shards": shards}) + "\n")


def require_release(out: Path, fingerprint: str | None = None) -> None:
    """Refuse a folder without a complete release (of ``fingerprint``, when given)."""
    out = Path(out)
    if not (out / MARKER).is_file() or (fingerprint is not None and not is_released(out, fingerprint)):
        raise OutputDirError(f"'{out}' holds no complete release (no valid {MARKER})", file=str(out),
                             fix=f"run `build-dataset MANIFEST --out {out}` (it resumes and releases), or "
                                 f"`build-dataset release {out}`")
