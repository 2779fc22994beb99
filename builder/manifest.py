"""The synthesis manifest: what to make, validated with pydantic v2.

Every field is described (the descriptions feed ``manifests/schema.json`` and
the fixes in error messages); unknown keys are rejected. Cross-field rules
raise ``PydanticCustomError`` with a ``fix`` in their context so the loader can
say how to repair the manifest. Sections for pipeline stages appear here only
when the stage exists.
"""
from __future__ import annotations

import re
import string
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .aus import AU_MAX, AU_MIN, AU_SETS, DEFAULT_AU_SET
from .labels import DEFAULT_LABEL_MAP, LABEL_MAPS
from .prompts import PLACEHOLDERS, TEMPLATE_SETS

BUILTIN_TINY_MODEL = "builtin:tiny-sd"
# Generator settings a build may change when it resumes (they do not change any image).
NOT_IDENTITY = ("device", "batch_size", "speed")
ADDED_AT_DEFAULT = {
    ("curation", "dedupe", "embedding_similarity"): None,
    ("curation", "dedupe", "reference"): None,
    ("curation", "embedder"): {"backend": "dlib", "model": None},
    ("curation", "identities"): None,
    ("curation", "faces", "detector"): "mtcnn",
    ("curation", "faces", "detector_model"): None,
    ("curation", "faces", "detector_size"): 640,
    ("generator", "guidance", "decoder"): None,
    ("images", "follow_links_outside"): False,
    ("labelling", "feranno", "dtype"): "float32",
}
"""Fields added after builds existed, left out of the identity while at these defaults, so that build folders
made before them keep their fingerprint."""
# Record fields that prompt axes may not shadow as dataset columns.
RESERVED_COLUMNS = frozenset(
    {"image", "label", "au", "prompt", "negative_prompt", "seed", "sample_id", "expression", "au_cues", "au_names",
     "generator_model", "generator_revision", "generator_weights_sha256", "layout_reference", "target_label",
     "label_disposition", "label_confidence", "label_agreement", "source_file"}
)
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


def _fail(kind: str, message: str, fix: str, at: str = "", **values: object) -> PydanticCustomError:
    """A validation error whose context carries the fix (and, with ``at``, the offending key
    relative to the model that raises it); the loader turns both into the user's message."""
    return PydanticCustomError(kind, message.format(**values), {"fix": fix.format(**values), "at": at})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Axis(_Strict):
    """One prompt axis: a list of values, optionally weighted."""

    values: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Values this axis takes, e.g. ['young', 'middle-aged', 'old']."
    )
    weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="Relative sampling weight of each value (same length as values; positive). "
        "Omit for uniform sampling.",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> Axis:
        if self.weights is not None and len(self.weights) != len(self.values):
            raise _fail(
                "weights_length",
                "has {n_w} weights for {n_v} values",
                "give exactly one positive weight per value, or remove 'weights' for uniform sampling",
                at="weights",
                n_w=len(self.weights),
                n_v=len(self.values),
            )
        return self


class AUCues(_Strict):
    """How '{au_cues}' and '{au_names}' describe a sample's AU vector."""

    min_intensity: float = Field(default=1.0, ge=0, le=5, description="AUs below this intensity are not mentioned.")
    max_cues: int = Field(default=4, gt=0, le=41, description="Mention at most this many AUs, the strongest first.")


class Enrich(_Strict):
    """Enrich each prompt with a local causal language model (transformers), seeded per sample."""

    model: str = Field(min_length=1, description="Local transformers causal-LM folder (save_pretrained output).")
    instruction: str = Field(default="Describe this portrait photo in detail: ",
                             description="Text put before the prompt; the model's continuation is appended.")
    max_new_tokens: int = Field(default=32, gt=0, le=256, description="Longest continuation, in model tokens.")
    temperature: float = Field(default=0.8, gt=0, le=5, description="Sampling temperature.")


