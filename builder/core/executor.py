"""Executors map shard ids to ``ShardTask`` calls; the local one runs them in this process.

A ``ShardTask`` is built from a ``Plan`` (the roof's ``builder.pipeline.Pipeline``): the stage list, a factory of
the stages, and each shard's specs. A distributed executor (``builder.core.ray_executor``) needs only what is
here: ``ShardTask`` pickles to (plan, build folder, span of stages, options), builds its stages once per worker
process, and each call is idempotent (a finished (stage, shard) is skipped, a racing duplicate is discarded at
commit). ``part`` cuts the stage list, so model stages and the CPU stages after them can run on different
workers.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from builder.core.errors import OutputDirError
from builder.core.log import logger
from builder.core.options import RunOptions, apply_threads
from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.core.stage import Stage


class Plan(Protocol):
    """What executors need of a build; it must pickle (it travels to every worker)."""

    stage_names: list[str]

    def num_shards(self) -> int:
        """How many shards the build has."""

    def shard_size(self, shard: int) -> int:
        """How many samples shard ``shard`` holds."""

    def specs(self, shard: int) -> list[Record]:
        """The records the first stage of shard ``shard`` gets."""

    def stages(self, options: RunOptions) -> list[Stage]:
        """Every shard stage, in order (construction is cheap; models load in ``setup``)."""


class ShardTask:
    """Run every unfinished stage of one shard (or of the stages ``span`` = (start, stop) selects)."""

    def __init__(self, plan: Plan, root: Path, span: tuple[int, int] | None = None,
                 options: RunOptions | None = None):
        self.plan = plan
        self.root = Path(root)
        self.options = options or RunOptions()
        self.stage_names = list(plan.stage_names)
        self.span = tuple(span) if span is not None else (0, len(self.stage_names))
        self._stages: list[Stage] | None = None
        self._ready: set[str] = set()

    def __getstate__(self) -> dict:
        return {"plan": self.plan, "root": self.root, "stage_names": self.stage_names, "span": self.span,
                "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stages=None, _ready=set())

    def stages(self) -> list[Stage]:
        """Every shard stage of the plan (not only the span); construction is cheap, models load in setup."""
        if self._stages is None:
            self._stages = self.plan.stages(self.options)
        return self._stages

    def part(self, start: int, stop: int) -> ShardTask:
        """The same task restricted to stages ``start:stop``; the stage before ``start`` must be done first."""
        return ShardTask(self.plan, self.root, (start, stop), self.options)

    def pending(self, shard: int) -> bool:
        store = ShardStore(self.root)
        return not all(store.is_done(name, shard) for name in self.stage_names[self.span[0]:self.span[1]])

    def __call__(self, shard: int, on_record=None) -> int:
        """Process ``shard``; return the number of records that came out of its last stage. ``on_record()`` is
        called as each record leaves the first stage this call runs (a progress bar's tick)."""
        store = ShardStore(self.root)
        start, stop = self.span
        records = None
        previous = self.stage_names[start - 1] if start else None
        if previous is not None and not store.is_done(previous, shard):
            raise RuntimeError(f"shard {shard}: stage {previous!r} must be finished before {self.stage_names[start]!r}")
        for stage in self.stages()[start:stop]:
            if store.is_done(stage.name, shard):
                records, previous = None, stage.name
                continue
            if records is None:
                records = store.kept(previous, shard) if previous else self.plan.specs(shard)
            if stage.name not in self._ready:
                apply_threads(self.options.threads)
                logger.info("setting up stage '%s' (loading its models)", stage.name)
                started = time.perf_counter()
                stage.setup()
                logger.debug("stage '%s' ready in %.1f s", stage.name, time.perf_counter() - started)
                check_meta_matches(stage, store, self.plan.num_shards())
                self._ready.add(stage.name)
            records = run_stage_on_shard(stage, store, shard, records, on_record)
            on_record, previous = None, stage.name
        return len(records) if records is not None else len(store.kept(previous, shard))


def check_meta_matches(stage: Stage, store: ShardStore, num_shards: int) -> None:
    """Refuse to add shards made by a different setup (other weights, dtype, ...) than the finished ones."""
    finished = next((s for s in range(num_shards) if store.is_done(stage.name, s)), None)
    if finished is None:
        return
    before, now = store.stats(stage.name, finished)["meta"], stage.meta()
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in changed)
        raise OutputDirError(
            f"stage '{stage.name}' is set up differently from the shards already in {store.root} ({details})",
            fix="resume where the same model files and dtype are available (e.g. the same kind of machine), "
            "or build into a new --out folder",
        )


class LocalExecutor:
    """Runs shards one after another in this process, with a progress bar."""

    name = "local"

    def run(self, task: ShardTask, shards: Sequence[int], progress: bool = True) -> None:
        from tqdm.auto import tqdm

        total = sum(task.plan.shard_size(s) for s in shards)
        with tqdm(total=total, unit="img", desc="samples", disable=not progress, dynamic_ncols=True) as bar:
            for i, shard in enumerate(shards, 1):
                bar.set_description(f"shard {i}/{len(shards)}")
                done_before = bar.n
                task(shard, on_record=lambda: bar.update(1))
                bar.update(done_before + task.plan.shard_size(shard) - bar.n)  # a shard whose first stages were done

