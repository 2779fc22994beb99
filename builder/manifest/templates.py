"""Prompt text: AU-descriptive cues, built-in template sets, and template rendering.

Pure Python (no model), so ``--dry-run`` can expand prompts. ``{au_cues}``
describes a sample's strongest AUs in words ("lip corners strongly pulled up"),
``{au_names}`` lists them by FACS code ("AU6, AU12"); both come from the
sample's own (jittered) AU vector, so the text agrees with AU conditioning.
"""
from __future__ import annotations

import re

# FACS action units: (facial part, what happens to it).
AU_TEXT: dict[str, tuple[str, str]] = {
    "AU1": ("inner brows", "raised"), "AU2": ("outer brows", "raised"), "AU4": ("brows", "lowered and drawn together"),
    "AU5": ("upper eyelids", "raised"), "AU6": ("cheeks", "raised"), "AU7": ("eyelids", "tightened"),
    "AU9": ("nose", "wrinkled"), "AU10": ("upper lip", "raised"), "AU11": ("nasolabial furrows", "deepened"),
    "AU12": ("lip corners", "pulled up"), "AU13": ("lip corners", "pulled up sharply"),
    "AU14": ("lip corners", "dimpled"), "AU15": ("lip corners", "pulled down"), "AU16": ("lower lip", "pulled down"),
    "AU17": ("chin", "raised"), "AU18": ("lips", "puckered"), "AU19": ("tongue", "showing"),
    "AU20": ("lips", "stretched sideways"), "AU22": ("lips", "funneled"), "AU23": ("lips", "tightened"),
    "AU24": ("lips", "pressed together"), "AU25": ("lips", "parted"), "AU26": ("jaw", "dropped"),
    "AU27": ("mouth", "stretched wide open"), "AU32": ("lip", "bitten"), "AU38": ("nostrils", "dilated"),
    "AU39": ("nostrils", "compressed"),
}
# FACS intensity grades A-E on the 0-5 scale.
_GRADES = ((1.5, "slightly"), (2.5, "moderately"), (3.5, "clearly"), (4.5, "strongly"), (99.0, "extremely"))

PLACEHOLDERS = ("expression", "au_cues", "au_names")

# The SyntFER prompt grid ("On Applicability of Synthetic Datasets for FER", 2026): one template per cue style
# (AU names, descriptive, combined) and its demographic axes.
TEMPLATE_SETS: dict[str, dict] = {
    "syntfer": {
        "templates": [
            "A close-up portrait clearly showing an intense and highly expressive {expression} facial expression "
            "({%s}). The subject is a {age} {gender} with {ethnicity} ethnicity. {pose}, {trait}, captured in a "
            "real-world environment." % cue
            for cue in ("au_names", "au_cues", "au_names}: {au_cues")
        ],
        "axes": {
            "gender": ["man", "woman"],
            "age": ["child", "young", "middle-aged", "adult", "old"],
            "ethnicity": ["white", "black", "asian", "middle-eastern", "latino"],
            "pose": ["Frontal view", "Head turned slightly left", "Head turned slightly right",
                     "Head tilted slightly up", "Head tilted slightly down", "Three-quarter view"],
            "trait": ["natural light", "soft studio light", "wearing glasses", "curly hair", "with freckles",
                      "short hair", "long hair"],
        },
    },
}


def au_label(name: str) -> tuple[str, str]:
    """(part, action) for an AU name, including OpenGraphAU's left/right variants (AUL12, AUR12)."""
    if name in AU_TEXT:
        return AU_TEXT[name]
    side = {"L": "left", "R": "right"}[name[2]]
    part, action = AU_TEXT["AU" + name[3:]]
    return f"{side} {part}", action


def au_cues(names: tuple[str, ...], values: list[float], min_intensity: float, max_cues: int) -> tuple[str, str]:
    """(descriptive cues, AU codes) of the strongest AUs at or above ``min_intensity``; ties keep AU order."""
    active = sorted((i for i, v in enumerate(values) if v >= min_intensity), key=lambda i: (-values[i], i))[:max_cues]
    active.sort()
    if not active:
        return "relaxed face", "no action units"
    words = []
    for i in active:
        part, action = au_label(names[i])
        grade = next(word for bound, word in _GRADES if values[i] < bound)
        words.append(f"{part} {grade} {action}")
    return ", ".join(words), ", ".join(names[i] for i in active)


_ARTICLE_FIELD = re.compile(r"\b([Aa]) \{(\w+)\}")


def render_prompt(template: str, values: dict[str, str]) -> str:
    """Fill ``template``; 'a {field}' takes 'an' when the value starts with a vowel."""

    def article(m: re.Match) -> str:
        vowel = values[m.group(2)][:1].lower() in "aeiou"
        return f"{m.group(1)}{'n' if vowel else ''} {{{m.group(2)}}}"

    return " ".join(_ARTICLE_FIELD.sub(article, template).format(**values).split())
