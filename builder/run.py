"""Build a dataset from a manifest: shards through the stages, then the release.

The build folder records which manifest it belongs to (``build.json``); a
rerun with the same manifest resumes, one with a different manifest is refused.
One process at a time drives a build folder (an advisory lock that the kernel
drops if the process dies).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import OutputDirError
from .executor import LocalExecutor, ShardTask
from .manifest import Manifest
from .pipeline import global_stages, guard_warnings
from .shards import ShardStore

BUILD_FILE = "build.json"


@dataclass
class BuildResult:
    out: Path
    generated_shards: int
    released: bool
    stats: dict | None


def fingerprint(manifest: Manifest) -> str:
    """sha256 of the manifest's identity. Key order counts: the order of splits and axes changes samples."""
    return hashlib.sha256(json.dumps(manifest.identity()).encode()).hexdigest()


def build(manifest: Manifest, out: Path, executor=None, progress: bool = True, log=print) -> BuildResult:
    """Run (or resume) the build of ``manifest`` into ``out``."""
    from cards.release import is_released, release

    out = Path(out)
    _prepare_folder(out)
    with lock_build_folder(out):
        fp = _claim(out, manifest)
        store = ShardStore(out)
        if store.clean_staging():
            log("removed unfinished shard outputs of an interrupted run")
        for stage in global_stages(manifest):
            stage.preflight()
        task = ShardTask(manifest, out)
        pending = [s for s in range(manifest.num_shards()) if task.pending(s)]
        if not pending and is_released(out, fp):
            log(f"{out}: build is complete, nothing to do")
            return BuildResult(out, 0, False, json.loads((out / "stats.json").read_text()))
        if pending:
            for warning in guard_warnings(manifest):
                log(f"warning: {warning}")
            done = manifest.num_shards() - len(pending)
            log(f"{len(pending)} of {manifest.num_shards()} shards to process" + (f" ({done} already done)" if done else ""))
            (executor or LocalExecutor()).run(task, pending, progress=progress)
        stats = release(manifest, out, task.stage_names, fp, log=log)
        return BuildResult(out, len(pending), True, stats)


def _prepare_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out '{out}' is a file", fix="give a folder path for --out")
    ours = {".lock", f".{BUILD_FILE}.tmp"}  # all a run killed before build.json was written leaves
    if out.is_dir() and any(p.name not in ours for p in out.iterdir()) and not (out / BUILD_FILE).exists():
        raise OutputDirError(f"--out '{out}' is not empty and holds no build",
                             fix="give a new or empty folder for --out; nothing in this one was touched")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create --out '{out}': {exc.strerror}", fix="choose a writable folder") from None


@contextmanager
def lock_build_folder(out: Path):
    """Hold the build folder's lock (builds, releases and evaluations take it); another holder is an error."""
    fh = open(out / ".lock", "a+")
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


def _claim(out: Path, manifest: Manifest) -> str:
    """Record the manifest in ``out/build.json``, or check it matches the one there."""
    fp = fingerprint(manifest)
    path = out / BUILD_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["fingerprint"] != fp:
            changed = _diff(previous["manifest"], manifest.identity())
            raise OutputDirError(
                f"'{out}' holds a build of a different manifest (changed: {', '.join(changed[:8])})",
                fix="use a new --out folder, or delete this one to rebuild from scratch; resuming needs the same manifest",
            )
        if manifest.images is not None and "listing" not in previous:  # a build.json from before listings were recorded
            _write_build_file(out, {**previous, "listing": _listing_summary(manifest)})
        return fp
    recorded = {"fingerprint": fp, "tool_version": __version__, "manifest": manifest.identity()}
    if manifest.images is not None:
        recorded["listing"] = _listing_summary(manifest)
    _write_build_file(out, recorded)
    return fp


def _listing_summary(manifest: Manifest) -> dict:
    """What a finished build needs of its images source's listing (not the paths: the images are copied in)."""
    listing = manifest.listing
    return {"kind": listing.kind, "root": listing.root, "count": listing.count, "sha256": listing.sha256}


def _write_build_file(out: Path, recorded: dict) -> None:
    tmp = out / f".{BUILD_FILE}.tmp"
    tmp.write_text(json.dumps(recorded, indent=1))
    os.rename(tmp, out / BUILD_FILE)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        if not out and list(a) != list(b):
            out.append(f"order of the keys in {prefix or 'the manifest'}")
        return out
    return [] if a == b else [prefix or "(top level)"]


def load_build(out: Path, verify: bool = True) -> tuple[Manifest, str]:
    """The manifest a build folder was made from (rebuilt from ``build.json``) and its fingerprint.

    An images source is not listed again when ``build.json`` recorded its listing: the build folder holds
    copies of the images, so a finished build releases and reviews from any directory, and after its source
    moved. ``verify`` checks that this version of the tool gives the manifest the fingerprint it had (older
    build.json files, without the listing, also list the source again).
    """
    from .manifest import Manifest as _Manifest
    from .sources import Listing

    path = Path(out) / BUILD_FILE
    if not path.is_file():
        raise OutputDirError(f"'{out}' holds no build (no {BUILD_FILE})",
                             fix="give the --out folder of a build made with `build-dataset MANIFEST --out OUT`")
    recorded = json.loads(path.read_text())
    data = recorded["manifest"]  # freshly parsed: safe to edit
    if data.get("images"):
        data["images"].pop("listing_sha256", None)
    try:
        manifest = _Manifest.model_validate(data)
    except Exception as exc:
        raise OutputDirError(f"the manifest recorded in {path} does not load with this version of build-dataset "
                             f"({type(exc).__name__})", fix="use the version that built it "
                             f"({recorded.get('tool_version', '?')}), or rebuild") from None
    if manifest.images is not None and "listing" in recorded:
        manifest.__dict__["listing"] = Listing(**recorded["listing"])  # the cached_property's slot
    if not verify:
        return manifest, recorded["fingerprint"]
    if fingerprint(manifest) != recorded["fingerprint"]:
        if manifest.images is not None and "listing" not in recorded:
            raise OutputDirError(f"the inputs of '{out}' changed since it was built (the images source's folder or "
                                 "dataset is not what it listed)", fix="restore the source, or rebuild into a new "
                                 "--out; run from the directory the build ran in if images.folder is relative")
        raise OutputDirError(f"the manifest recorded in {path} has another fingerprint with this version of "
                             "build-dataset", fix=f"use the version that built it ({recorded.get('tool_version', '?')})"
                             ", or rebuild")
    return manifest, recorded["fingerprint"]


def release_again(out: Path, log=print) -> dict:
    """Release a finished build again (e.g. after a review), without touching its shards."""
    from cards.release import release

    out = Path(out)
    manifest, fp = load_build(out)
    with lock_build_folder(out):
        task = ShardTask(manifest, out)
        pending = [s for s in range(manifest.num_shards()) if task.pending(s)]
        if pending:
            raise OutputDirError(f"'{out}' is not finished: {len(pending)} of {manifest.num_shards()} shards to do",
                                 fix="finish it first with `build-dataset MANIFEST --out OUT` (it resumes)")
        return release(manifest, out, task.stage_names, fp, log=log)
