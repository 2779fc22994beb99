"""The 'review' global stage: apply a human reviewer's decisions to the released samples.

``build-dataset release OUT`` reads the tags a reviewer set in the FiftyOne
App (``reject``, ``relabel:<class>``) into ``OUT/review.json``::

    {"dataset": "<FiftyOne dataset name>", "decisions": {"<sample_id>": "reject" | "relabel:<class>"}}

and releases again; this stage runs last among the global stages. ``reject``
drops the sample as ``reviewer_reject``; ``relabel:<class>`` sets its label
(its ``target_label`` stays, its disposition becomes ``reviewer_relabelled``).
Decisions about samples that are not released (already dropped by a stage)
are counted, not applied.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from builder.errors import UserError
from builder.records import Drop, Record
from builder.stage import GlobalStage

REVIEW_FILE = "review.json"


def parse_decision(decision: str, names, where: str) -> int | None:
    """None for 'reject', the class index for 'relabel:<class>'; anything else is a ``UserError``."""
    if decision == "reject":
        return None
    kind, _, name = decision.partition(":")
    if kind != "relabel" or name not in names:
        raise UserError(f"{where}: decision {decision!r} is neither 'reject' nor 'relabel:<class>' with a class of "
                        "this dataset", fix=f"use reject, or relabel: followed by one of {', '.join(names)}")
    return list(names).index(name)


class ReviewStage(GlobalStage):
    name = "review"

    def __init__(self, decisions: dict[str, str], names, dataset: str | None = None, where: str = REVIEW_FILE):
        self.names = list(names)
        self.dataset = dataset
        self.decisions = {sid: parse_decision(d, self.names, f"{where}, sample {sid}")
                          for sid, d in sorted(decisions.items())}
        self.report: dict = {}

    @classmethod
    def from_file(cls, path: Path, names) -> ReviewStage:
        try:
            data = json.loads(Path(path).read_text())
            decisions = data["decisions"]
            if not isinstance(decisions, dict):
                raise TypeError("'decisions' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot read the review decisions: {exc}", file=str(path),
                            fix="run `build-dataset release OUT` again to rewrite it from the FiftyOne tags, or "
                                "delete it to release without review") from exc
        return cls(decisions, names, data.get("dataset"), str(path))

    def meta(self) -> dict:
        return {"dataset": self.dataset, "decisions": len(self.decisions), **self.report}

    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        rejected = relabelled = 0
        seen = set()
        for record in records:
            if record.sample_id not in self.decisions:
                continue
            seen.add(record.sample_id)
            label = self.decisions[record.sample_id]
            if label is None:
                record.drop = Drop(self.name, "reviewer_reject", f"tagged 'reject' in {self.dataset or 'review'}")
                rejected += 1
            elif label != record.label:
                old = record.label_name or "none"
                record.label, record.label_name = label, self.names[label]
                if record.labelling is not None:
                    record.labelling = {**record.labelling, "disposition": "reviewer_relabelled",
                                        "final": self.names[label], "reviewer": f"{old} -> {self.names[label]}"}
                relabelled += 1
        self.report = {"rejected": rejected, "relabelled": relabelled,
                       "not_released": len(set(self.decisions) - seen)}
        yield from records