class Prompts(_Strict):
    """Prompt templates and the demographic / free axes that fill them."""

    templates: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Prompt templates in Python format syntax. '{expression}' is the class's expression text, "
        "'{au_cues}' the sample's strongest AUs in words ('lip corners strongly pulled up'), '{au_names}' their "
        "FACS codes; every other '{name}' must be an axis. One template is picked per sample, uniformly. "
        "'a {name}' becomes 'an ...' when the value starts with a vowel. Give templates or template_set.",
    )
    template_set: Literal["syntfer"] | None = Field(
        default=None,
        description="A built-in template set instead of templates: 'syntfer' is the SyntFER grid (3 cue styles: "
        "AU names, descriptive, combined; gender, age, ethnicity, pose and trait axes, which axes below "
        "may override or extend).",
    )
    au_cues: AUCues = Field(default_factory=AUCues, description="Settings of the '{au_cues}' and '{au_names}' text.")
    enrich: Enrich | None = Field(default=None, description="Append a language model's seeded continuation to each "
                                  "prompt (runs as the 'enrich' stage before generation); omit to keep prompts as "
                                  "templated. --dry-run shows the prompts before enrichment.")
    negative_prompt: str = Field(default="", description="Negative prompt used for every sample.")
    expression_text: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Per-class override of the text that fills '{expression}' (class name -> text). "
        "Classes not listed use the built-in adjective (e.g. anger -> 'angry').",
    )
    axes: dict[str, Axis] = Field(
        default_factory=dict,
        description="Prompt axes sampled independently per sample: demographic (age, gender, "
        "ethnicity, pose) and free traits. Each name becomes a dataset column and a template "
        "placeholder.",
    )

    @field_validator("axes")
    @classmethod
    def _axis_names(cls, axes: dict[str, Axis]) -> dict[str, Axis]:
        for name in axes:
            if not _IDENT.match(name) or name in RESERVED_COLUMNS:
                raise _fail(
                    "axis_name",
                    "axis name '{name}' is not allowed",
                    "use a lower-case identifier (letters, digits, '_') that is not one of: "
                    + ", ".join(sorted(RESERVED_COLUMNS)),
                    at=name,
                    name=name,
                )
        return axes

    @cached_property
    def all_templates(self) -> list[str]:
        return list(self.templates) if self.templates else list(TEMPLATE_SETS[self.template_set]["templates"])

    @cached_property
    def all_axes(self) -> dict[str, Axis]:
        """The template set's axes (overridden by same-named axes here), then the other axes here."""
        built_in = TEMPLATE_SETS[self.template_set]["axes"] if self.template_set else {}
        axes = {name: self.axes.get(name) or Axis(values=values) for name, values in built_in.items()}
        axes.update({name: axis for name, axis in self.axes.items() if name not in axes})
        return axes

    @model_validator(mode="after")
    def _placeholders_known(self) -> Prompts:
        if (self.templates is None) == (self.template_set is None):
            raise _fail("template_source", "needs exactly one of 'templates' and 'template_set'",
                        "give your own templates, or template_set: syntfer")
        if self.template_set is not None:
            return self
        known = {*PLACEHOLDERS, *self.axes}
        for i, template in enumerate(self.templates):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as exc:
                raise _fail(
                    "template_syntax",
                    "template {i} is not valid format syntax ({err})",
                    "balance the braces; write '{{{{' and '}}}}' for literal braces",
                    at=f"templates.{i}",
                    i=i,
                    err=str(exc),
                ) from None
            for f in fields:
                if f not in known:
                    raise _fail(
                        "template_placeholder",
                            "template {i} uses '{{{field}}}', which is neither expression, au_cues, au_names nor an axis",
                        "add an axis named '{field}' under prompts.axes, or remove the placeholder",
                        at=f"templates.{i}",
                        i=i,
                        field=f,
                    )
        return self


class Labels(_Strict):
    """The label set and how many samples each class gets."""

    label_map: Literal["affectnet7", "affectnet8", "rafdb", "fer2013"] = Field(
        default=DEFAULT_LABEL_MAP,
        description="Named class order of the dataset's 'label' column: affectnet7 (default), "
        "affectnet8 (adds contempt), rafdb or fer2013.",
    )
    counts: Annotated[
        Annotated[Annotated[int, Field(ge=0)], Tag("count")]
        | Annotated[dict[str, Annotated[int, Field(ge=0)]], Tag("per_class")],
        Discriminator(lambda v: "per_class" if isinstance(v, dict) else "count"),
    ] | None = Field(
        default=None,
        description="Samples to generate: one integer for every class, or a mapping class name -> "
        "count (classes not listed get 0). Required when generating; not allowed with an 'images' source "
        "(the labellers decide the classes).",
    )

    @model_validator(mode="after")
    def _counts_known(self) -> Labels:
        names = LABEL_MAPS[self.label_map]
        if isinstance(self.counts, dict):
            for name in self.counts:
                if name not in names:
                    raise _fail(
                        "unknown_label",
                        "'{name}' is not a class of label map {label_map}",
                        "use one of: " + ", ".join(names),
                        at=f"counts.{name}",
                        name=name,
                        label_map=self.label_map,
                    )
        if self.counts is not None and sum(self.per_class().values()) == 0:
            raise _fail("no_samples", "asks for 0 samples in total", "give at least one class a positive count")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return LABEL_MAPS[self.label_map]

    def per_class(self) -> dict[str, int]:
        """Count for every class of the label map, in label order (all 0 without counts)."""
        if self.counts is None:
            return {n: 0 for n in self.names}
        if isinstance(self.counts, int):
            return {n: self.counts for n in self.names}
        return {n: self.counts.get(n, 0) for n in self.names}


