"""The 'generator' section: the diffusion model, LoRAs, sampling, AU adapter, guidance, layout, speed."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import ADDED_LATER


class AUAdapterSpec(Strict):
    """An AU adapter (``build-dataset train-au-adapter`` output) that conditions images on the AU vector."""

    path: str = Field(min_length=1, description="Folder with au_adapter_config.json and au_adapter.safetensors.")
    scale: float = Field(
        default=1.0, ge=0, le=10,
        description="Weight of the AU cross-attention relative to the text (au_scale); 0 gives exactly the "
        "plain pipeline's image.",
    )


class LoRASpec(Strict):
    """LoRA weights for the generator (diffusers/peft layout, e.g. ``build-dataset train-generator`` output)."""

    path: str = Field(min_length=1, description="Folder with pytorch_lora_weights.safetensors, as "
                      "StableDiffusionPipeline.save_lora_weights writes it (diffusers' LoRA scripts, `build-dataset "
                      "train-generator`). Pickled weights (.bin, .pt, .ckpt) are refused; an optional "
                      "training_summary.json names its base model and validation expert for the card.")
    scale: float = Field(default=1.0, ge=-2, le=2, description="Weight of the LoRA's update (diffusers' "
                         "set_adapters); 0 gives exactly the base model's images, negative values push away from "
                         "what it learned.")


def _one_or_many(value: Any) -> Any:
    """A single LoRA mapping is a one-element list (so both spellings have one identity)."""
    return [value] if isinstance(value, dict) else value


def _list_or_mapping_schema(schema: dict) -> None:
    """The JSON schema of ``generator.lora``: a list of LoRAs, or one LoRA mapping (editors accept both)."""
    items = schema.pop("items")
    listed = {"type": schema.pop("type"), "items": items}
    schema["anyOf"] = [listed, items]


class Guidance(Strict):
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
    decoder: Annotated[str | None, ADDED_LATER] = Field(
        default=None, min_length=1,
        description="Decoder of the predicted x0 the guide scores at each guided step: null uses the pipeline's "
        "VAE; a Hub id or local folder of a diffusers AutoencoderTiny (e.g. 'madebyollin/taesd' for SD 1.x) is "
        "far cheaper to run and to differentiate through. The final images are always decoded by the VAE.",
    )


class Layout(Strict):
    """Layout initialisation (SynFER): start each sample from a DDIM-inverted reference image."""

    images: str = Field(min_length=1, description="Folder of reference face images (png, jpg, webp); each sample "
                        "takes one, chosen from (seed, sample index). Needs generator.scheduler: ddim.")


class Speed(Strict):
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


class Generator(Strict):
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
    lora: Annotated[list[LoRASpec], BeforeValidator(_one_or_many), ADDED_LATER] = Field(
        default_factory=list, json_schema_extra=_list_or_mapping_schema,
        description="LoRA weights applied to the generator, each with its scale: a list of {path, scale}, or "
        "one such mapping. Loaded before the AU adapter, checked against the UNet and text encoder first (a "
        "LoRA for another architecture is refused). Each file's sha256 is recorded; a changed file stops a "
        "resume.",
    )
    fuse_lora: Annotated[bool, ADDED_LATER] = Field(
        default=False,
        description="Merge the LoRAs into the base weights once at load (diffusers' fuse_lora) instead of "
        "running them beside each layer: faster sampling, the same images up to float rounding.",
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
    def _fuse_needs_lora(self) -> Generator:
        if self.fuse_lora and not self.lora:
            raise fail("fuse_without_lora", "is true but generator.lora lists no LoRA",
                       "add generator.lora: {{path: DIR, scale: 1.0}}, or remove fuse_lora", at="fuse_lora")
        return self

    @model_validator(mode="after")
    def _guidance_window(self) -> Generator:
        g = self.guidance
        if g is not None:
            end = g.end_step if g.end_step is not None else self.steps
            if not g.start_step < end <= self.steps:
                raise fail("guidance_window",
                            "guidance steps {start}..{end} do not fit in {steps} denoising steps",
                            "choose 0 <= guidance.start_step < guidance.end_step <= generator.steps",
                            at="guidance", start=g.start_step, end=end, steps=self.steps)
        return self
