"""Label maps aligned by canonical emotion name, never by index.

AffectNet, RAF-DB and FER2013 order (and spell) the same emotions differently
(``builder.manifest.label_maps``; method.md). The model predicts the classes of the built
dataset that it saw in training; a test set's classes are mapped onto them by
canonical name. Nothing is dropped silently: the alignment lists the model's
classes the test set lacks and the test set's classes the model cannot
predict, and ``Alignment.to_json`` carries both into the result.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from builder.core.errors import UserError
from builder.manifest.label_maps import (
    CANONICAL,
    LABEL_MAPS,
    align_labels,
    canonical_name,
)


def canonical_names(names: Sequence[str], where: str,
                    label_map_flag: str = "--test-label-map / --train-real-label-map") -> list[str]:
    """Canonical emotions of ``names`` (a dataset's class names); UserError naming ``where`` for an unknown one
    (its fix names ``label_map_flag``, the option that gives a class order)."""
    out = []
    for name in names:
        canon = canonical_name(name)
        if canon is None:
            raise UserError(f"{where}: class '{name}' is not an emotion any label map knows",
                            fix=f"name the classes like one of the label maps ({', '.join(sorted(LABEL_MAPS))}: "
                            f"{', '.join(sorted(set(CANONICAL)))}), or give the class order with "
                            f"{label_map_flag}")
        out.append(canon)
    seen: dict[str, str] = {}
    for name, canon in zip(names, out):
        if canon in seen:
            raise UserError(f"{where}: classes '{seen[canon]}' and '{name}' are the same emotion ({canon})",
                            fix="merge them, or give each class a distinct emotion name")
        seen[canon] = name
    return out


def label_order(spec: str) -> tuple[str, ...]:
    """Class names from ``--*-label-map``: a label map's name (``rafdb``) or a comma-separated list."""
    if spec in LABEL_MAPS:
        return LABEL_MAPS[spec]
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if len(names) < 2:
        raise UserError(f"label map '{spec}' is neither a known label map nor a list of classes",
                        fix=f"use one of {', '.join(sorted(LABEL_MAPS))}, or list the classes in index order "
                        "separated by commas")
    return names


@dataclass(frozen=True)
class Alignment:
    """How a labelled set's classes map onto the model's classes.

    ``model_names`` are the classes the model predicts (the built dataset's
    spelling, in its order); ``set_names`` a labelled set's classes in its own
    order; ``to_model[j]`` the model index of set class ``j`` or None.
    """

    model_names: tuple[str, ...]
    set_names: tuple[str, ...]
    to_model: tuple[int | None, ...]

    @property
    def model_canonical(self) -> list[str]:
        return [canonical_name(n) for n in self.model_names]

    @property
    def set_canonical(self) -> list[str]:
        return [canonical_name(n) for n in self.set_names]

    @property
    def missing_in_set(self) -> list[str]:
        """Model classes this set has no class for."""
        mapped = {i for i in self.to_model if i is not None}
        return [n for i, n in enumerate(self.model_names) if i not in mapped]

    @property
    def missing_in_model(self) -> list[str]:
        """Classes of this set the model cannot predict."""
        return [n for n, i in zip(self.set_names, self.to_model) if i is None]

    def map_label(self, label: int) -> int | None:
        return self.to_model[label]

    def to_json(self, counts: Sequence[int] | None = None) -> dict:
        """The mapping, class by class, plus both sides' missing classes (``counts``: samples per set class)."""
        rows = []
        for j, (name, i) in enumerate(zip(self.set_names, self.to_model)):
            row = {"class": name, "index": j, "canonical": canonical_name(name),
                   "model_class": None if i is None else self.model_names[i], "model_index": i}
            if counts is not None:
                row["samples"] = int(counts[j])
            rows.append(row)
        return {"model_classes": list(self.model_names), "classes": rows,
                "missing_in_set": self.missing_in_set, "missing_in_model": self.missing_in_model}


def align(model_names: Sequence[str], set_names: Sequence[str], where: str = "test set",
          label_map_flag: str = "--test-label-map / --train-real-label-map") -> Alignment:
    """Map ``set_names`` onto ``model_names`` by canonical emotion (both checked: every name known, no repeats)."""
    model_canon = canonical_names(model_names, "the built dataset")
    set_canon = canonical_names(set_names, where, label_map_flag)
    indices, _ = align_labels(model_canon, set_canon)  # the one mapping by canonical name, on the canonical names
    return Alignment(tuple(model_names), tuple(set_names), tuple(indices))
