"""Build a dataset from a manifest: the shards through their stages, then the whole-set stages and the release.

One runner for both kinds of stage: the executors run the shard stages (``builder.core.executor``), then
``release`` runs the whole-set stages (``builder.core.shards.run_global_stage``) over every kept record and
has ``cards.release`` write the outputs. The build folder records which manifest it belongs to
(``build.json``); a rerun with the same manifest resumes, one with a different manifest is refused. One
process at a time drives a build folder (``builder.core.build_folder.lock_build_folder``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from builder.core.build_folder import (
    BUILD_FILE,
    fingerprint_of,
    has_committed_work,
    is_released,
    lock_build_folder,
    read_build_file,
    write_build_file,
)
from builder.core.errors import OutputDirError, is_storage_fault, storage_error
from builder.core.executor import LocalExecutor, ShardTask
from builder.core.options import RunOptions, default_threads, threads_applied
from builder.core.shards import ShardStore, run_global_stage
from builder.core.version import __version__
from builder.expand.images import listed, refuse_out_in_source
from builder.manifest import Manifest
from builder.manifest.recorded import recorded_manifest
from builder.pipeline import Pipeline, guard_warnings


@dataclass
class BuildResult:
    """What ``build`` did: shards processed this run, whether it released, and the release's stats."""

    out: Path
    generated_shards: int
    released: bool
    stats: dict | None


def fingerprint(manifest: Manifest) -> str:
    """sha256 of the manifest's identity (its images listing included). Key order counts: the order of splits
    and axes changes samples."""
    return fingerprint_of(listed(manifest).identity())


def build(manifest: Manifest, out: Path, executor=None, progress: bool = True, log=print,
          options: RunOptions | None = None, allow_empty: bool = False) -> BuildResult:
    """Run (or resume) the build of ``manifest`` into ``out``; ``allow_empty`` releases even when every sample
    was dropped (otherwise an ``EmptyReleaseError`` with the funnel)."""
    from builder.references import require_references

    options = options or RunOptions()
    manifest = listed(manifest)
    require_references(manifest, options.trust_remote_code, file=f"manifest '{manifest.name}'")
    out = Path(out)
    refuse_out_in_source(manifest, out)
    _prepare_folder(out)
    with lock_build_folder(out):
        fp, threads = _claim(out, manifest, options.threads, log)
        with threads_applied(threads):
            return _run(Pipeline(manifest), out, executor, progress, log, replace(options, threads=threads),
                        allow_empty, fp)


def _run(pipeline: Pipeline, out: Path, executor, progress: bool, log, options: RunOptions, allow_empty: bool,
         fp: str) -> BuildResult:
    """The locked part of ``build``: shards, then the release."""
    from cards.release import clean_release_leftovers

    manifest = pipeline.manifest
    store = ShardStore(out)
    if store.clean_staging():
        log("removed unfinished shard outputs of an interrupted run")
    clean_release_leftovers(out)
    for stage in pipeline.global_stages(out):
        stage.preflight()
    task = ShardTask(pipeline, out, options=options)
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
    stats = release(pipeline, out, fp, log=log, allow_empty=allow_empty)
    return BuildResult(out, len(pending), True, stats)


def release(pipeline: Pipeline, out: Path, fp: str, log=print, allow_empty: bool = False) -> dict:
    """Run the whole-set stages over every record the shards kept and write the release (the caller holds the
    lock and every shard is done). A failure leaves the previous release as it was; a full disk is a
    ``StorageError``."""
    from cards.release import (
        EmptyReleaseError,
        funnel,
        prepare_staging,
        swap_in,
        write_release,
        write_shard_rejects,
    )

    started = time.perf_counter()
    manifest, stages = pipeline.manifest, pipeline.stage_names
    store, shards = ShardStore(out), range(manifest.num_shards())
    staging = prepare_staging(out)
    try:
        kept = [record for shard in shards for record in store.kept(stages[-1], shard)]
        write_shard_rejects(store, stages, shards, staging)
        labelled, totals = kept, {}
        for stage in pipeline.global_stages(out):
            kept, totals[stage.name] = run_global_stage(stage, kept, out, staging / "rejected" / f"{stage.name}.jsonl")
        if not kept and not allow_empty:
            raise EmptyReleaseError(out, funnel(store, stages, shards, totals))
        stats = write_release(manifest, out, staging, stages, kept, labelled, totals, fp, started,
                              pipeline.columns(out), log)
    except BaseException as exc:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if is_storage_fault(exc):
            raise storage_error(exc, out) from None
        raise
    swap_in(out, staging, fp, manifest.num_shards())
    return stats


