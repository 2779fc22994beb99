"""Where a build folder stands (``build-dataset status OUT``): its manifest, shards done per stage, what the
finished shards kept and dropped so far, the last error, and whether a release exists and is current.

Reads what the build folder holds (``build.json``, shard stats, the release marker), so it works on a folder
that is being built, failed, or was copied elsewhere. The last error of a run is kept outside the folder, in
the tool's cache (``FER_SYNTH_HOME/runs/``, keyed by the folder's path): a refused run writes nothing into it.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from builder.core.build_folder import BUILD_FILE, MARKER, is_released
from builder.core.shards import STATS, ShardStore


def last_error_file(out: Path) -> Path:
    """Where the last error of runs on ``out`` is kept: the tool's cache, keyed by the folder's real path."""
    import hashlib

    from builder.core.paths import cache_home

    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:24]
    return cache_home() / "runs" / f"{key}.json"


def record_failure(out: Path, command: list[str], message: str) -> None:
    """Keep the message of a failed run on a build folder (for ``status``); best effort."""
    from datetime import datetime, timezone

    if not (Path(out) / BUILD_FILE).is_file():
        return
    path = last_error_file(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"out": str(Path(out).resolve()), "time": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "command": command, "message": message}, indent=1) + "\n")
    except OSError:
        pass  # a full or read-only disk may be what failed: the message on the console is what matters


def clear_failure(out: Path) -> None:
    last_error_file(out).unlink(missing_ok=True)


def resume_hint(out: Path) -> str:
    """One line for a failure message: where the partial results are and how to go on."""
    out = Path(out)
    if not (out / BUILD_FILE).is_file():
        return "nothing was written; fix the problem above and run the command again"
    try:
        done, total = _shards_done(out)
    except Exception:  # a damaged build folder: the error above says which file
        return f"partial results are in {out}; `build-dataset status {out}` shows where it stands"
    return (f"partial results are kept in {out} ({done} of {total} shards done): fix the problem above and run the "
            f"same command again to resume (`build-dataset status {out}` shows where it stands)")


def _shards_done(out: Path) -> tuple[int, int]:
    """(shards every stage finished, shards in all) of the build in ``out``."""
    from builder.manifest.recorded import recorded_manifest
    from builder.pipeline import stage_names

    manifest, _, _ = recorded_manifest(out)
    if manifest.needs_listing():  # recorded by an older version, without its listing
        return 0, 0
    total = manifest.num_shards()
    stages = stage_names(manifest)  # every stage the build runs, not only those that committed a shard
    store = ShardStore(out)
    done = sum(all(store.is_done(stage, s) for stage in stages) for s in range(total)) if stages else 0
    return done, total


def _stage_folders(out: Path) -> list[str]:
    base = Path(out) / "shards"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def status(out: Path) -> dict:
    """The summary ``build-dataset status`` prints (see the module docstring)."""
    from builder.manifest.recorded import recorded_manifest

    out = Path(out)
    manifest, fingerprint, recorded = recorded_manifest(out)
    done, total = _shards_done(out)
    store = ShardStore(out)
    stages = {}
    for stage in _stage_folders(out):
        finished = [s for s in range(total) if store.is_done(stage, s)]
        counts = {"shards": len(finished), "in": 0, "kept": 0, "dropped": Counter()}
        for s in finished:
            st = store.stats(stage, s)
            counts["in"] += st["in"]
            counts["kept"] += st["kept"]
            counts["dropped"].update(st["dropped"])
        counts["dropped"] = dict(sorted(counts["dropped"].items()))
        stages[stage] = counts
    stages = dict(sorted(stages.items(), key=lambda kv: _first_commit(out, kv[0])))
    released = is_released(out, fingerprint)
    newest_shard = max((p.stat().st_mtime for p in (out / "shards").glob(f"*/[0-9]*/{STATS}")), default=0.0)
    review = out / "review.json"
    marker = out / MARKER
    current = released and done == total and marker.stat().st_mtime >= newest_shard and (
        not review.exists() or marker.stat().st_mtime >= review.stat().st_mtime)
    error_file = last_error_file(out)
    error = json.loads(error_file.read_text()) if error_file.is_file() else None
    return {"out": str(out), "manifest": manifest.name, "version": manifest.version, "fingerprint": fingerprint,
            "tool_version": recorded.get("tool_version"), "threads": recorded.get("threads"),
            "shards": {"done": done, "total": total}, "stages": stages,
            "release": {"exists": marker.is_file(), "current": bool(current),
                        "released": _released_total(out) if released else None},
            "last_error": error}


def _first_commit(out: Path, stage: str) -> float:
    """When a stage first committed a shard: the order the stages ran in."""
    return min((p.stat().st_mtime for p in (Path(out) / "shards" / stage).glob(f"[0-9]*/{STATS}")), default=0.0)


def _released_total(out: Path) -> int | None:
    try:
        return json.loads((Path(out) / "stats.json").read_text())["released"]["total"]
    except (OSError, ValueError, KeyError):
        return None


def format_status(s: dict) -> str:
    """``status`` as lines for the console."""
    lines = [f"{s['out']}: {s['manifest']} {s['version']} (fingerprint {s['fingerprint'][:12]}, built by "
             f"build-dataset {s['tool_version']}, {s['threads']} threads)",
             f"shards: {s['shards']['done']} of {s['shards']['total']} done"]
    for name, c in s["stages"].items():
        dropped = ", ".join(f"{r} {n}" for r, n in c["dropped"].items()) or "none dropped"
        lines.append(f"  {name}: {c['shards']} shards, {c['in']} in, {c['kept']} kept; {dropped}")
    release = s["release"]
    if not release["exists"]:
        lines.append("release: none yet" + (" (run the build again to release)" if s["shards"]["done"]
                                            == s["shards"]["total"] else ""))
    else:
        lines.append(f"release: {release['released']} images, " + ("current" if release["current"] else
                     "out of date (run `build-dataset release OUT` or the build again)"))
    if s["last_error"]:
        first = s["last_error"]["message"].splitlines()[0]
        lines.append(f"last error ({s['last_error']['time']}): {first}")
    return "\n".join(lines)
