"""Run a build's shards on Ray: ``build-dataset MANIFEST --executor ray [--address ADDR] [--ray-actors N]``.

The scheme (``plan_layout`` decides it from the stages' ``resources`` and the cluster):

* The stages of a shard up to the last one that uses a GPU (generation,
  labelling: ``Stage.resources.gpus``) run in N long-lived actors. Each actor
  holds one ``ShardTask``, so every model loads once per actor. N is one actor
  per GPU (``num_gpus`` each), or one per CPU on a cluster without GPUs, or
  ``actors``; more actors than GPUs share them (fractional ``num_gpus``).
* The driver hands each free actor the next pending shard (``ray.wait``), one
  at a time, so no actor is idle while shards are pending and a slow shard
  delays no other.
* The CPU stages after the last GPU stage (integrity after generation) run as
  Ray tasks, one per shard, when the cluster has CPUs beyond the actors';
  otherwise they run in the actors too.
* Global stages and the release run in the driver after every shard
  (``builder.run.build``), as with the local executor.

Every worker sees the build folder at the same path (true of a local Ray; a
cluster needs it on shared storage) and imports this package: a local Ray
starts its workers from this Python, a cluster needs fer-synth installed on
every node. Workers get the driver's cache and offline settings
(``worker_env``). A failing shard is raised in the driver as its own exception
(a ``UserError`` still exits 2), the actors are killed, and finished shards
stay, so a rerun with either executor resumes. ``<out>/logs/ray.jsonl`` records
which actor (process, host) did each shard and when.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.core.errors import OutputDirError, UserError
from builder.core.executor import ShardTask
from builder.core.stage import Stage

ENV_PREFIXES = ("FER_SYNTH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "TOKENIZERS_", "TORCH_",
                "PYTORCH_", "CUBLAS_")
LOG_FILE = Path("logs") / "ray.jsonl"
OBJECT_STORE_BYTES = 256 * 2**20  # a local Ray's object store: only shard ids and small dicts travel


def worker_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The driver's variables workers need (caches, offline switches, verbosity); never a token."""
    return {k: v for k, v in environ.items()
            if k.startswith(ENV_PREFIXES) and ("TOKEN" not in k or k.startswith("TOKENIZERS_"))}


@dataclass(frozen=True)
class Layout:
    """Where a build's stages run: stages ``[0, split)`` in ``actors`` actors, the rest as tasks."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    split: int
    task_cpus: float


def _share(total: float, n: int) -> float:
    """``total / n`` rounded down to Ray's resource precision, so that n of them fit in ``total``."""
    return math.floor(total / n * 10_000) / 10_000