class ActionUnits(_Strict):
    """Per-class AU intensity targets (FACS 0-5) with jitter."""

    au_set: Literal["disfa12", "disfa8", "bp4d12", "opengraphau41"] = Field(
        default=DEFAULT_AU_SET,
        description="Which AUs make up the 'au' vector, in this order: disfa12 (default: "
        "1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26), disfa8, bp4d12 or opengraphau41.",
    )
    intensity: dict[str, dict[str, Annotated[float, Field(ge=AU_MIN, le=AU_MAX)]]] = Field(
        default_factory=dict,
        description="Class name -> {AU name: intensity 0-5}, e.g. happy: {AU6: 2.5, AU12: 4.0}. "
        "AUs not listed are 0.",
    )
    jitter: float = Field(
        default=0.5,
        ge=0,
        le=AU_MAX,
        description="Standard deviation of Gaussian noise added per sample to every listed AU "
        "(intensity units); results are clipped to 0-5. 0 disables jitter.",
    )

    @property
    def names(self) -> tuple[str, ...]:
        return AU_SETS[self.au_set]

    @model_validator(mode="after")
    def _aus_known(self) -> ActionUnits:
        for cls_name, table in self.intensity.items():
            for au in table:
                if au not in self.names:
                    raise _fail(
                        "unknown_au",
                        "class '{cls}' sets '{au}', which is not in AU set {au_set}",
                        "use AUs of {au_set} ({names}) or pick another aus.au_set",
                        at=f"intensity.{cls_name}.{au}",
                        cls=cls_name,
                        au=au,
                        au_set=self.au_set,
                        names=", ".join(self.names),
                    )
        return self


class AUAdapterSpec(_Strict):
    """An AU adapter (``build-dataset train-au-adapter`` output) that conditions images on the AU vector."""

    path: str = Field(min_length=1, description="Folder with au_adapter_config.json and au_adapter.safetensors.")
    scale: float = Field(
        default=1.0, ge=0, le=10,
        description="Weight of the AU cross-attention relative to the text (au_scale); 0 gives exactly the "
        "plain pipeline's image.",
    )


class Guidance(_Strict):
    """Semantic guidance (SynFER): a FER classifier's gradient steers denoising towards the target class."""

    classifier: str = Field(
        default="mini-xception-fer2013",
        min_length=1,
        description="Guide model: a name from the model registry (`build-dataset models list`), a local "
        "mini-Xception .hdf5 file, or a YAML config of any torch classifier (architecture, safetensors weights, "
        "labels, input). Its label order is mapped to the manifest's by emotion name.",
    )
    scale: float = Field(default=0.1, gt=0, le=100, description="Step size lambda of the normalised update.")
    start_step: int = Field(default=0, ge=0, description="First guided denoising step (0-based).")
    end_step: int | None = Field(default=None, ge=1, description="Guided steps stop before this one; "
                                 "default: the last step.")
    wrt: Literal["text", "latents"] = Field(
        default="text", description="Update the text conditioning (SynFER) or the latents with the gradient."
    )
    decoder: str | None = Field(
        default=None, min_length=1,
        description="Decoder of the predicted x0 the guide scores at each guided step: null uses the pipeline's "
        "VAE; a Hub id or local folder of a diffusers AutoencoderTiny (e.g. 'madebyollin/taesd' for SD 1.x) is "
        "far cheaper to run and to differentiate through. The final images are always decoded by the VAE.",
    )


class Layout(_Strict):
    """Layout initialisation (SynFER): start each sample from a DDIM-inverted reference image."""

    images: str = Field(min_length=1, description="Folder of reference face images (png, jpg, webp); each sample "
                        "takes one, chosen from (seed, sample index). Needs generator.scheduler: ddim.")


class Speed(_Strict):
    """How the generator runs on its device. None of these changes what an image shows (pixels may differ by
    float rounding, as with another batch size), so they are not part of the build's identity and a build may
    change them when it resumes. `bench/generation_throughput.py` measures each on a GPU."""

    channels_last: bool = Field(default=False, description="Store UNet and VAE weights and activations "
                                "channels-last (NHWC), which tensor-core convolutions prefer.")
    fuse_qkv: bool = Field(default=False, description="Fuse the attention projections (one matmul for q, k "
                           "and v; diffusers' fuse_qkv_projections) in the UNet and the VAE.")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="off", description="torch.compile the UNet and the VAE decoder with this mode; 'reduce-overhead' "
        "and 'max-autotune' also capture CUDA graphs. The first batch of each size pays the compile time.")
    writer_threads: int = Field(default=2, ge=0, le=64, description="Threads that encode and write the PNGs "
                                "while the next batch denoises; 0 writes in the generating thread.")


