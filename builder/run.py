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
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .errors import OutputDirError
from .executor import LocalExecutor, ShardTask
from .manifest import Manifest
from .options import RunOptions, default_threads, threads_applied
from .pipeline import global_stages, guard_warnings
from .shards import ShardStore, write_durably
from .sources import refuse_out_in_source

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


def build(manifest: Manifest, out: Path, executor=None, progress: bool = True, log=print,
          options: RunOptions | None = None, allow_empty: bool = False) -> BuildResult:
    """Run (or resume) the build of ``manifest`` into ``out``; ``allow_empty`` releases even when every sample
    was dropped (otherwise an ``EmptyReleaseError`` with the funnel)."""
    from .references import require_references

    require_references(manifest, bool(options and options.trust_remote_code), file=f"manifest '{manifest.name}'")
    out = Path(out)
    options = options or RunOptions()
    refuse_out_in_source(manifest, out)
    _prepare_folder(out)
    with lock_build_folder(out):
        fp, threads = _claim(out, manifest, options.threads, log)
        with threads_applied(threads):
            return _run(manifest, out, executor, progress, log, replace(options, threads=threads), allow_empty, fp)


def _run(manifest: Manifest, out: Path, executor, progress: bool, log, options: RunOptions, allow_empty: bool,
         fp: str) -> BuildResult:
    """The locked part of ``build``: shards, then the release."""
    from cards.release import clean_release_leftovers, is_released, release

    store = ShardStore(out)
    if store.clean_staging():
        log("removed unfinished shard outputs of an interrupted run")
    clean_release_leftovers(out)
    for stage in global_stages(manifest):
        stage.preflight()
    task = ShardTask(manifest, out, options=options)
    _redo_shards_missing_images(task, log)
    pending = [s for s in range(manifest.num_shards()) if task.pending(s)]
    if not pending and is_released(out, fp) and (stats := _read_stats(out)) is not None:
        log(f"{out}: build is complete, nothing to do")
        return BuildResult(out, 0, False, stats)
    if pending:
        for warning in guard_warnings(manifest):
            log(f"warning: {warning}")
        done = manifest.num_shards() - len(pending)
        log(f"{len(pending)} of {manifest.num_shards()} shards to process" + (f" ({done} already done)" if done else ""))
        (executor or LocalExecutor()).run(task, pending, progress=progress)
    stats = release(manifest, out, task.stage_names, fp, log=log, allow_empty=allow_empty)
    return BuildResult(out, len(pending), True, stats)


def _read_stats(out: Path) -> dict | None:
    """The release's stats.json, or None when it is missing or damaged (the release is then redone)."""
    try:
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _lost_images(task: ShardTask) -> dict[int, list[str]]:
    """Finished shards whose kept records name image files that are gone (deleted by hand, a bad disk)."""
    from cards.release import missing_images

    done = [s for s in range(task.manifest.num_shards()) if not task.pending(s)]
    return missing_images(ShardStore(task.root), task.stage_names[-1], done)


def _redo_shards_missing_images(task: ShardTask, log) -> None:
    """Discard finished shards that lost image files, so this run makes them again (deterministically)."""
    lost = _lost_images(task)
    store = ShardStore(task.root)
    for shard, gone in lost.items():
        log(f"shard {shard}: {len(gone)} image file(s) of a finished shard are missing (e.g. {gone[0]}); redoing it")
        store.discard(shard)


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


