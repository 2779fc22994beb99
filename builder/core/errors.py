"""Errors meant for people: what is wrong, where, and how to fix it.

Every ``UserError`` becomes one message on stderr and exit code 2 in the CLI;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user (manifest, path, model, output folder)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, file: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.file}: {self.message}" if self.file else self.message
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ManifestError(UserError):
    """A manifest that cannot be read or does not validate."""


class OutputDirError(UserError):
    """An output folder that belongs to another build or cannot be used."""


class ModelLoadError(UserError):
    """A generator checkpoint that is missing, offline or malformed."""


class StorageError(UserError):
    """Writing to the build folder failed (disk full, read-only, file-size limit, I/O error). Nothing half-written
    is committed: the run stops, and the same command resumes once the fault is cleared."""


STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EFBIG: "a file would exceed the file-size limit",
                  errno.EIO: "an input/output error occurred", errno.EACCES: "permission is denied"}
"""errno -> what it means for a write: ENOSPC, EDQUOT, EROFS, EFBIG, EIO, EACCES."""


def storage_fault(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (itself, or what it was raised from: libraries wrap them) that says the storage
    failed (see ``STORAGE_ERRNOS``), not that an input is bad; None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_storage_fault(exc: BaseException) -> bool:
    """True when ``storage_fault(exc)`` finds a failed write behind ``exc``."""
    return storage_fault(exc) is not None


def storage_error(exc: BaseException, folder, action: str = "write") -> StorageError:
    """A ``StorageError`` for a failed write under ``folder`` (``exc`` or the storage fault behind it): what
    failed, where, and how to go on."""
    exc = storage_fault(exc) or exc
    why = STORAGE_ERRNOS.get(exc.errno, exc.strerror or type(exc).__name__)
    where = f" ({exc.filename})" if exc.filename else ""
    return StorageError(f"cannot {action}{where}: {why}", file=str(folder),
                        fix="free space or fix the folder's permissions (or choose another --out), then run the same "
                            "command again: finished work is kept and nothing half-written was committed")


def is_run_fault(exc: BaseException) -> bool:
    """True when an exception met while handling one sample concerns the whole run (bad input to the run, a
    failing disk) and must stop it, instead of dropping that sample as ``error``."""
    return isinstance(exc, UserError) or is_storage_fault(exc)