class Generator(_Strict):
    """The diffusion model and its sampling settings."""

    model: str = Field(
        min_length=1,
        description="Hugging Face Hub id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5'), a "
        "local diffusers folder, or 'builtin:tiny-sd' (a tiny random-weight pipeline the tool "
        "builds itself, for demos and tests; its images are not faces).",
    )
    revision: str | None = Field(
        default=None, description="Hub branch, tag or commit to load; ignored for local folders."
    )
    scheduler: Literal["default", "ddim", "dpm++", "euler", "euler_a", "pndm", "unipc"] = Field(
        default="default", description="Noise scheduler; 'default' keeps the checkpoint's own."
    )
    steps: int = Field(default=25, gt=0, le=1000, description="Denoising steps per image.")
    guidance_scale: float = Field(
        default=7.5, ge=0, le=50, description="Classifier-free guidance scale; 1 or less disables CFG."
    )
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8, description="Image height in pixels.")
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8, description="Image width in pixels.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="Weights and activations dtype. 'auto' is bfloat16 on GPUs that support it, "
        "float16 on other GPUs and float32 on CPU. Half precision is refused on CPU.",
    )
    batch_size: int = Field(
        default=8,
        gt=0,
        le=1024,
        description="Images per denoising batch. Not part of the build's identity: lower it to resume "
        "after running out of GPU memory (each image has its own seeded noise).",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="'auto' (first GPU if any, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'. "
        "Not part of the build's identity: a build may resume on another device.",
    )
    au_adapter: AUAdapterSpec | None = Field(
        default=None,
        description="Condition generation on each sample's AU vector through an AU adapter. Omit to generate "
        "from the prompt alone (the 'au' column then records targets the images were not conditioned on).",
    )
    guidance: Guidance | None = Field(
        default=None, description="Semantic guidance by a FER classifier during denoising; omit to turn it off."
    )
    speed: Speed = Field(default_factory=Speed, description="Speed settings of the generation path; not part "
                         "of the build's identity.")
    layout: Layout | None = Field(
        default=None, description="Start from DDIM-inverted reference images instead of random noise; the "
        "dataset gets a 'layout_reference' column."
    )

    @model_validator(mode="after")
    def _guidance_window(self) -> Generator:
        g = self.guidance
        if g is not None:
            end = g.end_step if g.end_step is not None else self.steps
            if not g.start_step < end <= self.steps:
                raise _fail("guidance_window",
                            "guidance steps {start}..{end} do not fit in {steps} denoising steps",
                            "choose 0 <= guidance.start_step < guidance.end_step <= generator.steps",
                            at="guidance", start=g.start_step, end=end, steps=self.steps)
        return self


class Integrity(_Strict):
    """Drops images that cannot be read or are blank (e.g. black frames from fp16 overflow)."""

    enabled: bool = Field(default=True, description="Run the image integrity check.")
    min_std: float = Field(
        default=2.0,
        ge=0,
        le=128,
        description="Minimum standard deviation of pixel values (0-255 scale) across the image; "
        "flatter images are dropped as 'blank_image'.",
    )


class FaceQuality(_Strict):
    """Face checks (MTCNN or SCRFD): one dominant face of a usable size, sharp and well exposed."""

    enabled: bool = Field(default=True, description="Run the face checks (the 'faces' stage).")
    detector: Literal["mtcnn", "scrfd"] = Field(default="mtcnn", description="Face detector: 'mtcnn' (the "
                                                "tool's torch port, pinned weights, offline) or 'scrfd' "
                                                "(insightface's SCRFD ONNX model given by detector_model).")
    detector_model: str | None = Field(default=None, min_length=1, description="scrfd only: path of the SCRFD "
                                       ".onnx file with landmarks (e.g. buffalo_l/det_10g.onnx).")
    detector_size: int = Field(default=640, ge=128, le=2048, multiple_of=32, description="scrfd only: side of "
                               "the square the image is letterboxed into for the detector (a model with a fixed "
                               "input size keeps its own).")
    min_score: float = Field(default=0.9, ge=0, le=1, description="Minimum detector score; weaker detections "
                             "are ignored. Typical: 0.9 for MTCNN, 0.5 for SCRFD (its faces score lower).")
    min_size: float = Field(default=32, ge=8, description="Minimum side of the main face's box in pixels "
                            "('small_face' below it).")
    max_other_face: float = Field(default=0.25, ge=0, le=1, description="A second face whose box area is more "
                                  "than this fraction of the main face's makes the image 'multiple_faces'.")
    min_sharpness: float = Field(default=20.0, ge=0, description="Minimum variance of the Laplacian of the "
                                 "aligned grey 112 px face crop ('blurry' below it).")
    min_brightness: float = Field(default=40.0, ge=0, le=255, description="Minimum mean grey level (0-255) of "
                                  "the face crop ('underexposed' below it).")
    max_brightness: float = Field(default=220.0, ge=0, le=255, description="Maximum mean grey level of the face "
                                  "crop ('overexposed' above it).")

    @model_validator(mode="after")
    def _model_for_scrfd(self) -> FaceQuality:
        if self.detector == "scrfd" and self.detector_model is None:
            raise _fail("detector_model", "the scrfd detector needs 'detector_model'",
                        "set detector_model: to the path of an SCRFD .onnx file (buffalo_l: det_10g.onnx)",
                        at="detector_model")
        if self.detector == "mtcnn":
            for field in ("detector_model", "detector_size"):  # at its default it is harmless (a dumped manifest)
                if getattr(self, field) != type(self).model_fields[field].default:
                    raise _fail("scrfd_only", "'{field}' is for the scrfd detector; MTCNN uses its pinned "
                                "weights at the image's own size", "remove {field}:, or set detector: scrfd",
                                at=field, field=field)
        return self


