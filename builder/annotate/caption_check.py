"""The 'caption_check' stage: every caption checked before it becomes a training pair.

In order, a caption is dropped as

* ``caption_too_short``: fewer than ``min_words`` words (runs of letters or digits; "close-up" is two);
* ``caption_too_long``: more than ``max_tokens`` tokens of the text encoder's tokenizer, its start and end
  tokens included (what the generator would truncate). The tokenizer is the CLIP tokenizer of
  ``text_encoder``: 'builtin:tiny-sd' (``builder.models.tiny_sd``), the ``tokenizer/`` folder of a local
  diffusers pipeline, or of a Hub id (from the local cache when offline);
* ``caption_label_mismatch`` (with ``label_agreement: drop``): the caption does not name the record's expression.
  ``flag`` keeps it with ``caption_agrees`` 'no'; ``off`` checks nothing ('n/a').

A caption names an expression with any word of ``EXPRESSION_WORDS``: every spelling of the label maps and the
prompt adjectives (``label_maps.ALIASES``: 'happiness', 'surprised', 'angry', ...) and these common words:

==========  =====================================================================================================
happy       smile(s/d), smiling, grin(s), grinning, beaming, laugh(s), laughing, laughter, joy, joyful, joyous,
            cheerful, delighted, glad, pleased
sad         sorrow, sorrowful, unhappy, crying, tearful, tears, weeping, gloomy, melancholy, downcast, dejected,
            depressed, mournful, grief, grieving, miserable
surprise    astonished, astonishment, amazed, amazement, shock, shocked, startled, stunned
fear        afraid, scared, frightened, fright, terrified, terror, panic, panicked, anxious, horrified
disgust     disgusting, repulsed, revolted, revulsion, repelled, grossed
anger       mad, furious, fury, rage, enraged, irritated, annoyed, irate, hostile, scowl, scowling, glaring
contempt    disdain, disdainful, scorn, scornful, sneer, sneering
neutral     expressionless, emotionless, impassive, deadpan
==========  =====================================================================================================

Words that several expressions share are left out on purpose: 'frown' (lowered brows come with anger, sadness,
fear and concentration), 'smirk' (contempt or amusement), 'serious', 'calm', 'relaxed', 'blank', 'worried',
'tense'. A word within three words after a negation ('no', 'not', 'without', 'never', "isn't", ...) in the
same clause (up to the next punctuation mark) is not counted ("no smile"; in "not sad, but angry" angry
counts). The caption agrees when the label's expression is among those it names (a compound such as 'surprised
with a smile' agrees with 'surprise' and with 'happy'); it disagrees when it names only others, or none (the
drop's detail lists the words found). A record without a label is 'n/a'.

``record.scores["caption_tokens"]`` and ``record.attributes["caption_agrees"]`` hold the results.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from builder.core.records import Record
from builder.core.stage import Column, Filter, ShardContext
from builder.manifest.annotate import CaptionChecks
from builder.manifest.label_maps import ALIASES, canonical_name
from builder.models.captioners import count_tokens

_COMMON: dict[str, tuple[str, ...]] = {
    "happy": ("smile", "smiles", "smiled", "smiling", "grin", "grins", "grinning", "beaming", "laugh", "laughs",
              "laughing", "laughter", "joy", "joyful", "joyous", "cheerful", "delighted", "glad", "pleased"),
    "sad": ("sorrow", "sorrowful", "unhappy", "crying", "tearful", "tears", "weeping", "gloomy", "melancholy",
            "downcast", "dejected", "depressed", "mournful", "grief", "grieving", "miserable"),
    "surprise": ("astonished", "astonishment", "amazed", "amazement", "shock", "shocked", "startled", "stunned"),
    "fear": ("afraid", "scared", "frightened", "fright", "terrified", "terror", "panic", "panicked", "anxious",
             "horrified"),
    "disgust": ("disgusting", "repulsed", "revolted", "revulsion", "repelled", "grossed"),
    "anger": ("mad", "furious", "fury", "rage", "enraged", "irritated", "annoyed", "irate", "hostile", "scowl",
              "scowling", "glaring"),
    "contempt": ("disdain", "disdainful", "scorn", "scornful", "sneer", "sneering"),
    "neutral": ("expressionless", "emotionless", "impassive", "deadpan"),
}
EXPRESSION_WORDS: dict[str, str] = {**ALIASES, **{w: canon for canon, words in _COMMON.items() for w in words}}
"""Word (lower case) -> the canonical expression it names (see the module docstring)."""
EXPRESSION_WORDS_VERSION = 1
NEGATIONS = frozenset({"no", "not", "without", "never", "nor", "neither", "non", "isn't", "aren't", "wasn't",
                       "doesn't", "don't", "nothing", "hardly"})
NEGATION_REACH = 3
"""A negation covers this many words after it."""
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CLAUSE = re.compile(r"[.,;:!?()\n]")
"""Where a negation's reach ends."""


