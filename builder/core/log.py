"""The tool's messages: one ``fer_synth`` logger; the CLI decides where they go (``--quiet``, ``--verbose``,
``--log-file``), a library caller keeps Python's logging defaults.

``info(message)`` is the default ``log`` of the API: a message that starts with ``warning:`` is logged as a
warning (shown even with ``--quiet``), any other as info.
"""
from __future__ import annotations

import logging

logger = logging.getLogger("fer_synth")


def info(message: str) -> None:
    """Log one of the tool's messages (``warning: ...`` at warning level)."""
    if message.startswith("warning"):
        logger.warning(message)
    else:
        logger.info(message)


def debug(message: str) -> None:
    """A detail shown with ``--verbose`` and written to ``--log-file``."""
    logger.debug(message)


def configure(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Messages to stderr at ``level`` (plain text, as the tool words them), and every message with a timestamp
    to ``log_file`` when given. Idempotent: handlers this module set earlier are replaced."""
    import sys

    for handler in [h for h in logger.handlers if getattr(h, "_fer_synth", False)]:
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers = [console]
    if log_file:
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file)
    for handler in handlers:
        handler._fer_synth = True
        logger.addHandler(handler)
    logger.setLevel(min(level, logging.DEBUG if log_file else level))
    logger.propagate = False