class IdentityLeak(_Strict):
    """Reject images whose face is too close to a real person in a reference index (`build-dataset
    index-reference`)."""

    index: str = Field(min_length=1, description="Folder written by `build-dataset index-reference`; its "
                       "embedding backend embeds the images too.")
    threshold: float | None = Field(default=None, ge=-1, le=1, description="Reject at or above this cosine "
                                    "similarity to the nearest reference face. Give it, or pairs + "
                                    "false_match_rate to calibrate it.")
    pairs: str | None = Field(default=None, min_length=1, description="Verification pairs to calibrate the "
                              "threshold on: a CSV/JSONL of image_a, image_b, same; or a folder person/*.jpg.")
    false_match_rate: float | None = Field(default=None, gt=0, lt=1, description="With pairs: the threshold is "
                                           "the smallest whose false-match rate on impostor pairs is at most this.")
    closest: int = Field(default=20, ge=0, le=1000, description="How many of the closest synthetic/reference "
                         "pairs the stats and the card list.")

    @model_validator(mode="after")
    def _one_threshold(self) -> IdentityLeak:
        calibrated = self.pairs is not None or self.false_match_rate is not None
        if (self.threshold is None) == (not calibrated) or (calibrated and (self.pairs is None
                                                                          or self.false_match_rate is None)):
            raise _fail("leak_threshold", "needs either 'threshold' or both 'pairs' and 'false_match_rate'",
                        "give threshold: 0.6, or pairs: PATH with false_match_rate: 0.001")
        return self


class Dedupe(_Strict):
    """Remove duplicates inside the dataset: the copy with the higher label confidence (then the lower sample
    index) stays."""

    enabled: bool = Field(default=True, description="Run dedupe (a global stage, after the shards).")
    exact: bool = Field(default=True, description="Drop byte-identical images ('exact_duplicate').")
    near_distance: int | None = Field(default=6, ge=0, le=32, description="Drop images whose 64-bit perceptual "
                                      "hash (or its mirror image's) is within this Hamming distance of a kept "
                                      "one's ('near_duplicate'); null turns it off. Resizing and recompression "
                                      "move the hash by 0-2 bits, a 5 % crop by about 6, another picture by ~32.")
    embedding_similarity: float | None = Field(default=None, gt=0, le=1, description="Drop faces whose identity "
                                               "embedding (curation.embedder) has at least this cosine similarity "
                                               "to a kept face's ('embedding_duplicate'): the same face rendered "
                                               "again, not merely the same person. dlib, measured on real photos: "
                                               "near copies 0.98-1.00, different people 0.81-0.91. Null (default) "
                                               "turns it off; it embeds every face (about 0.3 s each with dlib on a "
                                               "CPU core, cached in the build folder).")
    reference: str | None = Field(default=None, min_length=1, description="A `build-dataset index-reference` "
                                  "output_dir whose images must not appear in this dataset (e.g. an evaluation "
                                  "set): an image with the same bytes as one of them is a 'reference_exact_duplicate'"
                                  ", one within near_distance of one's perceptual hash (or its mirror's) a "
                                  "'reference_near_duplicate', and, with embedding_similarity, a face at least that "
                                  "close to one of its faces a 'reference_embedding_duplicate' (the index must have "
                                  "been built with curation.embedder's model).")


class Balance(_Strict):
    """Undersample to a target class distribution, optionally per class x demographic cell."""

    per_class: Annotated[int, Field(ge=0)] | dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="Target count per class: one integer for every class, or class name -> "
        "count. Omit for uniform at the smallest class's count.")
    by: list[str] = Field(default_factory=list, description="Prompt axes to balance within each class (class x "
                          "cell); each cell gets an equal share of its class's target.")


