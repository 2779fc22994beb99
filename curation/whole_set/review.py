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

from collections.abc import Iterator
from pathlib import Path

from builder.core.errors import UserError
from builder.core.records import Drop, Record
from builder.core.stage import GlobalStage

REVIEW_FILE = "review.json"
MAX_LISTED = 10


def parse_decision(decision: object, names, where: str) -> int | None:
    """None for 'reject', the class index for 'relabel:<class>'; anything else is a ``UserError``."""
    if decision == "reject":
        return None
    kind, _, name = decision.partition(":") if isinstance(decision, str) else ("", "", "")
    if kind != "relabel" or name not in names:
        raise UserError(f"{where}: decision {decision!r} is neither 'reject' nor 'relabel:<class>' with a class of "
                        "this dataset", fix=f"use reject, or relabel: followed by one of {', '.join(names)}")
    return list(names).index(name)


def check_sample_ids(decisions: dict, known: set[str], where: str) -> None:
    """Refuse decisions about ids that are not samples of this build (typos, paths, another build's ids)."""
    bad = sorted(sid for sid in decisions if not isinstance(sid, str) or sid not in known)
    if bad:
        pathlike = [sid for sid in bad if any(c in sid for c in "/\\") or sid.startswith(".")]
        shown = ", ".join(repr(s) for s in bad[:MAX_LISTED]) + (f" and {len(bad) - MAX_LISTED} more"
                                                                if len(bad) > MAX_LISTED else "")
        kind = "path-like or unknown" if pathlike else "unknown"
        raise UserError(f"{len(bad)} decision(s) name {kind} sample ids, not samples of this build: {shown}",
                        file=where, fix="use the sample_id values of this build (the dataset's 'sample_id' column, "
                        "or the records/*.jsonl files); nothing was changed")


def merge_decisions(old: dict[str, str], new: dict[str, str], where: str) -> dict[str, str]:
    """The union of two reviews; a sample given two different decisions is refused."""
    conflicts = sorted(sid for sid in set(old) & set(new) if old[sid] != new[sid])
    if conflicts:
        shown = ", ".join(f"{sid} ({old[sid]} -> {new[sid]})" for sid in conflicts[:MAX_LISTED])
        raise UserError(f"{len(conflicts)} decision(s) contradict the review already applied: {shown}",
                        file=where, fix="remove them from this file, or run `build-dataset release OUT --no-review` "
                        "first to drop the earlier decisions; nothing was changed")
    return dict(sorted({**old, **new}.items()))


def read_decisions(path: Path) -> tuple[dict, str | None, str]:
    """(decisions, reviewer's dataset name or None, source: 'fiftyone' or 'file') from a JSON review file; bad
    content is a ``UserError``."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"the file holds a {type(data).__name__}, not an object")
        decisions = data["decisions"]
        if not isinstance(decisions, dict):
            raise TypeError("'decisions' is not an object")
        dataset = data.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise TypeError("'dataset' is not text")
        source = data.get("source", "file")
        if source not in ("fiftyone", "file"):
            raise ValueError(f"'source' is {source!r}, not 'fiftyone' or 'file'")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        why = f"no {exc} key" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"cannot read the review decisions: {why}", file=str(path),
                        fix='write {"decisions": {"<sample_id>": "reject" | "relabel:<class>"}} as UTF-8 JSON') \
            from None
    return decisions, dataset, source


class ReviewStage(GlobalStage):
    name = "review"

    def __init__(self, decisions: dict[str, str], names, dataset: str | None = None, where: str = REVIEW_FILE,
                 source: str = "file"):
        self.names = list(names)
        self.dataset = dataset
        self.source = source
        self.decisions = {sid: parse_decision(d, self.names, f"{where}, sample {sid}")
                          for sid, d in sorted(decisions.items())}
        self.report: dict = {}

    @classmethod
    def from_file(cls, path: Path, names) -> ReviewStage:
        decisions, dataset, source = read_decisions(path)
        return cls(decisions, names, dataset, str(path), source)

    def meta(self) -> dict:
        return {"source": self.source, "dataset": self.dataset, "decisions": len(self.decisions), **self.report}

    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        rejected = relabelled = 0
        seen = set()
        for record in records:
            if record.sample_id not in self.decisions:
                continue
            seen.add(record.sample_id)
            label = self.decisions[record.sample_id]
            if label is None:
                record.drop = Drop(self.name, "reviewer_reject", f"tagged 'reject' in {self.dataset or 'a decisions file'}")
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


def build_sample_ids(manifest) -> set[str]:
    """Every sample id a build of ``manifest`` has (released or dropped)."""
    return {manifest.sample_id(i) for i in range(manifest.total)}


def write_review(out: Path, decisions: dict[str, str], dataset: str | None, source: str) -> Path:
    """Write ``OUT/review.json`` atomically (sorted decisions) and return its path."""
    import json
    import os

    target = Path(out) / REVIEW_FILE
    tmp = target.with_name(f".{REVIEW_FILE}.tmp")
    tmp.write_text(json.dumps({"source": source, "dataset": dataset, "decisions": dict(sorted(decisions.items()))},
                              indent=1, sort_keys=True) + "\n")
    os.replace(tmp, target)
    return target


def add_decisions_file(out: Path, manifest, path: Path) -> dict[str, str]:
    """Validate a decisions file against the build (classes, sample ids) and merge it into ``OUT/review.json``
    (a decision that contradicts one already there is refused); nothing is written when anything is wrong."""
    names = manifest.labels.names
    decisions, dataset, _ = read_decisions(path)
    ReviewStage(decisions, names, dataset, str(path))  # every decision parses
    check_sample_ids(decisions, build_sample_ids(manifest), str(path))
    existing = Path(out) / REVIEW_FILE
    if existing.is_file():
        old, old_dataset, _ = read_decisions(existing)
        ReviewStage(old, names, old_dataset, str(existing))
        decisions, dataset = merge_decisions(old, decisions, str(path)), dataset or old_dataset
    write_review(out, decisions, dataset, "file")
    return decisions
