"""What the person running a build decides for this run, beside the manifest (never part of its identity)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    """Run-time choices that travel with every shard task to every worker.

    ``trust_remote_code``: a classifier config may name an ``nn.Module`` class outside torch and this tool
    (off by default: loading a config someone handed you never imports their code). ``threads``: torch's
    intra-op CPU threads for every stage in every worker process; CPU pixels depend on it, so a build
    records the count it started with (``build.json``) and applies it on every resume and worker.
    """

    trust_remote_code: bool = False
    threads: int | None = None


_MACHINE_DEFAULT: int | None = None


def default_threads() -> int:
    """The thread count a new build records when none is given: torch's default in this process, read before
    this module first changed it."""
    global _MACHINE_DEFAULT
    if _MACHINE_DEFAULT is None:
        import torch

        _MACHINE_DEFAULT = torch.get_num_threads()
    return _MACHINE_DEFAULT


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads in this process (a no-op for None); workers call it before each stage's
    setup."""
    if threads is None:
        return
    default_threads()
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def threads_applied(threads: int | None):
    """``apply_threads`` for the duration of a build or release in this process, then the count it had before
    (a library call must not change the caller's torch settings for good)."""
    import torch

    default_threads()
    before = torch.get_num_threads()
    apply_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
