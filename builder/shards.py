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
import time
import uuid
from collections import Counter
from pathlib import Path

from .records import Record, read_jsonl, write_jsonl
from .stage import ShardContext, Stage

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
        return list(read_jsonl(self.final(stage, shard) / KEPT))

    def rejected(self, stage: str, shard: int) -> list[Record]:
        return list(read_jsonl(self.final(stage, shard) / REJECTED))

    def stats(self, stage: str, shard: int) -> dict:
        return json.loads((self.final(stage, shard) / STATS).read_text())

    def context(self, stage: str, shard: int) -> ShardContext:
        staging = self.base / stage / f".tmp-{shard:05d}-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        return ShardContext(root=self.root, shard=shard, staging=staging, final=self.final(stage, shard))

    def commit(self, ctx: ShardContext, kept: list[Record], rejected: list[Record], stats: dict) -> None:
        write_jsonl(ctx.staging / KEPT, kept)
        write_jsonl(ctx.staging / REJECTED, rejected)
        (ctx.staging / STATS).write_text(json.dumps(stats, indent=1, sort_keys=True))
        try:
            os.rename(ctx.staging, ctx.final)
        except OSError:
            if not (ctx.final / STATS).is_file():
                raise
            shutil.rmtree(ctx.staging)  # another worker finished this shard first: same content

    def clean_staging(self) -> int:
        """Delete staging folders left by killed runs; return how many."""
        leftovers = list(self.base.glob("*/.tmp-*")) if self.base.exists() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)


def run_stage_on_shard(stage: Stage, store: ShardStore, shard: int, records: list[Record]) -> list[Record]:
    """Run one stage over one shard's records, commit its outputs, return the kept records."""
    ctx = store.context(stage.name, shard)
    try:
        started = time.perf_counter()
        out = list(stage.process(records, ctx))
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
        if runtime := stage.runtime():
            stats["runtime"] = runtime
        store.commit(ctx, kept, rejected, stats)
    finally:
        shutil.rmtree(ctx.staging, ignore_errors=True)
    return kept
