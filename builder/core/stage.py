"""The one stage contract every pipeline step follows.

A stage is set up once per process (models load in ``setup``), then processes
one shard's records at a time and yields every input record back: kept, or
with ``record.drop`` set to the reason. The runner (``builder.core.shards``) counts
kept and dropped per reason, writes both, and times the stage; stages never
count or write bookkeeping themselves. The same stages run under any executor.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from builder.core.errors import is_run_fault
from builder.core.records import Drop, Record


@dataclass(frozen=True)
class Column:
    """A column a stage adds to the released dataset: its name, its type, what it holds (the data card's note
    and the review's field description), and how to read it from a kept record and the stage's meta.

    ``dtype``: 'string', 'float32', 'int64', 'label' (a class of the manifest's label map), 'classes'
    (one float32 per class), 'aus' (one named float32 per AU of the manifest's AU set; 'aus:SET' of a named
    set), 'float32[N]' or
    'float32[N,M]' (fixed-size lists).
    """

    name: str
    dtype: str
    doc: str
    value: Callable[[Record, dict], object]


@dataclass(frozen=True)
class Resources:
    """What one instance of a stage needs (read by distributed executors).

    ``gpus`` is what the stage uses when the executor has GPUs to give: a stage
    on device 'auto' asks for one and runs on the CPU where there is none.
    """

    cpus: float = 1.0
    gpus: float = 0.0


def device_resources(requested: str) -> Resources:
    """What a model stage needs, from its manifest device: a GPU unless pinned to 'cpu' or 'mps'."""
    return Resources(cpus=1.0, gpus=0.0 if requested in ("cpu", "mps") else 1.0)


@dataclass
class ShardContext:
    """Where a stage writes one shard's files.

    Files go under ``staging`` now and are found under ``final`` once the shard
    is committed; record paths are relative to the build folder ``root``.
    """

    root: Path
    shard: int
    staging: Path
    final: Path

    def output_path(self, relative: str) -> tuple[Path, str]:
        """(path to write now, path to store in records) for a file of this shard."""
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, (self.final / relative).relative_to(self.root).as_posix()

    def resolve(self, stored: str) -> Path:
        """Path of a file a record refers to (refused when it leaves the build folder)."""
        from builder.core.paths import record_file

        return record_file(self.root, stored)


class Stage(ABC):
    """Base class of every stage: ``setup`` once, ``process`` per shard; ``columns``: what it adds to the
    released dataset (a class attribute, or ``dataset_columns`` when it depends on the settings)."""

    name: ClassVar[str]
    columns: ClassVar[tuple[Column, ...]] = ()
    resources: Resources = Resources()  # a class attribute, or a property when it depends on the settings

    def dataset_columns(self) -> tuple[Column, ...]:
        """The columns this stage, as set up by the manifest, adds to the released dataset."""
        return self.columns

    def setup(self) -> None:
        """Load models and other heavy state; called once, before the first shard."""

    @abstractmethod
    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        """Yield every record of ``records``, with ``drop`` set on those this stage rejects."""

    def meta(self) -> dict:
        """Facts about this stage's setup worth recording with each shard (e.g. model provenance); a resumed
        build must have the same."""
        return {}

    def runtime(self) -> dict:
        """How this process ran the stage (device, speed settings), recorded with each shard; may differ
        between shards."""
        return {}


class Filter(Stage):
    """A stage that judges records one by one; an exception on one record drops only it."""

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for record in records:
            try:
                verdict = self.check(record, ctx)
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):  # the run's input or disk is at fault, not this sample: stop, commit nothing
                    raise
                verdict = ("error", f"{type(exc).__name__}: {exc}")
            if verdict is not None:
                record.drop = Drop(self.name, verdict[0], verdict[1])
            yield record

    @abstractmethod
    def check(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        """None to keep the record, or (reason, detail) to drop it."""


class GlobalStage(ABC):
    """A stage that needs every kept record at once (selection; later dedupe and balance).

    Runs in the release, after all shards, on the kept records in sample order;
    like a shard stage it yields every input record back, kept or with ``drop``
    set, and the release counts, writes ``rejected/<name>.jsonl`` and times it.
    It must be deterministic: same records in, same decisions out.
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[Column, ...]] = ()

    def dataset_columns(self) -> tuple[Column, ...]:
        """The columns this stage adds to the released dataset."""
        return self.columns

    def preflight(self) -> None:
        """Raise a ``UserError`` for a set-up problem (a missing file, a mismatched model). The build calls it
        before the first shard, so a bad setting fails in seconds, not after hours of generation."""

    @abstractmethod
    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        """Yield every record of ``records`` (image paths relative to the build folder ``root``), with ``drop``
        set on those this stage rejects."""

    def meta(self) -> dict:
        """Set-up and outcome worth recording in the stats (read after ``process``)."""
        return {}
