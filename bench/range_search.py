"""Benchmark the whole-set face range search (``curation.whole_set.embeddings.range_neighbours``): exact against IVF.

    .venv/bin/python bench/range_search.py [--sizes 10000 30000 100000] [--dims 128 512]
                                           [--thresholds 0.9 0.95] [--nprobe 8 16 32 64]
                                           [--flat-up-to 100000] [--copy-cosine 0.85 1.0]
                                           [--timeout 600] [--out FILE]
    .venv/bin/python bench/range_search.py --table FILE

The faces are N seeded random unit vectors, ``--dup-share`` of them (default
10 %) in planted near-duplicate groups of 2 to 5: a source vector and copies
of it at cosine about U(0.85, 1.0) to it (``--copy-cosine``), so pairs inside a
group lie on both sides of every threshold from 0.72 up. Unrelated random
vectors are never that similar (cosine about N(0, 1/dim)), so the planted pairs
above a threshold are all the pairs above it; the exact search is checked
against them where it runs. ``--copy-cosine 0.3 1.0`` with 512-d vectors plants
pairs down to the thresholds an ArcFace embedder uses (about 0.3 to 0.5).

Each (N, dim) runs in its own subprocess (peak RSS is its own; one that runs
past ``--timeout`` s is recorded as such). In it: the exact search
(``IndexFlatIP``, only up to ``--flat-up-to`` faces: it is O(N^2 d)) and the
approximate one (the IVF index ``range_neighbours`` builds above its cutoff,
searched with each ``--nprobe``), both through the tool's own code, each at the
lowest threshold; the pairs above the higher thresholds are the same search's
pairs filtered (a range search at a higher radius returns exactly those). It
records seconds (IVF: training and adding, then each search), pairs found,
recall of unordered pairs against the exact search and against the planted
pairs, and whether any pair returned is below its threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, dim: int, share: float = 0.1, seed: int = 0,
            copy_cosine: tuple[float, float] = (0.85, 1.0)) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N unit vectors, the planted groups as arrays of rows): ``share`` of the rows in groups of 2-5, each a
    source row and copies at cosine about U(*copy_cosine) to it."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # chunks keep the float64 temporaries small
        x[start:start + 100_000] = unit(rng.standard_normal((min(100_000, n - start), dim)))
    members = rng.permutation(n)[:int(n * share)]
    sizes = rng.integers(2, 6, size=len(members))
    ends = np.cumsum(sizes)
    ends = np.append(ends[ends < len(members)], len(members))
    groups = [g for g in np.split(members, ends[:-1]) if len(g) >= 2]
    sources = np.concatenate([np.full(len(g) - 1, g[0]) for g in groups])
    copies = np.concatenate([g[1:] for g in groups])
    cosine = rng.uniform(*copy_cosine, size=len(copies))
    sigma = np.sqrt((1 / cosine**2 - 1) / dim)[:, None]  # expected cosine of unit(v + sigma * noise) to v
    x[copies] = unit(x[sources] + sigma * rng.standard_normal((len(copies), dim)))
    return x, groups


def planted_pairs(x: np.ndarray, groups: list[np.ndarray], threshold: float) -> set[tuple[int, int]]:
    """The unordered pairs inside the planted groups with cosine above ``threshold``."""
    out = set()
    for g in groups:
        sims = x[g] @ x[g].T
        a, b = np.nonzero(np.triu(sims > threshold, 1))
        out.update((int(min(g[i], g[j])), int(max(g[i], g[j]))) for i, j in zip(a, b))
    return out


def pairs_of(neighbours: list[dict[int, float]], threshold: float) -> dict[tuple[int, int], float]:
    """Unordered pairs above ``threshold`` (from either side) with their similarity."""
    return {(min(i, j), max(i, j)): s for i, near in enumerate(neighbours) for j, s in near.items() if s > threshold}


def recall(found, truth) -> float | None:
    return round(len(truth & set(found)) / len(truth), 5) if truth else None


def run_one(n: int, dim: int, thresholds: list[float], probes: list[int], flat_up_to: int, share: float,
            copy_cosine: tuple[float, float] = (0.85, 1.0), tool: bool = False) -> dict:
    import faiss

    from curation.identity.index import build_index
    from curation.whole_set.embeddings import (
        NPROBE,
        describe_search,
        neighbour_dicts,
        range_neighbours,
        range_pairs,
        search_params,
    )

    x, groups = planted(n, dim, share, copy_cosine=tuple(copy_cosine))
    low = min(thresholds)
    truth = {t: planted_pairs(x, groups, t) for t in thresholds}
    out = {"n": n, "dim": dim, "threads": faiss.omp_get_max_threads(), "planted_groups": len(groups),
           "planted_pairs": {str(t): len(truth[t]) for t in thresholds}}

    def score(neighbours) -> dict:
        found = pairs_of(neighbours, low)
        rows = np.array(list(found), np.int64).reshape(-1, 2)
        exact = np.einsum("ij,ij->i", x[rows[:, 0]], x[rows[:, 1]]) if len(rows) else np.zeros(0)
        per = {}
        for t in thresholds:
            above = {p for p, s in found.items() if s > t}
            per[str(t)] = {"pairs": len(above), "recall_planted": recall(above, truth[t])}
            if flat is not None:
                per[str(t)]["recall_exact"] = recall(above, flat[t])
        return {"thresholds": per, "min_similarity": round(min(found.values()), 6) if found else None,
                "below_threshold": int(sum(s <= low for s in found.values())),
                "max_similarity_error": float(np.abs(exact - np.array(list(found.values()))).max()) if found else 0.0}

    flat = None
    if n <= flat_up_to:
        started = time.perf_counter()
        neighbours = range_neighbours(x, low, exact_up_to=n)
        seconds = time.perf_counter() - started
        found = pairs_of(neighbours, low)
        flat = {t: {p for p, s in found.items() if s > t} for t in thresholds}
        out["flat"] = {"seconds": round(seconds, 3), **score(neighbours)}
        out["flat"]["matches_planted"] = {str(t): flat[t] == truth[t] for t in thresholds}

    params = search_params(n, exact_up_to=0, nprobe=NPROBE)
    out["ivf"] = {"params": describe_search(params), "nprobe": {}}
    if probes:
        started = time.perf_counter()
        index = build_index(x, params)
        out["ivf"]["build_s"] = round(time.perf_counter() - started, 3)
    for p in probes:
        faiss.extract_index_ivf(index).nprobe = min(p, params.nlist)
        started = time.perf_counter()
        neighbours = neighbour_dicts(range_pairs(index, x, low), n)
        out["ivf"]["nprobe"][str(p)] = {"search_s": round(time.perf_counter() - started, 3), **score(neighbours)}
    if tool:
        out["tool"] = {}
        for t in thresholds:  # as a stage searches: one range search at t, with the cells probes(t) picks
            chosen = search_params(n, exact_up_to=0, threshold=t)
            started = time.perf_counter()
            found = pairs_of(range_neighbours(x, t, exact_up_to=0), t)
            reference = flat[t] if flat is not None else truth[t]
            out["tool"][str(t)] = {"params": describe_search(chosen), "seconds": round(time.perf_counter() - started, 3),
                                   "pairs": len(found), "recall": recall(found, reference),
                                   "against": "exact" if flat is not None else "planted"}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def tool_table(results: list[dict]) -> str:
    """One row per (N, dim, threshold) of the ``--tool`` searches."""
    lines = ["| N | dim | threshold | search the tool chose | seconds (training included) | pairs | recall |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for t, e in r.get("tool", {}).items():
            p = e["params"]
            name = "exact (flat)" if p["exact"] else f"ivf nlist {p['nlist']:,} nprobe {p['nprobe']}"
            lines.append(f"| {r['n']:,} | {r['dim']} | {t} | {name} | {e['seconds']:,.1f} | {e['pairs']:,} | "
                         f"{e['recall']} |")
    return "\n".join(lines)


def table(results: list[dict], thresholds: list[float]) -> str:
    head = ["N", "dim", "search", "seconds"] + [f"pairs > {t:g}" for t in thresholds] + \
        [f"recall > {t:g}" for t in thresholds] + ["below threshold", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(r, name, seconds, entry, rss=""):
        cells = [f"{r['n']:,}", str(r["dim"]), name, seconds]
        cells += [f"{entry['thresholds'][str(t)]['pairs']:,}" for t in thresholds]
        cells += [str(entry["thresholds"][str(t)].get("recall_exact", entry["thresholds"][str(t)]["recall_planted"]))
                  for t in thresholds]
        return "| " + " | ".join(cells + [str(entry["below_threshold"]), rss]) + " |"

    for r in results:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['dim']} | | {r['error']} |" + " |" * (len(head) - 4))
            continue
        if "flat" in r:
            lines.append(row(r, "exact (flat)", f"{r['flat']['seconds']:,.1f}", r["flat"], f"{r['peak_rss_mb']:,.0f}"))
        ivf = r["ivf"]
        for p, entry in ivf["nprobe"].items():
            seconds = f"{ivf['build_s']:,.1f} + {entry['search_s']:,.1f}"
            lines.append(row(r, f"ivf nlist {ivf['params']['nlist']:,} nprobe {p}", seconds, entry,
                             "" if "flat" in r else f"{r['peak_rss_mb']:,.0f}"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95])
    ap.add_argument("--nprobe", type=int, nargs="*", default=[8, 16, 32, 64])
    ap.add_argument("--tool", action="store_true", help="also search each threshold as the stages do (the "
                    "cells curation.whole_set.embeddings.probes picks, or exact), timed with the index's training")
    ap.add_argument("--flat-up-to", type=int, default=100_000, help="largest N searched exactly too")
    ap.add_argument("--dup-share", type=float, default=0.1)
    ap.add_argument("--copy-cosine", type=float, nargs=2, default=[0.85, 1.0], metavar=("LOW", "HIGH"),
                    help="planted copies' cosine to their source, uniform in [LOW, HIGH]")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per (N, dim)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "range_search.json")
    ap.add_argument("--table", type=Path, help="print the table of a results file and exit")
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # N dim: run in this process
    args = ap.parse_args(argv)
    if args.table:
        data = json.loads(args.table.read_text())
        print(table(data["results"], data["thresholds"]))
        if any("tool" in r for r in data["results"]):
            print("\n" + tool_table(data["results"]))
        return 0
    if args.one:
        print(json.dumps(run_one(*args.one, args.thresholds, args.nprobe, args.flat_up_to, args.dup_share,
                                 args.copy_cosine, args.tool)))
        return 0
    import faiss

    results = []
    for dim in args.dims:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--one", str(n), str(dim), "--thresholds", *map(str, args.thresholds),
                   "--nprobe", *map(str, args.nprobe), "--flat-up-to", str(args.flat_up_to),
                   "--dup-share", str(args.dup_share), "--copy-cosine", *map(str, args.copy_cosine)] + \
                (["--tool"] if args.tool else [])
            started = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"n": n, "dim": dim, "error": f"over {args.timeout} s"}
            except subprocess.CalledProcessError as exc:
                result = {"n": n, "dim": dim, "error": exc.stderr.strip().splitlines()[-1][:200]}
            result["wall_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    data = {"thresholds": args.thresholds, "nprobe": args.nprobe, "dup_share": args.dup_share,
            "copy_cosine": args.copy_cosine,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                        "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()},
            "extrapolated_1m": extrapolate(results), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(table(results, args.thresholds))
    if args.tool:
        print("\n" + tool_table(results))
    print(f"\nExtrapolated to 1,000,000 faces (seconds): {json.dumps(data['extrapolated_1m'])}")
    return 0


def extrapolate(results: list[dict]) -> dict:
    """From each dim's largest measured N: exact search grows as N^2; IVF (nlist ~ 4 sqrt(N), fixed nprobe:
    training, adding and the per-query scan of nprobe cells of N / nlist faces) as N^1.5."""
    from curation.whole_set.embeddings import NPROBE

    out = {}
    for dim in sorted({r["dim"] for r in results}):
        ok = [r for r in results if r["dim"] == dim and "error" not in r]
        flat = max((r for r in ok if "flat" in r), key=lambda r: r["n"], default=None)
        ivf = max(ok, key=lambda r: r["n"], default=None)
        entry = {}
        if flat:
            entry["flat_from_n"] = flat["n"]
            entry["flat_s"] = round(flat["flat"]["seconds"] * (1e6 / flat["n"]) ** 2)
        if ivf and str(NPROBE) in ivf["ivf"]["nprobe"]:
            scale = (1e6 / ivf["n"]) ** 1.5
            entry["ivf_from_n"] = ivf["n"]
            entry[f"ivf_nprobe{NPROBE}_s"] = round((ivf["ivf"]["build_s"] +
                                                   ivf["ivf"]["nprobe"][str(NPROBE)]["search_s"]) * scale)
        out[str(dim)] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
