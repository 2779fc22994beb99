"""The shard interface distributed executors use: order- and worker-independent, idempotent."""
from __future__ import annotations

import pickle

import pytest

from builder.core.executor import ShardTask
from builder.core.shards import ShardStore
from builder.manifest.loader import load_manifest
from builder.pipeline import Pipeline
from builder.run import build
from tests.conftest import DEMO, dataset_rows, stage_counts


class TwoWorkersBackwards:
    """Like a pool of two worker processes: each gets a pickled task; shards go out last-first."""

    name = "test-two-workers"

    def run(self, task, shards, progress=True):
        workers = [pickle.loads(pickle.dumps(task)) for _ in range(2)]
        for i, shard in enumerate(reversed(list(shards))):
            workers[i % 2](shard)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    build(load_manifest(DEMO), out, progress=False, log=lambda m: None)
    return out


def test_workers_and_order_do_not_change_the_dataset(local_build, tmp_path):
    out = tmp_path / "out"
    build(load_manifest(DEMO), out, executor=TwoWorkersBackwards(), progress=False, log=lambda m: None)
    assert dataset_rows(out) == dataset_rows(local_build)
    assert stage_counts(out) == stage_counts(local_build)


def test_task_pickles_without_models(local_build):
    task = ShardTask(Pipeline(load_manifest(DEMO)), local_build)
    task.stages()
    clone = pickle.loads(pickle.dumps(task))
    assert clone._stages is None and clone.stage_names == ["generate", "integrity"]


def test_finished_shard_is_not_redone(local_build):
    task = ShardTask(Pipeline(load_manifest(DEMO)), local_build)
    before = (local_build / "shards" / "generate" / "00001" / "stats.json").stat().st_mtime_ns
    assert not task.pending(1)
    assert task(1) == 8  # reads the finished output; loads no model
    assert task._ready == set()
    assert (local_build / "shards" / "generate" / "00001" / "stats.json").stat().st_mtime_ns == before


def test_racing_commit_keeps_the_first(tmp_path):
    store = ShardStore(tmp_path)
    first, second = store.context("s", 0), store.context("s", 0)
    store.commit(first, [], [], {"in": 0, "winner": 1})
    store.commit(second, [], [], {"in": 0, "winner": 2})
    assert store.stats("s", 0)["winner"] == 1
    assert not list((tmp_path / "shards" / "s").glob(".tmp-*"))
