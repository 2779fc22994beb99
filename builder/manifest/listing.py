"""What a build knows of an images source's files: the listing ``builder.expand.images`` reads from disk."""
from __future__ import annotations

from dataclasses import dataclass

SKIP_REASONS = ("unsupported_format", "dangling_link", "link_outside_folder", "link_loop", "not_a_file",
                "unreadable_entry", "hidden", "subfolder")
REPORTED = SKIP_REASONS[:6]
"""Skip reasons the build's identity and the ingest stage's meta (the card's source section) carry."""


@dataclass(frozen=True)
class Listing:
    """The images of a source: a folder's relative paths, or a dataset's row count; ``skipped`` counts the
    folder entries left out, per reason (sorted pairs). A build folder records it without the paths."""

    kind: str  # "folder" or "dataset"
    root: str
    count: int
    sha256: str
    paths: tuple[str, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()
    labels: tuple[str, ...] = ()  # the images' own label per entry, as written ('' for none), when given
    people: tuple[str, ...] = ()  # an edit source's person id per entry, when a dataset column gives them

    def label(self, index: int) -> str | None:
        """The raw label of entry ``index`` ('' when the source gives it none), or None when the source has no
        labels."""
        return self.labels[index] if self.labels else None

    def entry(self, index: int) -> str:
        """What sample ``index`` reads: a relative path, or a row number."""
        return self.paths[index] if self.kind == "folder" else str(index)

    def reported_skips(self) -> dict[str, int]:
        """The counts of the ``REPORTED`` skip reasons (empty when the folder held nothing else)."""
        return {reason: n for reason, n in self.skipped if reason in REPORTED}

    def summary(self) -> dict:
        """What ``build.json`` records (not the paths: the build folder holds copies of the images)."""
        return {"kind": self.kind, "root": self.root, "count": self.count, "sha256": self.sha256}