def words(text: str) -> list[str]:
    """The caption's words, lower case: runs of letters or digits, with an apostrophe's tail ("isn't")."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def expressions_named(text: str) -> list[tuple[str, str]]:
    """(word, canonical expression) of every expression word in ``text`` that no negation covers, in order."""
    found = []
    for clause in _CLAUSE.split(text):
        negated_until = -1
        for i, word in enumerate(words(clause)):
            if word in NEGATIONS:
                negated_until = i + NEGATION_REACH
                continue
            canon = EXPRESSION_WORDS.get(word)
            if canon is not None and i > negated_until:
                found.append((word, canon))
    return found


def label_agreement(text: str, label_name: str) -> tuple[str, str]:
    """('yes' | 'no' | 'n/a', what the caption names) for a caption and a record's class name."""
    label = canonical_name(label_name) if label_name else None
    found = expressions_named(text)
    said = ", ".join(f"'{w}' ({c})" for w, c in found) or "no expression word"
    if label is None:
        return "n/a", said
    return ("yes" if any(c == label for _, c in found) else "no"), said


class CaptionCheck(Filter):
    name = "caption_check"
    columns = (
        Column("caption_tokens", "int64", "the caption's length in the text encoder's tokens, with its start and end "
               "tokens", lambda r, meta: int(r.scores["caption_tokens"]) if "caption_tokens" in r.scores else None),
        Column("caption_agrees", "string", "'yes' when the caption names the label's expression, 'no' when it does "
               "not (kept with label_agreement 'flag'), 'n/a' when not checked (label_agreement 'off', or no label)",
               lambda r, meta: r.attributes.get("caption_agrees")),
    )

    def __init__(self, spec: CaptionChecks, label_names: Sequence[str]):
        self.spec, self.label_names = spec, tuple(label_names)
        self.tokenizer = None

    def setup(self) -> None:
        if self.tokenizer is None:
            from builder.models.captioners import load_text_tokenizer

            self.tokenizer = load_text_tokenizer(self.spec.text_encoder)

    def meta(self) -> dict:
        return {"text_encoder": self.spec.text_encoder, "expression_words": EXPRESSION_WORDS_VERSION}

    def check(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        spec, text = self.spec, record.text or ""
        tokens = count_tokens(self.tokenizer, text)
        record.scores["caption_tokens"] = float(tokens)
        n = len(words(text))
        if n < spec.min_words:
            return "caption_too_short", f"{n} words, fewer than {spec.min_words}: {text!r}"
        if tokens > spec.max_tokens:
            return "caption_too_long", f"{tokens} tokens, more than {spec.max_tokens}: {text[:200]!r}"
        if spec.label_agreement == "off":
            record.attributes["caption_agrees"] = "n/a"
            return None
        agrees, said = label_agreement(text, record.label_name)
        record.attributes["caption_agrees"] = agrees
        if agrees == "no" and spec.label_agreement == "drop":
            return ("caption_label_mismatch", f"the caption names {said}, not the label '{record.label_name}': "
                    f"{text[:200]!r}")
        return None
