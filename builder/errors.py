"""Errors meant for people: what is wrong, where, and how to fix it.

Every ``UserError`` becomes one message on stderr and exit code 2 in the CLI;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

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
