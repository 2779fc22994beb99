"""The Ray executor: same dataset as the local one, resumable across executors, errors as themselves.

Every Ray here is local with 2 CPUs. CPU pixels depend on torch's thread count by float rounding (at most one
grey level). Ray would give each actor as many threads as CPUs it holds (1 here), but a build records the thread
count it started with (build.json) and every worker applies it, so the default local build, the Ray build and
builds resumed under another executor or thread default are equal byte for byte.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from builder.core.ray_executor import Layout, RayExecutor, plan_layout, worker_env
from builder.core.stage import Resources
from tests.conftest import ROOT, dataset_rows, deep_update, stage_counts
from tests.e2e.test_resume import done_shards, kill_when, staging

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHANGES = {"name": "ray", "output": {"shard_size": 4}}  # the demo's 28 samples in 7 shards


def cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args), "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""A process whose torch default is one thread (as in a 1-CPU Ray actor): the build's recorded count must win."""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, demo_data) -> Path:
    path = tmp_path_factory.mktemp("ray") / "ray.yaml"
    path.write_text(yaml.safe_dump(deep_update(demo_data, CHANGES), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> Path:
    """The local executor's build with this machine's default thread count."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = cli(manifest, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_build(out: Path, reference: Path) -> None:
    expected, got = dataset_rows(reference), dataset_rows(out)
    assert list(got) == list(expected)
    for split in expected:
        assert [r["sample_id"] for r in got[split]] == [r["sample_id"] for r in expected[split]]
        for a, b in zip(got[split], expected[split], strict=True):
            assert a == b, f"{split} {a['sample_id']} differs"
    assert stage_counts(out) == stage_counts(reference)
    assert (out / "rejected" / "generate.jsonl").read_text() == (reference / "rejected" / "generate.jsonl").read_text()
    assert not list(out.rglob(".tmp-*"))


def schedule(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "ray.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_build(manifest, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ray") / "out"
    result = cli(manifest, "--out", out, "--executor", "ray")
    assert result.returncode == 0, result.stderr
    return out, result


def test_ray_build_equals_the_local_build(ray_build, reference):
    out, result = ray_build
    assert "ray: 2 actor(s) with 1 CPU and 0 GPU each for generate, integrity; cluster 2 CPU, 0 GPU" in result.stderr
    assert_same_build(out, reference)
    log = schedule(out)
    assert sorted(e["shard"] for e in log) == list(range(7))
    assert len({e["pid"] for e in log}) == 2, "two actors, each one process: the model loaded once per actor"
    threads = json.loads((out / "build.json").read_text())["threads"]
    assert threads == json.loads((reference / "build.json").read_text())["threads"]
    ran = {json.loads(p.read_text())["runtime"]["threads"] for p in (out / "shards").glob("*/0*/stats.json")}
    assert ran == {threads}, "every actor applied the build's thread count, not Ray's one per CPU"


def test_ray_build_resumed_by_the_local_executor(ray_build, manifest, reference, tmp_path):
    import shutil

    out = shutil.copytree(ray_build[0], tmp_path / "out")
    for stage in ("generate", "integrity"):
        for shard in ("00005", "00006"):
            shutil.rmtree(out / "shards" / stage / shard)
    (out / ".release.json").unlink()
    result = cli(manifest, "--out", out, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "2 of 7 shards to process (5 already done)" in result.stderr
    assert_same_build(out, reference)


def test_local_build_resumed_by_ray(manifest, reference, tmp_path):
    """A local build killed mid-generation is finished by Ray; finished shards are not redone."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(proc, lambda: done_shards(out, "generate") >= 2 and staging(out, "generate"))
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "shards" / "integrity").glob("0*/stats.json")}
    assert 2 <= len(finished) < 7

    result = cli(manifest, "--out", out, "--executor", "ray")
    assert result.returncode == 0, result.stderr
    assert "removed unfinished shard outputs of an interrupted run" in result.stderr
    assert f"{7 - len(finished)} of 7 shards to process ({len(finished)} already done)" in result.stderr
    assert_same_build(out, reference)
    assert sorted(e["shard"] for e in schedule(out)) == [s for s in range(7) if f"{s:05d}" not in finished]
    for name, mtime in finished.items():
        assert (out / "shards" / "integrity" / name / "stats.json").stat().st_mtime_ns == mtime


