"""Executors map shard ids to ``ShardTask`` calls; the local one runs them in this process.

A distributed executor (``builder.ray_executor``) needs only what is here:
``ShardTask`` pickles to (manifest, build folder, span of stages), builds its
stages once per worker process, and each call is idempotent (a finished (stage,
shard) is skipped, a racing duplicate is discarded at commit). ``part`` cuts the
stage list, so model stages and the CPU stages after them can run on different
workers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import OutputDirError
from .expand import shard_bounds, shard_specs
from .manifest import Manifest
from .options import RunOptions, apply_threads
from .pipeline import shard_stages, stage_names
from .shards import ShardStore, run_stage_on_shard
from .stage import Stage


class ShardTask:
    """Run every unfinished stage of one shard (or of the stages ``span`` = (start, stop) selects)."""

    def __init__(self, manifest: Manifest, root: Path, span: tuple[int, int] | None = None,
                 options: RunOptions | None = None):
        self.manifest = manifest
        self.root = Path(root)
        self.options = options or RunOptions()
        self.stage_names = stage_names(manifest)
        self.span = tuple(span) if span is not None else (0, len(self.stage_names))
        self._stages: list[Stage] | None = None
        self._ready: set[str] = set()

    def __getstate__(self) -> dict:
        return {"manifest": self.manifest, "root": self.root, "stage_names": self.stage_names, "span": self.span,
                "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stages=None, _ready=set())

    def stages(self) -> list[Stage]:
        """Every shard stage of the manifest (not only the span); construction is cheap, models load in setup."""
        if self._stages is None:
            self._stages = shard_stages(self.manifest, self.options)
        return self._stages

    def part(self, start: int, stop: int) -> ShardTask:
        """The same task restricted to stages ``start:stop``; the stage before ``start`` must be done first."""
        return ShardTask(self.manifest, self.root, (start, stop), self.options)

    def pending(self, shard: int) -> bool:
        store = ShardStore(self.root)
        return not all(store.is_done(name, shard) for name in self.stage_names[self.span[0]:self.span[1]])

    def __call__(self, shard: int) -> int:
        """Process ``shard``; return the number of records that came out of its last stage."""
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
                records = store.kept(previous, shard) if previous else shard_specs(self.manifest, shard)
            if stage.name not in self._ready:
                apply_threads(self.options.threads)
                stage.setup()
                check_meta_matches(stage, store, self.manifest.num_shards())
                self._ready.add(stage.name)
            records = run_stage_on_shard(stage, store, shard, records)
            previous = stage.name
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

        total = sum(len(shard_bounds(task.manifest, s)) for s in shards)
        with tqdm(total=total, unit="img", desc="shards", disable=not progress, dynamic_ncols=True) as bar:
            for i, shard in enumerate(shards, 1):
                task(shard)
                bar.set_description(f"shard {i}/{len(shards)}")
                bar.update(len(shard_bounds(task.manifest, shard)))

