"""The manifest's root: its sections, the rules across them, and the build's identity."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, PrivateAttr, model_validator

from builder.core.config import Strict, fail
from builder.manifest.annotate import Annotate
from builder.manifest.common import ADDED_LATER, strip_added_later
from builder.manifest.curation import Curation
from builder.manifest.edit import EditSource
from builder.manifest.generation import Generator
from builder.manifest.images import ImagesSource
from builder.manifest.labelling import Labelling
from builder.manifest.labels import ActionUnits, Labels
from builder.manifest.listing import Listing
from builder.manifest.output import Output
from builder.manifest.prompts import Prompts

NOT_IDENTITY = ("device", "batch_size", "speed")
"""Generator settings a build may change when it resumes (they do not change any image)."""


class Manifest(Strict):
    """A synthesis manifest: one synthetic FER dataset build."""

    _listing: Listing | None = PrivateAttr(default=None)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        max_length=96,
        description="Dataset name: lower-case letters, digits, '.', '_' and '-'. Prefixes sample ids.",
    )
    version: str = Field(
        default="0.1.0", pattern=r"^\d+\.\d+\.\d+$", description="Dataset version, MAJOR.MINOR.PATCH."
    )
    description: str = Field(default="", description="Free text for the data card.")
    seed: int = Field(ge=0, lt=2**63, description="Global seed; with the sample index it fixes every draw.")
    labels: Labels = Field(description="Label map and per-class counts.")
    images: ImagesSource | None = Field(
        default=None, description="Label an existing image collection instead of generating: the images go "
        "through ingest, the same curation and the labellers, and get the labellers' classes. Replaces "
        "generator, prompts and labels.counts; needs labelling.")
    edit: Annotated[EditSource | None, ADDED_LATER] = Field(
        default=None, description="Edit the expression of existing faces instead of generating from noise: every "
        "source image edited to every target class with the generator, identity kept and checked, splits grouped "
        "by person. Replaces prompts and labels.counts; needs generator and labelling.")
    prompts: Prompts | None = Field(default=None, description="Prompt templates and axes (required when "
                                    "generating).")
    aus: ActionUnits = Field(default_factory=ActionUnits, description="Action unit targets per class.")
    generator: Generator | None = Field(default=None, description="Diffusion model and sampling settings "
                                        "(required when generating or editing).")
    annotate: Annotated[Annotate | None, ADDED_LATER] = Field(
        default=None, description="Turn an images source into generator training pairs: aligned crops, small "
        "faces super-resolved, AU intensities and captions (needs images and images.license).")
    labelling: Labelling | None = Field(default=None, description="Label calibration by expert models; without "
                                        "it, labels are the generation targets, unverified.")
    curation: Curation = Field(default_factory=Curation, description="Curation stage settings.")
    output: Output = Field(default_factory=Output, description="Splits and sharding.")

    @model_validator(mode="after")
    def _annotate_needs_images(self) -> Manifest:
        if self.annotate is not None and self.images is None:
            raise fail("annotate_source", "needs an 'images' source", "add images: {{folder: ..., license: ...}} "
                       "(training pairs are made from existing faces)", at="annotate")
        return self

    @model_validator(mode="after")
    def _edit_sections(self) -> Manifest:
        edit = self.edit
        if edit is None:
            return self
        if self.images is not None:
            raise fail("edit_conflict", "is not used with an 'edit' source", "keep one source: 'images' labels "
                       "existing images, 'edit' changes their expressions", at="images")
        for key, value, why in (("prompts", self.prompts, "edit.prompt is the target prompt"),
                                ("labels.counts", self.labels.counts, "every source is edited to every target"),
                                ("generator.layout", self.generator and self.generator.layout,
                                 "the source image is the layout")):
            if value is not None:
                raise fail("edit_conflict", "is not used with an 'edit' source", "remove '{key}': {why}", at=key,
                           key=key, why=why)
        if self.generator is None:
            raise fail("missing", "required field is missing", "add 'generator': the model that edits the faces "
                       "(see manifests/edit-demo.yaml)", at="generator")
        if self.generator.guidance is not None and self.generator.guidance.wrt != "text":
            raise fail("edit_conflict", "edits are guided through the text conditioning only",
                       "set generator.guidance.wrt: text (or remove guidance)", at="generator.guidance.wrt")
        if self.generator.scheduler not in ("default", "ddim"):
            raise fail("edit_scheduler", "edits invert and denoise with DDIM, not '{scheduler}'",
                       "remove generator.scheduler or set it to ddim", at="generator.scheduler",
                       scheduler=self.generator.scheduler)
        if self.labelling is None:
            raise fail("labelling_required", "required field is missing", "add a 'labelling' section: the labellers "
                       "check that each edit shows its target expression (confirm, relabel or reject)", at="labelling")
        for name in edit.targets or ():
            if name not in self.labels.names:
                raise fail("unknown_label", "'{name}' is not a class of label map {label_map}",
                           "use one of: " + ", ".join(self.labels.names), at="edit.targets", name=name,
                           label_map=self.labels.label_map)
        return self

    @model_validator(mode="after")
    def _source_sections(self) -> Manifest:
        if self.edit is not None:
            return self
        if self.images is None:
            for key, value in (("generator", self.generator), ("prompts", self.prompts)):
                if value is None:
                    raise fail("missing", "required field is missing",
                                "add '{key}' (see manifests/demo.yaml), or add an 'images' source to label "
                                "existing images instead of generating", at=key, key=key)
            if self.labels.counts is None:
                raise fail("missing", "required field is missing", "add 'counts': samples to generate per class "
                            "(one integer, or class name -> count)", at="labels.counts")
            return self
        for key, value in (("generator", self.generator), ("prompts", self.prompts),
                           ("labels.counts", self.labels.counts)):
            if value is not None:
                raise fail("images_conflict", "is not used with an 'images' source",
                            "remove '{key}': an images source labels existing images, it generates nothing",
                            at=key, key=key)
        if self.aus.intensity:
            raise fail("images_conflict", "is not used with an 'images' source",
                        "remove 'aus.intensity': existing images have no AU targets", at="aus.intensity")
        if self.labelling is None and not self.images.has_labels:
            raise fail("labelling_required", "required field is missing", "add a 'labelling' section: with an 'images' source "
                        "the labellers give every image its class (or give images.labels)", at="labelling")
        if self.annotate is not None and self.images.license is None:
            raise fail("license_required", "required field is missing", "add images.license: the SPDX id of the "
                       "source images' licence (or 'other'): training pairs of real faces must say what may be done "
                       "with them", at="images.license")
        return self

    @model_validator(mode="after")
    def _balance_known(self) -> Manifest:
        balance = self.curation.balance
        if balance is None:
            return self
        axes = list(self.prompts.all_axes) if self.prompts else []
        for axis in balance.by:
            if axis not in axes:
                raise fail("unknown_axis", "balances by '{axis}', which is not a prompt axis",
                            "use one of: {axes}" if axes else "remove 'by': an images source has no prompt axes",
                            at="curation.balance.by", axis=axis, axes=", ".join(axes))
        if isinstance(balance.per_class, dict):
            for name in balance.per_class:
                if name not in self.labels.names:
                    raise fail("unknown_label", "'{name}' is not a class of label map {label_map}",
                                "use one of: " + ", ".join(self.labels.names),
                                at=f"curation.balance.per_class.{name}", name=name,
                                label_map=self.labels.label_map)
        return self

    @model_validator(mode="after")
    def _class_keys_known(self) -> Manifest:
        names = self.labels.names
        expression_text = self.prompts.expression_text if self.prompts else {}
        for section, table in (("aus.intensity", self.aus.intensity), ("prompts.expression_text", expression_text)):
            for cls_name in table:
                if cls_name not in names:
                    raise fail(
                        "unknown_label",
                        "{section} names class '{name}', which is not in label map {label_map}",
                        "use one of: " + ", ".join(names),
                        at=f"{section}.{cls_name}",
                        section=section,
                        name=cls_name,
                        label_map=self.labels.label_map,
                    )
        return self

    @property
    def collection(self) -> ImagesSource | EditSource | None:
        """The existing images a build reads: the 'images' or the 'edit' source (None when generating)."""
        return self.images if self.images is not None else self.edit

    @property
    def listing(self) -> Listing | None:
        """The images of the 'images' or 'edit' source (None when generating), attached by ``with_listing``: the
        manifest itself reads no disk."""
        if self.collection is not None and self._listing is None:
            raise RuntimeError("the images source has not been listed: use builder.expand.images.listed(manifest)")
        return self._listing

    def needs_listing(self) -> bool:
        """True for an images or edit source whose listing is not attached yet."""
        return self.collection is not None and self._listing is None

    @property
    def edit_targets(self) -> tuple[int, ...]:
        """With an 'edit' source: the label indices every source is edited to, in order."""
        names = self.labels.names
        return tuple(names.index(n) for n in self.edit.targets) if self.edit.targets else tuple(range(len(names)))

    def with_listing(self, listing: Listing) -> Manifest:
        """A copy of this manifest that knows its images source's listing."""
        copy = self.model_copy()
        copy._listing = listing
        return copy

    @property
    def total(self) -> int:
        """Samples in the run: the requested counts, or the images an 'images' source lists."""
        if self.images is not None:
            return self.listing.count
        if self.edit is not None:
            return self.listing.count * len(self.edit_targets)
        return sum(self.labels.per_class().values())

    def sample_id(self, index: int) -> str:
        """The id of sample ``index``: the dataset name and the zero-padded index; with an 'edit' source, the
        dataset name, the source's zero-padded position in the listing and the target class."""
        if self.edit is not None:
            targets = self.edit_targets
            return f"{self.name}-{index // len(targets):07d}-{self.labels.names[targets[index % len(targets)]]}"
        return f"{self.name}-{index:07d}"

    def num_shards(self, shard_size: int | None = None) -> int:
        size = shard_size or self.output.shard_size
        return -(-self.total // size)

    def identity(self) -> dict:
        """What determines the dataset: the manifest but generator.device, .batch_size, .speed and labelling.device;
        with an 'images' source, also the listing of its images (a changed folder is another dataset)."""
        data = self.model_dump(mode="json")
        if data["generator"] is not None:
            for key in NOT_IDENTITY:
                data["generator"].pop(key, None)
        if data["labelling"] is not None:
            data["labelling"].pop("device", None)
            if data["labelling"]["feranno"] is not None:
                data["labelling"]["feranno"].pop("batch_size", None)
        strip_added_later(type(self), data)
        if self.images is None:
            del data["images"]  # generation manifests keep the fingerprints they had before images sources
        else:
            data["images"]["listing_sha256"] = self.listing.sha256
        if self.edit is not None:
            data["edit"]["listing_sha256"] = self.listing.sha256
        return data