def test_user_error_in_an_actor_exits_2_with_its_message(tmp_path, write_manifest):
    """An error only the generator's set-up finds (half precision on a CPU: the model references are fine, so
    the checks before the first shard pass) is raised in the actor and reaches the user as itself."""
    manifest = write_manifest({"generator": {"dtype": "float16", "device": "cpu"}})
    local = cli(manifest, "--out", tmp_path / "local")
    remote = cli(manifest, "--out", tmp_path / "ray", "--executor", "ray")
    assert local.returncode == remote.returncode == 2, remote.stderr
    message = "error: generator.dtype 'float16' is not supported on CPU"
    for result in (local, remote):
        assert message in result.stderr and "Traceback" not in result.stderr
    error = remote.stderr[remote.stderr.index("error: "):].replace(str(tmp_path / "ray"), "OUT")
    assert error == local.stderr[local.stderr.index("error: "):].replace(str(tmp_path / "local"), "OUT"), \
        "the same message, fix and resume lines included"
    assert "OUT (0 of 4 shards done)" in error and "`build-dataset status OUT`" in error
    assert not list((tmp_path / "ray" / "shards").glob("*/0*"))


def test_unreachable_cluster_fails_at_once(manifest, tmp_path):
    result = cli(manifest, "--out", tmp_path / "out", "--executor", "ray", "--address", "127.0.0.1:1", timeout=60)
    assert result.returncode == 2
    assert "error: no Ray cluster answers at '127.0.0.1:1'" in result.stderr


