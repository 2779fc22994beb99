"""Named label maps (class orders) used by FER datasets.

Orders differ between datasets; keep them explicit and map by canonical name,
never by index. See ``shared/docs/method.md``.
"""
from __future__ import annotations

LABEL_MAPS: dict[str, tuple[str, ...]] = {
    # AffectNet: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger (7 contempt).
    "affectnet7": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"),
    "affectnet8": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
    # RAF-DB basic expressions, in file order (1-based in the original label files).
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    # FER2013 (and the mini-Xception models trained on it).
    "fer2013": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
}

DEFAULT_LABEL_MAP = "affectnet7"

# Every spelling above -> one canonical emotion name, used to align label maps.
CANONICAL: dict[str, str] = {
    "neutral": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
}

# Adjective used in prompts for each canonical emotion ("a {expression} face").
EXPRESSION_TEXT: dict[str, str] = {
    "neutral": "neutral",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprised",
    "fear": "fearful",
    "disgust": "disgusted",
    "anger": "angry",
    "contempt": "contemptuous",
}


ALIASES: dict[str, str] = {**CANONICAL, **{text: name for name, text in EXPRESSION_TEXT.items()}}
"""Every spelling of an emotion the tool reads in files and folder names: the label maps' names and the prompt
adjectives ('surprised', 'fearful', ...)."""


def canonical_name(name: str) -> str | None:
    """The canonical emotion for a class name in any built-in spelling (case and spaces ignored), or None."""
    return ALIASES.get(str(name).strip().lower())


def class_index(name: str, names) -> int | None:
    """The index in ``names`` (a label map) of the class ``name`` spells in any built-in spelling, or None."""
    canon = canonical_name(name)
    if canon is None:
        return None
    return next((i for i, n in enumerate(names) if canonical_name(n) == canon), None)


def label_names(label_map: str) -> tuple[str, ...]:
    """Class names of a named label map, in index order."""
    return LABEL_MAPS[label_map]


def canonical(name: str) -> str:
    """Canonical emotion for a class name of any built-in label map."""
    return CANONICAL[name]


def align_labels(source, target) -> tuple[list[int | None], tuple[str, ...]]:
    """For each ``target`` class, the index of the ``source`` class with the same canonical emotion.

    Returns (indices, missing): ``indices[j]`` is the source index for target class ``j`` or None, and
    ``missing`` names the target classes the source lacks (e.g. ``("contempt",)`` from fer2013 to affectnet8).
    Every name must be a class of a built-in label map (``canonical``); the one place label orders are mapped.
    """
    where = {canonical(name): i for i, name in enumerate(source)}
    indices = [where.get(canonical(name)) for name in target]
    return indices, tuple(name for name, i in zip(target, indices) if i is None)


def expression_text(name: str) -> str:
    """Default prompt adjective for a class name of any built-in label map."""
    return EXPRESSION_TEXT[CANONICAL[name]]