def _claim(out: Path, manifest: Manifest, threads: int | None, log=print) -> tuple[str, int]:
    """Record the manifest in ``out/build.json``, or check it matches the one there; return the fingerprint and
    the compute threads this run uses (``threads``, else the ones recorded, else this machine's default).

    A build.json whose run committed nothing (no shard, no release: it failed at once) is replaced by the new
    manifest, so fixing a manifest after a failed first run does not need a new folder.
    """
    fp = fingerprint(manifest)
    path = out / BUILD_FILE
    previous = read_build_file(out) if path.exists() else None
    if previous is not None and previous["fingerprint"] != fp and not _has_committed_work(out):
        log(f"{out}: replacing the record of an earlier run that committed nothing (its manifest differed)")
        previous = None
    if previous is not None:
        if previous["fingerprint"] != fp:
            changed = _diff(previous["manifest"], manifest.identity())
            raise OutputDirError(
                f"'{out}' holds a build of a different manifest (changed: {', '.join(changed[:8])})",
                fix="use a new --out folder, or delete this one to rebuild from scratch; resuming needs the same manifest",
            )
        recorded_threads = previous.get("threads")
        if threads is not None and recorded_threads is not None and threads != recorded_threads:
            log(f"warning: --threads {threads} differs from the {recorded_threads} threads this build started with: "
                "on a CPU, new images may differ from an uninterrupted build by float rounding")
        use = threads or recorded_threads or default_threads()
        updates = {}
        if manifest.images is not None and "listing" not in previous:  # a build.json from before listings were recorded
            updates["listing"] = _listing_summary(manifest)
        if recorded_threads is None:  # a build.json from before threads were recorded
            updates["threads"] = use
        if updates:
            _write_build_file(out, {**previous, **updates})
        return fp, use
    use = threads or default_threads()
    recorded = {"fingerprint": fp, "tool_version": __version__, "manifest": manifest.identity(), "threads": use}
    if manifest.images is not None:
        recorded["listing"] = _listing_summary(manifest)
    _write_build_file(out, recorded)
    return fp, use


def _has_committed_work(out: Path) -> bool:
    """True once any shard of any stage, or a release, was committed in ``out``."""
    from cards.release import MARKER

    return (out / MARKER).exists() or any((out / "shards").glob("*/[0-9]*/stats.json"))


def read_build_file(out: Path) -> dict:
    """``out/build.json``, checked enough to use: a damaged file is a ``OutputDirError`` naming it."""
    path = Path(out) / BUILD_FILE
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


def _listing_summary(manifest: Manifest) -> dict:
    """What a finished build needs of its images source's listing (not the paths: the images are copied in)."""
    listing = manifest.listing
    return {"kind": listing.kind, "root": listing.root, "count": listing.count, "sha256": listing.sha256}


def _write_build_file(out: Path, recorded: dict) -> None:
    write_durably(out / BUILD_FILE, json.dumps(recorded, indent=1))


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
    recorded = read_build_file(out)
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


def release_again(out: Path, log=print, review=None, allow_empty: bool = False) -> dict:
    """Release a finished build again (e.g. after a review), without touching its shards.

    ``review(manifest)`` runs under the build's lock, after every check passed and before the release: it
    validates and writes the review decisions, so a refused release writes nothing.
    """
    from cards.release import clean_release_leftovers, release

    out = Path(out)
    manifest, fp = load_build(out)
    with lock_build_folder(out), threads_applied(read_build_file(out).get("threads")):
        task = ShardTask(manifest, out)
        pending = [s for s in range(manifest.num_shards()) if task.pending(s)]
        if pending:
            raise OutputDirError(f"'{out}' is not finished: {len(pending)} of {manifest.num_shards()} shards to do",
                                 fix="finish it first with `build-dataset MANIFEST --out OUT` (it resumes)")
        lost = _lost_images(task)
        if lost:
            gone = next(iter(lost.values()))
            raise OutputDirError(f"{sum(map(len, lost.values()))} image file(s) of finished shards are gone "
                                 f"(shards {', '.join(map(str, lost))}; e.g. {gone[0]})", file=str(out),
                                 fix="run `build-dataset MANIFEST --out OUT` to make those shards again (the rest is "
                                 "kept), then release again")
        if review is not None:
            review(manifest)
        clean_release_leftovers(out)
        return release(manifest, out, task.stage_names, fp, log=log, allow_empty=allow_empty)