@pytest.fixture
def ray_with_four_gpus():
    """A local Ray that declares 4 (fake) GPUs on the 2 CPUs: Ray hands them out like real ones."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def test_shard_scheduling_on_four_gpu_actors(manifest, reference, tmp_path, ray_with_four_gpus, capsys):
    """The simulated multi-worker run: 4 GPU actors (a quarter CPU each), integrity as CPU tasks."""
    from builder.manifest.loader import load_manifest
    from builder.run import build

    ray = ray_with_four_gpus
    out = tmp_path / "out"
    executor = RayExecutor(actors=4, cpus_per_actor=0.25)
    started = time.monotonic()
    build(load_manifest(manifest), out, executor=executor, progress=False, log=lambda m: None)
    wall = time.monotonic() - started
    assert ray.is_initialized(), "a Ray the executor did not start is left running"
    assert executor.layout == Layout(actors=4, actor_cpus=0.25, actor_gpus=1.0, split=1, task_cpus=1.0)
    assert_same_build(out, reference)

    runs = executor.schedule
    assert [r["shard"] for r in runs] == list(range(7)), "every shard exactly once"
    by_actor = defaultdict(list)
    for r in runs:
        by_actor[r["worker"]].append(r)
    assert len(by_actor) == 4
    assert len({r["pid"] for r in runs}) == 4 and all(len({r["pid"] for r in rs}) == 1 for rs in by_actor.values())
    assert sorted(tuple(rs[0]["gpus"]) for rs in by_actor.values()) == [(0,), (1,), (2,), (3,)]
    assert all(r["loaded"] == ["generate"] for r in runs), "integrity is not loaded in the actors"
    assert all(r["cpu_task"]["pid"] not in {x["pid"] for x in runs} for r in runs), "integrity ran as tasks"
    assert [r["shard"] for r in schedule(out)].count(0) == 2  # the log has the actor's and the task's line

    # Load balance: an actor gets its next shard as soon as it is free, and none runs out of work while
    # shards wait (each actor is busy until the last shard has started).
    last_start = max(r["started"] for r in runs)
    for rs in by_actor.values():
        rs.sort(key=lambda r: r["started"])
        gaps = [b["started"] - a["ended"] for a, b in zip(rs, rs[1:])]
        assert all(g < 2.0 for g in gaps), gaps
        assert rs[-1]["ended"] >= last_start - 2.0, "an actor ran out of work while shards were waiting"

    with capsys.disabled():  # the scheduling figure: which actor did which shard, when (s from the first start)
        t0 = min(r["started"] for r in runs)
        print(f"\n4 GPU actors, 7 shards, build {wall:.1f} s (release included):")
        for name, rs in sorted(by_actor.items()):
            print(f"  {name} (GPU {rs[0]['gpus']}, pid {rs[0]['pid']}): " + ", ".join(
                f"shard {r['shard']} {r['started'] - t0:.1f}-{r['ended'] - t0:.1f}" for r in rs))


class FakeStage:
    def __init__(self, cpus=1.0, gpus=0.0):
        self.resources = Resources(cpus, gpus)


GEN, CPU = FakeStage(gpus=1.0), FakeStage()


@pytest.mark.parametrize("stages, cpus, gpus, shards, actors, per_actor, expected", [
    ([GEN, CPU], 16, 8, 100, None, None, Layout(8, 1.0, 1.0, 1, 1.0)),   # one actor per GPU, integrity as tasks
    ([GEN, CPU], 8, 8, 100, None, None, Layout(8, 1.0, 1.0, 2, 0.0)),    # no CPU left for tasks: in the actors
    ([GEN, CPU], 16, 8, 3, None, None, Layout(3, 1.0, 1.0, 1, 1.0)),     # never more actors than shards
    ([GEN, CPU], 16, 4, 100, 8, None, Layout(8, 1.0, 0.5, 1, 1.0)),      # 8 actors share 4 GPUs
    ([GEN, CPU], 2, 0, 100, None, None, Layout(2, 1.0, 0.0, 2, 0.0)),    # no GPU: CPU actors run everything
    ([GEN, CPU], 2, 0, 100, 3, None, Layout(3, 0.6666, 0.0, 2, 0.0)),    # more actors than CPUs: they share
    ([CPU, GEN, CPU, GEN], 4, 2, 10, None, None, Layout(2, 1.0, 1.0, 4, 0.0)),  # the last GPU stage ends the actors' part
    ([FakeStage(), FakeStage()], 4, 2, 10, None, None, Layout(4, 1.0, 0.0, 2, 0.0)),  # no GPU stage: GPUs unused
])
def test_layout(stages, cpus, gpus, shards, actors, per_actor, expected):
    assert plan_layout(stages, cpus, gpus, shards, actors, per_actor) == expected


def test_worker_env_passes_caches_and_switches_but_no_token():
    env = worker_env({"FER_SYNTH_HOME": "/c", "HF_HOME": "/h", "HF_HUB_OFFLINE": "1", "HF_TOKEN": "secret",
                      "HUGGING_FACE_HUB_TOKEN": "secret", "TOKENIZERS_PARALLELISM": "false", "PATH": "/bin",
                      "CUDA_VISIBLE_DEVICES": "0"})
    assert env == {"FER_SYNTH_HOME": "/c", "HF_HOME": "/h", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_stage_resources_follow_the_device(write_manifest):
    from builder.manifest.loader import load_manifest
    from builder.pipeline import shard_stages

    def resources(device):
        manifest = load_manifest(write_manifest({"generator": {"device": device}}))
        return {s.name: s.resources for s in shard_stages(manifest)}

    assert resources("auto") == {"generate": Resources(1.0, 1.0), "integrity": Resources(1.0, 0.0)}
    assert resources("cuda:1")["generate"].gpus == 1.0
    assert resources("cpu")["generate"].gpus == 0.0
