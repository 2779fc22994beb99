"""Per-(stage, shard) outputs: written to a staging folder, committed by one rename.

Layout under the build folder::

    shards/<stage>/<shard:05d>/records.jsonl   kept records (input of the next stage)
                              rejected.jsonl  dropped records with their reason
                              stats.json      counts, seconds, stage meta and runtime: the completion marker
                              images/...      files the stage wrote (generation only)

A shard folder exists only once complete, so a process killed at any point
leaves either a finished shard or nothing but a ``.tmp-*`` staging folder,
which the next run deletes and redoes.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from builder.core.errors import OutputDirError, is_storage_fault, storage_error
from builder.core.records import Record, read_jsonl, write_jsonl
from builder.core.stage import GlobalStage, ShardContext, Stage

KEPT, REJECTED, STATS = "records.jsonl", "rejected.jsonl", "stats.json"


class ShardStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.base = self.root / "shards"

    def final(self, stage: str, shard: int) -> Path:
        return self.base / stage / f"{shard:05d}"

    def is_done(self, stage: str, shard: int) -> bool:
        return (self.final(stage, shard) / STATS).is_file()

    def kept(self, stage: str, shard: int) -> list[Record]:
        return self._read(stage, shard, KEPT, lambda path: list(read_jsonl(path)))

    def rejected(self, stage: str, shard: int) -> list[Record]:
        return self._read(stage, shard, REJECTED, lambda path: list(read_jsonl(path)))

    def stats(self, stage: str, shard: int) -> dict:
        return self._read(stage, shard, STATS, lambda path: json.loads(path.read_text(encoding="utf-8")))

    def _read(self, stage: str, shard: int, name: str, parse):
        """A committed shard file, parsed; a damaged or missing one is an ``OutputDirError`` naming the fix."""
        folder = self.final(stage, shard)
        try:
            return parse(folder / name)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            if is_storage_fault(exc):
                raise storage_error(exc, folder, "read") from None
            raise OutputDirError(f"the committed shard file is damaged or missing ({type(exc).__name__}: {exc})",
                                 file=str(folder / name), fix=f"delete the folder {folder} and run the build again: "
                                 "it redoes that shard (and the stages after it) and keeps every other") from None

    def discard(self, shard: int) -> list[str]:
        """Delete every committed stage output of ``shard`` (so a run redoes it); return the stages removed."""
        removed = []
        for stage_dir in sorted(self.base.glob("*")) if self.base.exists() else []:
            folder = stage_dir / f"{shard:05d}"
            if folder.is_dir():
                shutil.rmtree(folder)
                removed.append(stage_dir.name)
        return removed

    def missing_images(self, stage: str, shard: int) -> list[str]:
        """Image files that ``stage``'s kept records of ``shard`` name but the build folder no longer holds."""
        return [r.image for r in self.kept(stage, shard) if r.image and not (self.root / r.image).is_file()]

    def context(self, stage: str, shard: int) -> ShardContext:
        staging = self.base / stage / f".tmp-{shard:05d}-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        return ShardContext(root=self.root, shard=shard, staging=staging, final=self.final(stage, shard))

    def commit(self, ctx: ShardContext, kept: list[Record], rejected: list[Record], stats: dict) -> None:
        """Write the shard's files, flush them to disk, and publish the folder with one rename."""
        try:
            write_jsonl(ctx.staging / KEPT, kept)
            write_jsonl(ctx.staging / REJECTED, rejected)
            (ctx.staging / STATS).write_text(json.dumps(stats, indent=1, sort_keys=True))
            fsync_tree(ctx.staging)
        except OSError as exc:
            raise storage_error(exc, ctx.staging.parent) if is_storage_fault(exc) else exc from None
        try:
            os.rename(ctx.staging, ctx.final)
        except OSError:
            if not (ctx.final / STATS).is_file():
                raise
            shutil.rmtree(ctx.staging)  # another worker finished this shard first: same content
            return
        fsync_dir(ctx.final.parent)

    def clean_staging(self) -> int:
        """Delete staging folders left by killed runs; return how many."""
        leftovers = list(self.base.glob("*/.tmp-*")) if self.base.exists() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)


def fsync_dir(folder: Path) -> None:
    """Make a rename or new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically and durably: a temporary file, flushed, renamed, folder flushed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves, before publishing it by a rename."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def run_stage_on_shard(stage: Stage, store: ShardStore, shard: int, records: list[Record],
                       on_record=None) -> list[Record]:
    """Run one stage over one shard's records, commit its outputs, return the kept records (``on_record()``
    after each record the stage yields)."""
    ctx = store.context(stage.name, shard)
    try:
        started = time.perf_counter()
        out = []
        for record in stage.process(records, ctx):
            out.append(record)
            if on_record is not None:
                on_record()
        seconds = time.perf_counter() - started
        if sorted(r.sample_id for r in out) != sorted(r.sample_id for r in records):
            raise RuntimeError(f"stage {stage.name!r} must yield each input record exactly once (shard {shard})")
        kept = [r for r in out if r.drop is None]
        rejected = [r for r in out if r.drop is not None]
        stats = {
            "stage": stage.name,
            "shard": shard,
            "in": len(records),
            "kept": len(kept),
            "dropped": dict(sorted(Counter(r.drop.reason for r in rejected).items())),
            "seconds": round(seconds, 4),
            "meta": stage.meta(),
        }
        runtime = stage.runtime()
        if "torch" in sys.modules:  # CPU pixels depend on it (RunOptions.threads)
            runtime["threads"] = sys.modules["torch"].get_num_threads()
        if runtime:
            stats["runtime"] = runtime
        store.commit(ctx, kept, rejected, stats)
    finally:
        shutil.rmtree(ctx.staging, ignore_errors=True)
    return kept


def run_global_stage(stage: GlobalStage, records: list[Record], root: Path,
                     rejected_path: Path) -> tuple[list[Record], dict]:
    """Run a whole-set stage over all kept records, write its rejects to ``rejected_path``; return the kept
    records and the stage's totals (as a shard stage's stats: in, kept, dropped per reason, seconds, meta)."""
    started = time.perf_counter()
    out = list(stage.process(records, root))
    if sorted(r.sample_id for r in out) != sorted(r.sample_id for r in records):
        raise RuntimeError(f"stage {stage.name!r} must yield each input record exactly once")
    kept = [r for r in out if r.drop is None]
    rejected = [r for r in out if r.drop is not None]
    write_jsonl(rejected_path, rejected)
    return kept, {"in": len(records), "kept": len(kept),
                  "dropped": dict(sorted(Counter(r.drop.reason for r in rejected).items())),
                  "seconds": round(time.perf_counter() - started, 3), "meta": stage.meta()}