def plan_layout(stages: Sequence[Stage], cluster_cpus: float, cluster_gpus: float, shards: int,
                actors: int | None = None, cpus_per_actor: float | None = None) -> Layout:
    """Decide actors, their resources and the actor/task split (see the module docstring)."""
    gpu_stages = [i for i, s in enumerate(stages) if s.resources.gpus > 0]
    use_gpus = cluster_gpus > 0 and bool(gpu_stages)
    split = gpu_stages[-1] + 1 if use_gpus else len(stages)
    head = stages[:split]
    actor_gpus = max(s.resources.gpus for s in head) if use_gpus else 0.0
    actor_cpus = cpus_per_actor or max((s.resources.cpus for s in head), default=1.0)
    if actors is None:
        actors = int(cluster_gpus // actor_gpus) if use_gpus else int(cluster_cpus // actor_cpus)
    actors = max(1, min(actors, shards))
    if actors * actor_gpus > cluster_gpus:  # more actors than GPUs: they share them
        actor_gpus = _share(cluster_gpus, actors)
    if actors * actor_cpus > cluster_cpus:
        actor_cpus = _share(cluster_cpus, actors)
    tail = stages[split:]
    task_cpus = max((s.resources.cpus for s in tail), default=0.0)
    if tail and cluster_cpus - actors * actor_cpus < task_cpus:
        split, task_cpus = len(stages), 0.0  # no CPU to spare for tasks: the actors run the CPU stages too
    return Layout(actors, actor_cpus, actor_gpus, split, task_cpus)


def _probe(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at a HOST:PORT address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return  # 'auto' and the like: ray.init finds the cluster or says it found none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at '{address}' ({exc.strerror or exc})",
                        fix="start it (`ray start --head` on the head node) and give its address, or leave out "
                            "--address to run on a local Ray") from None


def _check_visible(root: Path) -> None:
    if not (root / "build.json").is_file():
        raise OutputDirError(f"the build folder '{root}' is not visible on Ray node {socket.gethostname()}",
                             fix="put --out on storage every node mounts at the same path, or leave out "
                                 "--address to run on a local Ray")


def _info(shard: int, worker: str, started: float, kept: int) -> dict:
    return {"shard": shard, "worker": worker, "pid": os.getpid(), "host": socket.gethostname(),
            "started": started, "ended": time.time(), "kept": kept}


class ShardWorker:
    """A Ray actor: one ``ShardTask`` (the actors' part of the stages), models loaded on first use."""

    def __init__(self, task: ShardTask, name: str):
        self.task, self.name, self.checked = task, name, False

    def run(self, shard: int) -> dict:
        if not self.checked:
            _check_visible(self.task.root)
            self.checked = True
        import ray

        started = time.time()
        kept = self.task(shard)
        return {**_info(shard, self.name, started, kept), "loaded": sorted(self.task._ready),
                "gpus": [int(g) if str(g).isdigit() else g for g in ray.get_gpu_ids()]}


_TASKS: dict[tuple[str, tuple[int, int]], ShardTask] = {}


def run_stages_task(task: ShardTask, shard: int) -> dict:
    """A Ray task: the CPU stages of one shard. A worker process keeps one ``ShardTask`` per (folder, stages),
    so their setup runs once per process (a worker serves one driver, and one driver holds a folder's lock)."""
    if (str(task.root), task.span) not in _TASKS:
        _check_visible(task.root)
    task = _TASKS.setdefault((str(task.root), task.span), task)
    started = time.time()
    return _info(shard, f"task-{os.getpid()}", started, task(shard))


class RayExecutor:
    """Runs shards on a Ray cluster (``address``) or on a local Ray it starts and stops.

    ``num_cpus``/``num_gpus`` size a local Ray (default: this machine's); ``actors`` overrides one actor per
    GPU (or per CPU); ``cpus_per_actor`` overrides the stages' CPU request. After ``run``, ``layout`` and
    ``schedule`` (one dict per shard: worker, pid, host, start and end times) say what happened.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 actors: int | None = None, cpus_per_actor: float | None = None,
                 log: Callable[[str], None] | None = None):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.actors, self.cpus_per_actor = actors, cpus_per_actor
        self.log = log or (lambda message: None)
        self.layout: Layout | None = None
        self.schedule: list[dict] = []

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray on this machine"
        actors = f"{self.actors} actors" if self.actors else "one actor per GPU (per CPU without GPUs)"
        return f"ray: {where}, {actors}"

    def run(self, task: ShardTask, shards: Sequence[int], progress: bool = True) -> None:
        shards = list(shards)
        if not shards:
            return
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray, which is not installed",
                            fix="pip install 'fer-synth[ray]' (or use --executor local)") from None
        started = self._connect(ray)
        try:
            self._run(ray, task, shards, progress)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Start or join Ray unless this process already has; True when we did (and so shut it down)."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address:
            _probe(self.address)
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot connect to the Ray cluster at '{self.address}': {exc}",
                                fix="start it (`ray start --head` on the head node) and give its address; with "
                                    "token authentication (Ray's default) an explicit address also needs "
                                    "RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token or "
                                    "RAY_AUTH_TOKEN), while --address auto on a node finds both") from None
        else:
            cpus = self.num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count())
            ray.init(address="local", num_cpus=cpus, num_gpus=self.num_gpus,
                     object_store_memory=OBJECT_STORE_BYTES, **common)
        return True

    def _run(self, ray, task: ShardTask, shards: list[int], progress: bool) -> None:
        from tqdm.auto import tqdm

        if not task.root.is_absolute():  # workers may start elsewhere (another node, another folder)
            task = ShardTask(task.plan, task.root.absolute(), task.span, task.options)
        stages = task.stages()
        cluster = ray.cluster_resources()
        cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        layout = self.layout = plan_layout(stages, cpus, gpus, len(shards), self.actors, self.cpus_per_actor)
        names = task.stage_names
        tasks = f"; {', '.join(names[layout.split:])} as tasks" if layout.split < len(names) else ""
        self.log(f"ray: {layout.actors} actor(s) with {layout.actor_cpus:g} CPU and {layout.actor_gpus:g} GPU each "
                 f"for {', '.join(names[:layout.split])}{tasks}; cluster {cpus:g} CPU, {gpus:g} GPU")
        env = {"env_vars": worker_env()}
        actor_class = ray.remote(ShardWorker).options(num_cpus=layout.actor_cpus, num_gpus=layout.actor_gpus,
                                                      runtime_env=env)
        workers = [actor_class.remote(task.part(0, layout.split), f"actor-{i}") for i in range(layout.actors)]
        tail = task.part(layout.split, len(names)) if layout.split < len(names) else None
        tail_call = (ray.remote(run_stages_task).options(num_cpus=layout.task_cpus, runtime_env=env, max_retries=0)
                     if tail is not None else None)
        images = {s: task.plan.shard_size(s) for s in shards}
        queue, idle, running = deque(shards), deque(workers), {}
        by_shard: dict[int, dict] = {}
        finished, run_started = 0, time.time()
        log_path = task.root / LOG_FILE
        log_path.parent.mkdir(exist_ok=True)
        try:
            with tqdm(total=sum(images.values()), unit="img", desc="shards", disable=not progress,
                      dynamic_ncols=True) as bar, open(log_path, "a") as log_file:
                while queue or running:
                    while queue and idle:  # every free actor gets the next pending shard
                        worker, shard = idle.popleft(), queue.popleft()
                        running[worker.run.remote(shard)] = (worker, shard)
                    ready, _ = ray.wait(list(running), num_returns=1)
                    worker, shard = running.pop(ready[0])
                    info = {**self._result(ray, ready[0]), "run": run_started}
                    log_file.write(json.dumps(info, sort_keys=True) + "\n")
                    log_file.flush()
                    if worker is not None:  # the actor's stages are done; the actor is free again
                        idle.append(worker)
                        by_shard[shard] = info
                        if tail is not None:
                            running[tail_call.remote(tail, shard)] = (None, shard)
                            continue
                    else:
                        by_shard[shard]["cpu_task"] = info
                    finished += 1
                    bar.update(images[shard])
                    bar.set_description(f"shard {finished}/{len(shards)}")
        finally:
            for ref, (worker, _) in running.items():
                if worker is None:
                    ray.cancel(ref, force=True)
            for worker in workers:
                ray.kill(worker)
            self.schedule = [by_shard[s] for s in sorted(by_shard)]
        per_actor = Counter(s["worker"] for s in self.schedule)
        self.log(f"ray: {len(shards)} shards in {time.time() - run_started:.1f} s; shards per actor: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(per_actor.items())))

    @staticmethod
    def _result(ray, ref) -> dict:
        """The result of a finished call, or its shard's own exception (a UserError stays a UserError)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if exc.cause is None:
                raise
            raise exc.cause from exc