class FaceEmbedder(_Strict):
    """The face identity embedder of the whole-set stages (embedding dedupe, identities)."""

    backend: Literal["dlib", "insightface"] = Field(default="dlib", description="'dlib': dlib's ResNet (128-d; "
                                                    "weights from the face-recognition-models package, offline). "
                                                    "'insightface': an ArcFace ONNX model given by 'model'.")
    model: str | None = Field(default=None, min_length=1, description="insightface only: path of the ArcFace "
                              ".onnx file (e.g. buffalo_l/w600k_r50.onnx) or a model pack name.")

    @model_validator(mode="after")
    def _model_for_insightface(self) -> FaceEmbedder:
        if self.backend == "insightface" and self.model is None:
            raise _fail("embedder_model", "the insightface backend needs 'model'",
                        "set model: to the path of an ArcFace .onnx file (e.g. buffalo_l/w600k_r50.onnx)")
        if self.backend == "dlib" and self.model is not None:
            raise _fail("embedder_model", "the dlib backend takes no 'model' (its weights ship with "
                        "face-recognition-models)", "remove model:, or set backend: insightface")
        return self


class Identities(_Strict):
    """Group faces into identities (who is depicted) for diversity stats, optionally capping images per
    identity."""

    threshold: float = Field(gt=0, le=1, description="Two faces belong to one identity at or above this cosine "
                             "similarity of their embeddings (curation.embedder). Faces join the most similar "
                             "identity founded by a more confident face, else found their own. Calibrate it for "
                             "the embedder: with dlib, different people measured 0.81-0.91 on real photos.")
    max_per_identity: int | None = Field(default=None, ge=1, description="Keep at most this many images per "
                                         "identity, the most confident first ('identity_cap'); null keeps all.")
    largest: int = Field(default=10, ge=0, le=1000, description="How many of the largest identities the stats "
                         "and the card list.")


class Curation(_Strict):
    """Curation stages; the pipeline fixes their order: integrity, faces, identity_leak per shard; then dedupe,
    identities and balance over the whole set."""

    integrity: Integrity = Field(default_factory=Integrity, description="Image integrity check.")
    faces: FaceQuality = Field(default_factory=FaceQuality, description="Face checks (the 'faces' stage).")
    identity_leak: IdentityLeak | None = Field(default=None, description="Identity-leak gate against real "
                                               "reference faces; omit to skip (the card then says so).")
    dedupe: Dedupe = Field(default_factory=Dedupe, description="Exact, near and embedding duplicate removal, "
                           "inside the set and against a reference set.")
    embedder: FaceEmbedder = Field(default_factory=FaceEmbedder, description="Face identity embedder of "
                                   "dedupe.embedding_similarity and identities.")
    identities: Identities | None = Field(default=None, description="Identity clusters and diversity stats, "
                                          "optionally a cap per identity; omit to skip.")
    balance: Balance | None = Field(default=None, description="Class (x demographic cell) balancing; omit to "
                                    "keep the distribution as it comes out of curation.")


