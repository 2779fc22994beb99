"""The one record type that flows through every stage, and its JSON-lines form."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator


@dataclass
class Drop:
    """Why a stage dropped a record: the stage, a reason code, a sentence for people, and ``related``, the
    sample ids or reference ids the decision points at (``duplicate_of``, ``reference``, ``identity``) for
    tools to read instead of parsing the sentence."""

    stage: str
    reason: str
    detail: str = ""
    related: dict[str, str] | None = None


@dataclass
class Record:
    """One sample: its spec (from the manifest) plus what stages add.

    ``image`` is a path relative to the build folder, set by the generation
    (or ingest) stage. With an ``images`` source, ``source`` names the image it
    came from (a path in the folder, or a dataset row) and ``label`` is -1
    (``label_name`` empty) until a labeller gives the sample a class. ``scores`` holds per-stage measurements (name -> number). ``face``
    is the detected face (box, score, landmarks, number of faces) once a stage
    has looked for one; ``labelling`` holds every labeller's probabilities and
    the calibration verdict (``curation.labelling.calibrate``). ``drop`` is set by the
    stage that rejects the record. ``attributes`` holds strings: a generated sample's prompt axes, an existing
    image's own label (``source_label``) and what annotation stages did (``upscaled_by``, ``caption_source``);
    ``text`` is a training pair's caption.
    """

    sample_id: str
    index: int
    label: int
    label_name: str
    au: list[float]
    attributes: dict[str, str]
    prompt: str
    negative_prompt: str
    seed: int
    image: str | None = None
    source: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    face: dict | None = None
    labelling: dict | None = None
    drop: Drop | None = None
    text: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if data["drop"] is not None and data["drop"]["related"] is None:
            del data["drop"]["related"]  # records of drops without related ids keep the bytes they always had
        if data["text"] is None:
            del data["text"]  # as do records without a caption
        return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Record:
        data = json.loads(line)
        drop = data.pop("drop", None)
        return cls(**data, drop=Drop(**drop) if drop else None)


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(rec.to_json() + "\n")


def read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield Record.from_json(line)