def release_again(out: Path, log=print, review=None, allow_empty: bool = False) -> dict:
    """Release a finished build again (e.g. after a review), without touching its shards.

    ``review(manifest)`` runs under the build's lock, after every check passed and before the release: it
    validates and writes the review decisions, so a refused release writes nothing.
    """
    from cards.release import clean_release_leftovers

    out = Path(out)
    manifest, fp = load_build(out)
    with lock_build_folder(out), threads_applied(read_build_file(out).get("threads")):
        pipeline = Pipeline(manifest)
        task = ShardTask(pipeline, out)
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
        return release(pipeline, out, fp, log=log, allow_empty=allow_empty)


def load_build(out: Path, verify: bool = True) -> tuple[Manifest, str]:
    """The (listed) manifest a build folder was made from and its fingerprint (``recorded_manifest``).

    ``verify`` checks that this version of the tool gives the manifest the fingerprint it had (a build.json
    from before listings were recorded lists the source again).
    """
    manifest, recorded_fp, recorded = recorded_manifest(out)
    if not verify:
        return listed(manifest), recorded_fp
    if fingerprint(manifest) != recorded_fp:
        if manifest.images is not None and "listing" not in recorded:
            raise OutputDirError(f"the inputs of '{out}' changed since it was built (the images source's folder or "
                                 "dataset is not what it listed)", fix="restore the source, or rebuild into a new "
                                 "--out; run from the directory the build ran in if images.folder is relative")
        raise OutputDirError(f"the manifest recorded in {Path(out) / BUILD_FILE} has another fingerprint with this "
                             "version of build-dataset", fix=f"use the version that built it "
                             f"({recorded.get('tool_version', '?')}), or rebuild")
    return listed(manifest), recorded_fp


def _read_stats(out: Path) -> dict | None:
    """The release's stats.json, or None when it is missing or damaged (the release is then redone)."""
    try:
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _lost_images(task: ShardTask) -> dict[int, list[str]]:
    """Finished shards whose kept records name image files that are gone (deleted by hand, a bad disk)."""
    store = ShardStore(task.root)
    done = [s for s in range(task.plan.num_shards()) if not task.pending(s)]
    return {s: gone for s in done if (gone := store.missing_images(task.stage_names[-1], s))}


def _redo_shards_missing_images(task: ShardTask, log) -> None:
    """Discard finished shards that lost image files, so this run makes them again (deterministically)."""
    store = ShardStore(task.root)
    for shard, gone in _lost_images(task).items():
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


def _claim(out: Path, manifest: Manifest, threads: int | None, log=print) -> tuple[str, int]:
    """Record the manifest in ``out/build.json``, or check it matches the one there; return the fingerprint and
    the compute threads this run uses (``threads``, else the ones recorded, else this machine's default).

    A build.json whose run committed nothing (no shard, no release: it failed at once) is replaced by the new
    manifest, so fixing a manifest after a failed first run does not need a new folder.
    """
    fp = fingerprint(manifest)
    previous = read_build_file(out) if (out / BUILD_FILE).exists() else None
    if previous is not None and previous["fingerprint"] != fp and not has_committed_work(out):
        log(f"{out}: replacing the record of an earlier run that committed nothing (its manifest differed)")
        previous = None
    if previous is None:
        use = threads or default_threads()
        recorded = {"fingerprint": fp, "tool_version": __version__, "manifest": manifest.identity(), "threads": use}
        if manifest.collection is not None:
            recorded["listing"] = manifest.listing.summary()
        write_build_file(out, recorded)
        return fp, use
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
    if manifest.collection is not None and "listing" not in previous:  # a build.json from before listings were recorded
        updates["listing"] = manifest.listing.summary()
    if recorded_threads is None:  # a build.json from before threads were recorded
        updates["threads"] = use
    if updates:
        write_build_file(out, {**previous, **updates})
    return fp, use


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        if not out and list(a) != list(b):
            out.append(f"order of the keys in {prefix or 'the manifest'}")
        return out
    return [] if a == b else [prefix or "(top level)"]