class ExpertSpec(_Strict):
    """One expert FER model that labels the images."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40,
                      description="Short id for this expert: names its probability column ('probs_<name>').")
    model: str = Field(min_length=1, description="A name from the model registry (`build-dataset models list`), a "
                       "local mini-Xception .hdf5 file, or a YAML config of any torch or ONNX classifier.")
    weight: float = Field(default=1.0, gt=0, le=100, description="Weight of this expert in the pool.")


class FERAnnoSpec(_Strict):
    """A trained FERAnno labeller (``build-dataset train-feranno`` output) that votes with the experts."""

    model: str = Field(min_length=1, description="Folder with feranno_config.json and feranno.safetensors; the "
                       "diffusion backbone it names is loaded too (local files only) and must match its hash.")
    weight: float = Field(default=1.0, gt=0, le=100, description="Weight of FERAnno in the pool.")
    dtype: Literal["float32", "auto", "bfloat16", "float16"] = Field(
        default="float32", description="dtype of the diffusion backbone (VAE encode, inversion, feature pass). "
        "float32 is what train-feranno trains in; 'auto' (bfloat16 on GPUs that support it, float32 on CPU) or "
        "bfloat16 runs several times faster on GPUs and moves probabilities by rounding. Half precision is "
        "refused on CPU.")
    batch_size: int = Field(default=8, gt=0, le=1024, description="Images per backbone batch. Not part of the "
                            "build's identity.")


FERANNO_NAME = "feranno"  # FERAnno's labeller id: its probability column is 'probs_feranno'


class FaceCrop(_Strict):
    """How faces are found and cropped before labellers see them (MTCNN, 5-point alignment)."""

    min_score: float = Field(default=0.9, ge=0, le=1, description="Minimum MTCNN face score.")
    min_size: float = Field(default=32, ge=8, description="Minimum face box side in pixels.")
    size: int = Field(default=112, ge=32, le=512, description="Side of the aligned face crop in pixels.")
    margin: float = Field(default=0.2, ge=0, le=1, description="Extra context around the ArcFace-aligned face "
                          "(0.2 shows 20 % more); 0 is the tight recognition crop.")


class Labelling(_Strict):
    """Expert models confirm, correct or reject each sample's label (SynFER's label calibration)."""

    experts: list[ExpertSpec] = Field(default_factory=list, description="Expert FER models; their label orders "
                                      "are mapped to the manifest's by emotion name.")
    feranno: FERAnnoSpec | None = Field(default=None, description="A FERAnno labeller on diffusion features, "
                                        "pooled with the experts (SynFER); sees the same aligned face crop.")
    combine: Literal["product", "weighted_vote"] = Field(
        default="product", description="Pool the labellers by product of experts (weighted geometric mean) or "
        "weighted vote (weighted mean).")
    min_confidence: float = Field(default=0.5, ge=0, le=1,
                                  description="Reject samples whose pooled final-class probability is lower.")
    min_agreement: float = Field(default=0.5, ge=0, le=1, description="Reject samples where a smaller weighted "
                                 "share of labellers has the final class as its top class.")
    relabel: bool = Field(default=False, description="Give a sample the labellers' class when they confidently "
                          "agree on another class than its target; otherwise such samples are rejected.")
    faces: FaceCrop = Field(default_factory=FaceCrop, description="Face detection and crop for the labellers.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="Where the face detector and the labellers run: 'auto' (first GPU if any, else CPU), 'cpu', "
        "'cuda', 'cuda:N' or 'mps'. Not part of the build's identity.",
    )

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, experts: list[ExpertSpec]) -> list[ExpertSpec]:
        names = [e.name for e in experts]
        for name in names:
            if names.count(name) > 1:
                raise _fail("duplicate_expert", "expert name '{name}' is used twice",
                            "give every expert its own name", name=name)
            if name == FERANNO_NAME:
                raise _fail("reserved_expert", "expert name '{name}' is reserved for the FERAnno labeller",
                            "give this expert another name, or configure FERAnno under labelling.feranno",
                            name=name)
        return experts

    @model_validator(mode="after")
    def _some_labeller(self) -> Labelling:
        if not self.experts and self.feranno is None:
            raise _fail("no_labeller", "has no labeller", "list at least one expert under 'experts' (e.g. "
                        "{{name: fer2013, model: mini-xception-fer2013}}) or give a trained 'feranno'")
        return self

    @property
    def labeller_names(self) -> list[str]:
        """Ids of every labeller, in pooling order: the experts, then FERAnno."""
        return [e.name for e in self.experts] + ([FERANNO_NAME] if self.feranno is not None else [])


class ImagesSource(_Strict):
    """Label an existing collection of face images instead of generating them (SyntFER's pseudo-labelling)."""

    folder: str | None = Field(default=None, min_length=1, description="Folder of images (png, jpg, jpeg, webp, "
                               "bmp, gif, tif, tiff), read in sorted path order; hidden files and folders, other "
                               "formats and dangling links are skipped and counted per reason.")
    recursive: bool = Field(default=True, description="With folder: include images in sub-folders.")
    follow_links_outside: bool = Field(
        default=False, description="With folder: also read symbolic links that resolve outside the folder. By "
        "default they are skipped (counted as link_outside_folder), so no file outside images.folder is read.")
    dataset: str | None = Field(default=None, min_length=1, description="A Hugging Face dataset saved with "
                                "save_to_disk (a Dataset or a DatasetDict), instead of folder.")
    split: str = Field(default="train", min_length=1, description="With dataset: the split to read from a "
                       "DatasetDict.")
    image_column: str = Field(default="image", min_length=1, description="With dataset: the column holding the "
                              "images.")
    top_k_per_class: int | None = Field(
        default=None, gt=0,
        description="Keep at most this many images per class, the most confident first (ties by sample id); "
        "labelling.min_confidence sets the confidence threshold. Omit to keep every image that passes it.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImagesSource:
        if (self.folder is None) == (self.dataset is None):
            raise _fail("images_source", "needs exactly one of 'folder' and 'dataset'",
                        "give 'folder: PATH' (a folder of images) or 'dataset: PATH' (a save_to_disk folder)")
        return self


class Output(_Strict):
    """Dataset splits and how work is sharded."""

    splits: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: {"train": 1.0},
        description="Split name -> fraction of the kept samples; fractions sum to 1. Splits are "
        "stratified by class.",
    )
    shard_size: int = Field(
        default=256,
        gt=0,
        le=100_000,
        description="Samples per shard: the unit of resumption and of distribution across workers. "
        "Changing it does not change any sample.",
    )

    @field_validator("splits")
    @classmethod
    def _splits_sum(cls, splits: dict[str, float]) -> dict[str, float]:
        for name in splits:
            if not _IDENT.match(name):
                raise _fail("split_name", "split name '{name}' is not allowed",
                            "use a lower-case identifier such as train, validation or test", name=name)
        if not splits:
            raise _fail("no_splits", "has no split", "give at least one split, e.g. {train: 1.0}")
        total = sum(splits.values())
        if abs(total - 1.0) > 1e-6:
            raise _fail(
                "splits_sum",
                "fractions sum to {total:g}, not 1",
                "scale the fractions so they add up to 1, e.g. {{train: 0.8, validation: 0.1, test: 0.1}}",
                total=total,
            )
        return splits


class Manifest(_Strict):
    """A synthesis manifest: one synthetic FER dataset build."""

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
    prompts: Prompts | None = Field(default=None, description="Prompt templates and axes (required when "
                                    "generating).")
    aus: ActionUnits = Field(default_factory=ActionUnits, description="Action unit targets per class.")
    generator: Generator | None = Field(default=None, description="Diffusion model and sampling settings "
                                        "(required when generating).")
    labelling: Labelling | None = Field(default=None, description="Label calibration by expert models; without "
                                        "it, labels are the generation targets, unverified.")
    curation: Curation = Field(default_factory=Curation, description="Curation stage settings.")
    output: Output = Field(default_factory=Output, description="Splits and sharding.")

    @model_validator(mode="after")
    def _source_sections(self) -> Manifest:
        if self.images is None:
            for key, value in (("generator", self.generator), ("prompts", self.prompts)):
                if value is None:
                    raise _fail("missing", "required field is missing",
                                "add '{key}' (see manifests/demo.yaml), or add an 'images' source to label "
                                "existing images instead of generating", at=key, key=key)
            if self.labels.counts is None:
                raise _fail("missing", "required field is missing", "add 'counts': samples to generate per class "
                            "(one integer, or class name -> count)", at="labels.counts")
            return self
        for key, value in (("generator", self.generator), ("prompts", self.prompts),
                           ("labels.counts", self.labels.counts)):
            if value is not None:
                raise _fail("images_conflict", "is not used with an 'images' source",
                            "remove '{key}': an images source labels existing images, it generates nothing",
                            at=key, key=key)
        if self.aus.intensity:
            raise _fail("images_conflict", "is not used with an 'images' source",
                        "remove 'aus.intensity': existing images have no AU targets", at="aus.intensity")
        if self.labelling is None:
            raise _fail("labelling_required", "required field is missing", "add a 'labelling' section: with an 'images' source "
                        "the labellers give every image its class", at="labelling")
        return self

    @model_validator(mode="after")
    def _balance_known(self) -> Manifest:
        balance = self.curation.balance
        if balance is None:
            return self
        axes = list(self.prompts.all_axes) if self.prompts else []
        for axis in balance.by:
            if axis not in axes:
                raise _fail("unknown_axis", "balances by '{axis}', which is not a prompt axis",
                            "use one of: {axes}" if axes else "remove 'by': an images source has no prompt axes",
                            at="curation.balance.by", axis=axis, axes=", ".join(axes))
        if isinstance(balance.per_class, dict):
            for name in balance.per_class:
                if name not in self.labels.names:
                    raise _fail("unknown_label", "'{name}' is not a class of label map {label_map}",
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
                    raise _fail(
                        "unknown_label",
                        "{section} names class '{name}', which is not in label map {label_map}",
                        "use one of: " + ", ".join(names),
                        at=f"{section}.{cls_name}",
                        section=section,
                        name=cls_name,
                        label_map=self.labels.label_map,
                    )
        return self

    @cached_property
    def listing(self):
        """The images of the 'images' source (a ``sources.Listing``, read once per manifest object);
        None when generating."""
        if self.images is None:
            return None
        from .sources import list_images

        return list_images(self.images)

    @property
    def total(self) -> int:
        """Samples in the run: the requested counts, or the images an 'images' source lists."""
        if self.images is not None:
            return self.listing.count
        return sum(self.labels.per_class().values())

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
        for *parents, key in ADDED_AT_DEFAULT:
            node = data
            for parent in parents:
                node = node[parent] if node is not None else None
            if node is not None and node.get(key, ...) == ADDED_AT_DEFAULT[(*parents, key)]:
                del node[key]
        if self.images is None:
            del data["images"]  # generation manifests keep the fingerprints they had before images sources
        else:
            data["images"]["listing_sha256"] = self.listing.sha256
        return data
