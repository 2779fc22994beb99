"""Benchmark the identity-leak reference index: build time, query throughput, recall, memory, file size.

    .venv/bin/python bench/leak_index.py [--n 1000000] [--dims 128 512] [--types flat ivf hnsw]
                                         [--queries 10000] [--timeout 600] [--out bench/results.json]

The reference is N random unit vectors (seeded). Random vectors cost the same
to index and search as real embeddings of that dimension, but their
neighbourhoods have no structure, so recall on them is not the recall on real
faces. ``--queries`` vectors in two halves: ``near`` (a reference vector plus
Gaussian noise, cosine about 0.9 to it: what a leaked face looks like) and
``random`` (fresh random unit vectors: what an unrelated face looks like). Recall@1 is measured against flat (exact) search.

Each (dim, type) runs in its own subprocess, so peak RSS is that
configuration's alone, and one that runs past ``--timeout`` seconds is
recorded as such. Indexes are built with the tool's own code path
(``curation.identity.index``), and use every core FAISS sees.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # chunks keep the float64 temporaries small
        out[start:start + 100_000] = unit(rng.standard_normal((min(100_000, n - start), dim)))
    return out


def queries(base: np.ndarray, count: int, seed: int = 1) -> dict[str, np.ndarray]:
    """``count`` queries in all: half near copies of stored vectors, half random."""
    rng = np.random.default_rng(seed)
    dim, half = base.shape[1], count // 2
    sigma = np.sqrt((1 / 0.81 - 1) / dim)  # expected cosine 0.9 to the source vector
    near = unit(base[rng.choice(len(base), half, replace=False)] + sigma * rng.standard_normal((half, dim)))
    return {"near": near, "random": unit(rng.standard_normal((count - half, dim)))}


def run_one(n: int, dim: int, kind: str, count: int, work: Path) -> dict:
    """Build one index type, query both sets, compare with the flat answers saved in ``work``."""
    import faiss

    from curation.identity.index import build_index, resolve_params, set_search_params

    base = reference(n, dim)
    qs = queries(base, count)
    from curation.identity.config import ReferenceIndexSpec

    spec = ReferenceIndexSpec(type=kind)  # the index-reference defaults
    params = resolve_params(spec, n)
    started = time.perf_counter()
    index = build_index(base, params)
    build_s = time.perf_counter() - started
    out = {"n": n, "dim": dim, "type": kind, "params": params.as_dict(), "build_s": round(build_s, 3),
           "threads": faiss.omp_get_max_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, str(Path(tmp) / "index.faiss"))
        out["file_mb"] = round((Path(tmp) / "index.faiss").stat().st_size / 2**20, 1)
    out.update(query(index, qs, dim, kind, work))
    knob = {"ivf": "nprobe", "hnsw": "ef_search"}.get(kind)
    if knob:  # the same index searched wider: recall against speed
        out["sweep"] = []
        for value in SWEEP[knob]:
            set_search_params(index, replace(params, **{knob: value}))
            out["sweep"].append({knob: value, **query(index, qs, dim, kind, work)})
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


SWEEP = {"nprobe": (16, 64, 256), "ef_search": (64, 256)}  # the default is measured again: cheap


def query(index, qs: dict, dim: int, kind: str, work: Path) -> dict:
    """Throughput and recall@1 (against the flat answers saved in ``work``) for each query set."""
    from curation.identity.index import search

    out = {}
    for name, q in qs.items():
        started = time.perf_counter()
        _, rows = search(index, q, 1)
        seconds = time.perf_counter() - started
        truth_path = work / f"truth-{dim}-{name}.npy"
        if kind == "flat":
            np.save(truth_path, rows[:, 0])
        entry = {"qps": round(len(q) / seconds, 1), "seconds": round(seconds, 2)}
        if truth_path.is_file():
            entry["recall_at_1"] = round(float(np.mean(np.load(truth_path) == rows[:, 0])), 4)
        out[name] = entry
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    p.add_argument("--types", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=600, help="seconds one (dim, type) may take")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "leak_index.json")
    p.add_argument("--table", type=Path, help="print the table of a results file and exit")
    p.add_argument("--one", nargs=3, metavar=("DIM", "TYPE", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())["results"]))
        return 0
    if args.one:
        dim, kind, work = args.one
        print(json.dumps(run_one(args.n, int(dim), kind, args.queries, Path(work))))
        return 0
    types = ["flat"] + [t for t in args.types if t != "flat"]  # flat first: the ground truth for recall
    results = []
    with tempfile.TemporaryDirectory(prefix="leak-bench-") as work:
        for dim in args.dims:
            for kind in types:
                cmd = [sys.executable, __file__, "--n", str(args.n), "--queries", str(args.queries),
                       "--one", str(dim), kind, work]
                print(f"dim {dim} {kind} ...", file=sys.stderr, flush=True)
                started = time.perf_counter()
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                except subprocess.TimeoutExpired:
                    results.append({"n": args.n, "dim": dim, "type": kind, "error": f"over {args.timeout:g} s"})
                    continue
                if proc.returncode != 0:
                    results.append({"n": args.n, "dim": dim, "type": kind,
                                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["wall_s"] = round(time.perf_counter() - started, 1)
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "results": results}, indent=1) + "\n")
    print(table(results))
    return 0


def environment() -> dict:
    import platform

    import faiss

    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "faiss": faiss.__version__, "date": time.strftime("%Y-%m-%d")}


def table(results: list[dict]) -> str:
    """Markdown: one row per (dim, index, search setting); build, memory and file size on the first."""
    lines = ["| N | dim | index | search | build s | q/s near | recall@1 near | q/s random | recall@1 random | "
             "peak RSS MB | file MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['dim']} | {r['type']} | | {r['error']} | | | | | | |")
            continue
        knob = {"ivf": "nprobe", "hnsw": "ef_search"}.get(r["type"])
        settings = [{**({knob: r["params"][knob]} if knob else {}), "near": r["near"], "random": r["random"]}]
        settings += [s for s in r.get("sweep", []) if s[knob] != r["params"][knob]] if knob else []
        for s in sorted(settings, key=lambda s: s.get(knob, 0)):
            first = s.get(knob, 0) == (r["params"][knob] if knob else 0)
            build = (f"{r['build_s']:g} | ", f"{r['peak_rss_mb']:,} | {r['file_mb']:,} |") if first else ("| ", "| |")
            near, rand = s["near"], s["random"]
            lines.append(f"| {r['n']:,} | {r['dim']} | {r['type']} | {f'{knob} {s[knob]}' if knob else 'exact'} | "
                         f"{build[0]}{near['qps']:,} | {near.get('recall_at_1', '-')} | {rand['qps']:,} | "
                         f"{rand.get('recall_at_1', '-')} | {build[1]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
