"""Resumable training checkpoints shared by the training commands.

A checkpoint is ``output_dir/checkpoints/<unit>-<n>/`` (unit ``step`` or
``epoch``), written into a staging folder and renamed into place with its
``state.json`` last, so a killed run leaves either a whole checkpoint or none.
The training log (JSON lines with the unit as key) is trimmed back to the
checkpoint a run resumes from, since the steps after it run again.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def latest_checkpoint(out: Path, unit: str) -> Path | None:
    folder = out / "checkpoints"
    done = sorted(p for p in folder.glob(f"{unit}-*") if (p / "state.json").is_file()) if folder.exists() else []
    return done[-1] if done else None


def checkpoint_number(path: Path | None, unit: str) -> int:
    return int(path.name.removeprefix(f"{unit}-")) if path else 0


def trim_log(path: Path, unit: str, upto: int) -> None:
    """Drop log lines past ``upto`` (those steps or epochs run again)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)[unit] <= upto]
        path.write_text("".join(ln + "\n" for ln in lines))


def save_checkpoint(out: Path, unit: str, number: int, write: Callable[[Path], None], keep: int = 2) -> None:
    """``write(folder)`` fills a staging folder; it becomes ``<unit>-<number>``; only the last ``keep`` stay."""
    folder = out / "checkpoints"
    name = f"{unit}-{number:07d}"
    staging = folder / f".tmp-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    (staging / "state.json").write_text(json.dumps({unit: number}) + "\n")
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    for old in sorted(p for p in folder.glob(f"{unit}-*"))[:-keep]:
        shutil.rmtree(old)


def config_changes(previous: dict, current: dict, resumable: set[str]) -> list[str]:
    """Fields that differ between two dumped training configs, except ``train.<resumable>`` and output_dir."""
    changed = [f"train.{k}" for k in set(previous["train"]) | set(current["train"])
               if previous["train"].get(k) != current["train"].get(k) and k not in resumable]
    changed += [k for k in set(previous) | set(current)
                if k not in ("train", "output_dir") and previous.get(k) != current.get(k)]
    return sorted(changed)


def record_config(out: Path, name: str, current: dict) -> None:
    """Write the dumped config to ``out/name`` atomically."""
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(current, indent=1))
    os.replace(tmp, out / name)
