"""The 'caption' stage: the text of each training pair, from a template or a vision-language model.

``annotate.captions.model: template`` writes what the tool knows of the aligned crop, and nothing else::

    a [black-and-white ]close-up photo of a person with a happy facial expression[, head pose][: AU cues]

* the expression: the record's label in its prompt adjective (``label_maps.EXPRESSION_TEXT``: 'happy',
  'surprised', 'angry', ...); a record without a label is 'a close-up photo of a person's face';
* black-and-white: every pixel's three channels within ``GREY_TOLERANCE`` of each other (grey sources such as
  FER2013 or CK+ stay grey in the crop, and a generator trained on them should be told so);
* the head pose, from the aligned five landmarks (``record.face["aligned_landmarks"]``: left eye, right eye,
  nose, left and right mouth corner, as the picture shows them): yaw moves the nose tip sideways from the eyes'
  midpoint by about half the eye distance times tan(yaw) (the tip stands about half an eye distance in front of
  the eyes), so the offset ``(nose_x - eyes_mid_x) / eye_distance`` below ``FRONTAL`` (yaw under ~15 degrees)
  is 'facing the camera', below ``TURNED`` (~30 degrees) 'head turned slightly to the left/right', above it
  'head turned to the left/right', left and right as seen in the picture. Roll is undone by the alignment and
  pitch is not measured, so neither is said; without aligned landmarks the pose is left out;
* the AU cues: the active AUs of ``record.au`` (intensity >= ``ACTIVE``, 1 on the FACS 0-5 scale), strongest
  first (ties in AU-set order), at most ``MAX_CUES``, each as its facial part, intensity grade and action from
  ``manifest.templates`` ('lip corners strongly pulled up'); a sided OpenGraphAU variant (AUL12) is left out
  when its bilateral AU is active, and AUs the detector did not measure (None) are never mentioned. The
  weakest cues are left out until the caption fits ``annotate.checks.max_tokens`` tokens of the text encoder
  (``checks.text_encoder``), so a template caption is never too long for the generator it will train.

Never a name, an age, a gender or anything else the tool did not measure. Any other model is a transformers
image-text-to-text model (``builder.models.captioners``) asked ``annotate.captions.instruction``, in batches of
``batch_size``; greedy, or sampled with ``derive_seed(seed, index, 'caption')`` per image, so a caption depends
on its image only, never on its batch or shard. ``record.text`` holds the caption and
``record.attributes["caption_source"]`` 'template' or the model's reference.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from builder.core.errors import is_run_fault
from builder.core.records import Drop, Record
from builder.core.seeding import derive_seed
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources
from builder.manifest.annotate import Annotate
from builder.manifest.au_sets import AU_SETS
from builder.manifest.label_maps import EXPRESSION_TEXT, canonical_name
from builder.manifest.templates import au_cues

TEMPLATE = ("a [black-and-white ]close-up photo of a person with a {expression} facial expression[, {head pose}]"
            "[: {AU cues, strongest first}]")
"""The template's form, recorded in the stage's meta (a change of wording must change it: resumed builds check)."""
TEMPLATE_VERSION = 1
ACTIVE = 1.0
"""An AU at or above this intensity (FACS 0-5) is described."""
MAX_CUES = 5
"""At most this many AU cues per caption (five cues and the rest fit CLIP's 77 tokens)."""
GREY_TOLERANCE = 2
"""Largest difference between a pixel's channels (0-255) of a black-and-white crop."""
FRONTAL, TURNED = 0.13, 0.29
"""Nose offset / eye distance below which the head faces the camera (~15 degrees of yaw), and from which it is
turned, not slightly turned (~30 degrees)."""


class CaptionStage(Stage):
    name = "caption"
    columns = (
        Column("text", "string", "the caption: the expression and the facial movements that make it",
               lambda r, meta: r.text),
        Column("caption_source", "string", "what wrote the caption: 'template' (the label, the measured AUs and "
               "head pose) or the vision-language model's reference",
               lambda r, meta: r.attributes.get("caption_source")),
    )

    def __init__(self, spec: Annotate, label_names: Sequence[str], seed: int, device: str = "auto"):
        self.spec, self.label_names, self.seed, self.device = spec, tuple(label_names), seed, device
        self.captions = spec.captions
        self.captioner = self.tokenizer = None

    @property
    def template(self) -> bool:
        return self.captions.model == "template"

    @property
    def resources(self) -> Resources:
        return Resources() if self.template else device_resources(self.device)

    def setup(self) -> None:
        if self.template and self.tokenizer is None:
            from builder.models.captioners import load_text_tokenizer

            self.tokenizer = load_text_tokenizer(self.spec.checks.text_encoder)
        elif not self.template and self.captioner is None:
            from builder.models.captioners import load_captioner

            self.captioner = load_captioner(self.captions.model, self.device)

    def meta(self) -> dict:
        if self.template:
            checks = self.spec.checks
            return {"model": "template", "template": TEMPLATE, "version": TEMPLATE_VERSION, "max_cues": MAX_CUES,
                    "fit_to": {"text_encoder": checks.text_encoder, "max_tokens": checks.max_tokens}}
        from builder.models.captioners import SAMPLING

        c = self.captions
        out = {"model": c.model, "sha256": self.captioner.sha256 if self.captioner else None,
               "instruction": c.instruction, "sampling": c.sampling, "max_new_tokens": c.max_new_tokens}
        if c.sampling == "seeded":
            out.update(SAMPLING)
        return out

    def runtime(self) -> dict:
        if self.captioner is None:
            return {}
        return {"device": self.captioner.device, "dtype": self.captioner.dtype, "batch_size": self.captions.batch_size}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        if self.template:
            for record in records:
                self._guarded(record, lambda r: self._write(r, template_caption(
                    r, _open(ctx, r), self.spec.aus.au_set, self._fits), "template"))
                yield record
            return
        size = self.captions.batch_size
        for start in range(0, len(records), size):
            batch = records[start:start + size]
            images = {}
            for record in batch:
                self._guarded(record, lambda r: images.__setitem__(r.sample_id, _open(ctx, r)))
            ready = [r for r in batch if r.sample_id in images]
            if ready:
                self._caption(ready, [images[r.sample_id] for r in ready])
            yield from batch

    def _caption(self, records: list[Record], images: list) -> None:
        c = self.captions
        seeds = [derive_seed(self.seed, r.index, "caption") for r in records] if c.sampling == "seeded" else None
        texts = self.captioner.caption(images, c.instruction, c.max_new_tokens, seeds)
        for record, text in zip(records, texts, strict=True):
            self._write(record, text, c.model)

    def _fits(self, text: str) -> bool:
        from builder.models.captioners import count_tokens

        return count_tokens(self.tokenizer, text) <= self.spec.checks.max_tokens

    @staticmethod
    def _write(record: Record, text: str, source: str) -> None:
        record.text = text
        record.attributes["caption_source"] = source

    def _guarded(self, record: Record, work) -> None:
        """``work(record)``; a failure of this record alone (an unreadable crop) drops it as 'error'."""
        try:
            work(record)
        except Exception as exc:  # a bad sample is counted and skipped, never a crash
            if is_run_fault(exc):
                raise
            record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")


def _open(ctx: ShardContext, record: Record):
    from builder.core.images import open_rgb8

    if not record.image:
        raise ValueError("the record has no image")
    return open_rgb8(ctx.resolve(record.image))


# -- the template -----------------------------------------------------------------------------------------------------
def template_caption(record: Record, image, au_set: str, fits=None) -> str:
    """The template caption of a record and its aligned crop (a PIL image or None), its weakest AU cues left out
    until ``fits(caption)`` (when given); see the module docstring."""
    canon = canonical_name(record.label_name) if record.label_name else None
    grey = "black-and-white " if image is not None and is_grey(image) else ""
    if canon is None:
        text = f"a {grey}close-up photo of a person's face"
    else:
        adjective = EXPRESSION_TEXT[canon]
        text = f"a {grey}close-up photo of a person with {_article(adjective)} {adjective} facial expression"
    pose = head_pose((record.face or {}).get("aligned_landmarks"))
    if pose:
        text += f", {pose}"
    cues = active_au_cues(AU_SETS[au_set], record.au)
    while cues and fits is not None and not fits(f"{text}: {', '.join(cues)}"):
        cues.pop()
    return f"{text}: {', '.join(cues)}" if cues else text


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def is_grey(image) -> bool:
    """True when every pixel's channels are within ``GREY_TOLERANCE`` of each other (a black-and-white photo)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2)).max()) <= GREY_TOLERANCE


def head_pose(landmarks) -> str | None:
    """'facing the camera', 'head turned slightly to the left', ... from five aligned landmarks, or None."""
    if not landmarks or len(landmarks) != 5:
        return None
    points = np.asarray(landmarks, dtype=np.float64)
    (left_x, _), (right_x, _), (nose_x, _) = points[:3]
    eyes = right_x - left_x
    if not np.isfinite(points).all() or eyes <= 0:
        return None
    offset = (nose_x - (left_x + right_x) / 2) / eyes
    if abs(offset) < FRONTAL:
        return "facing the camera"
    side = "left" if offset < 0 else "right"
    return f"head turned slightly to the {side}" if abs(offset) < TURNED else f"head turned to the {side}"


def active_au_cues(names: Sequence[str], values: Sequence[float | None]) -> list[str]:
    """The cues of the AUs at or above ``ACTIVE``, strongest first (ties in set order), at most ``MAX_CUES``;
    unmeasured (None) AUs and sided variants of an active bilateral AU are left out."""
    if not values:
        return []
    if len(values) != len(names):
        raise ValueError(f"{len(values)} AU intensities for the {len(names)} AUs of the set")
    active = {name: float(v) for name, v in zip(names, values) if v is not None and float(v) >= ACTIVE}
    order = sorted(active, key=lambda n: (-active[n], names.index(n)))
    order = [n for n in order if not (n[2:3] in ("L", "R") and f"AU{n[3:]}" in active)]
    return [au_cues((name,), [active[name]], ACTIVE, 1)[0] for name in order[:MAX_CUES]]
