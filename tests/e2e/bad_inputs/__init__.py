"""The bad-input corpus beyond manifests: configs, images, checkpoints, build folders, decisions, faults.

Each case is a function registered with ``@case`` in one of the ``cases_*`` modules. It gets a fresh
folder and the shared ``Env`` and returns a ``Case``: the command line to run, the file the message must
name, the substrings it must contain, and the files that must be left exactly as they were. The test
(``tests/test_bad_inputs.py``) runs ``build-dataset`` in-process and checks: exit code 2, one ``error:``
message naming the file, a ``fix:`` line, no traceback, the expected text, nothing changed, and the case's
own ``check`` (e.g. "nothing was executed").
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One bad input and what ``build-dataset`` must answer."""

    argv: list[str]
    file: str
    expect: list[str]
    unchanged: list[Path] = field(default_factory=list)
    check: Callable[[], None] | None = None


CASES: dict[str, Callable] = {}


def case(name: str):
    """Register ``fn(tmp_path, env) -> Case`` under ``name`` (unique across every cases module)."""

    def register(fn):
        if name in CASES:
            raise ValueError(f"bad-input case {name!r} is defined twice")
        CASES[name] = fn
        return fn

    return register


def snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    """Every file under ``paths`` (files or folders) with its bytes, to compare before and after a case."""
    out: dict[str, bytes | None] = {}
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            out[str(p)] = p.read_bytes() if p.exists() else None
    return out


for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("cases_"):
        importlib.import_module(f"{__name__}.{_module.name}")
