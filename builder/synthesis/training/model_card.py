"""The model card (README.md) of a fine-tuned generator: base model and its licence, the training data and its
card, the settings, the loss, and the validation expert's accuracy per class, with the Hub's YAML front matter
(``base_model``, ``license``, ``library_name: diffusers``, tags)."""
from __future__ import annotations

from pathlib import Path

import yaml

from builder.synthesis.training.generator_config import GeneratorTrainConfig


def data_card(source: str | None) -> dict:
    """Name and licence of the training data from its data card, when it is a release (``OUT/hf`` next to
    ``OUT/README.md``) or has a README.md of its own; empty when there is none. A card whose metadata cannot be
    read is still named."""
    if not source:
        return {}
    from huggingface_hub import DatasetCard

    folder = Path(source)
    for card in (folder / "README.md", folder.parent / "README.md"):
        if card.is_file():
            try:
                front = DatasetCard.load(card).data.to_dict()
            except Exception:  # a malformed card must not stop a finished training run from saving its own
                return {"card": str(card)}
            return {"card": str(card), "name": front.get("pretty_name"), "license": front.get("license"),
                    "license_name": front.get("license_name")}
    return {}


def write_model_card(out: Path, config: GeneratorTrainConfig, summary: dict) -> Path:
    data = data_card(summary["data"]["source"])
    local_base = config.base_model.startswith(("builtin:", ".", "/", "~")) or Path(config.base_model).exists()
    front = {"library_name": "diffusers", "license": summary.get("base_license") or "other",
             "tags": ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers",
                      "lora" if config.method == "lora" else "diffusers-training", "facial-expression"]}
    if not local_base:
        front["base_model"] = config.base_model
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {'LoRA for ' if config.method == 'lora' else 'Fine-tuned '}{config.base_model}: facial expressions",
             "", _usage(config), "", "## Base model", "",
             f"`{config.base_model}` (revision `{summary['base_revision']}`, weights sha256 "
             f"`{summary['base_weights_sha256'][:16]}...`), licence: `{summary.get('base_license') or 'not stated'}`. "
             "This model is bound by the base model's licence.", "", "## Training data", ""]
    source = summary["data"]
    lines.append(f"{source['pairs']} image-text pairs from `{source['source']}` (captions: `{source['caption_column']}`"
                 + (f"; skipped: {source['skipped']}" if source["skipped"] else "") + ").")
    if data:
        lines.append(f"Its data card: `{data['card']}`" + (f" ({data['name']})" if data.get("name") else "")
                     + (f", licence `{data['license']}`" if data.get("license") else "")
                     + (f" (`{data['license_name']}`)" if data.get("license_name") else "") + ". The training "
                     "images' licence and the consent of the people shown carry over to this model.")
    s = config.train
    lines += ["", "## Training", "", f"- method: {config.method}"
              + (f" (rank {config.lora.rank}, alpha {config.lora.alpha or config.lora.rank}, modules "
                 f"{', '.join(config.lora.target_modules)}{', text encoder too' if config.lora.text_encoder else ''})"
                 if config.method == "lora" else (f" (EMA decay {config.ema.decay})" if config.ema.enabled else "")),
              f"- {summary['steps']} steps x {s.batch_size} x {s.gradient_accumulation} (batch x accumulation), "
              f"learning rate {s.learning_rate} ({s.lr_scheduler}, {s.lr_warmup_steps} warm-up steps), seed {s.seed}",
              f"- resolution {config.resolution} ({config.crop} crop{', random flips' if config.random_flip else ''}), "
              f"prediction type {summary['prediction_type']}, "
              + (f"Min-SNR gamma {s.snr_gamma}" if s.snr_gamma else "plain MSE")
              + (f", noise offset {s.noise_offset}" if s.noise_offset else "")
              + f", caption dropout {s.caption_dropout}, mixed precision {s.mixed_precision}",
              f"- evaluation loss (fixed batch and noise): {summary['eval_loss_start']:.5f} at the start, "
              f"{summary['eval_loss_end']:.5f} at the end"]
    lines += ["", "## Validation", ""] + _validation(summary)
    text = "\n".join(lines) + "\n"
    path = out / "README.md"
    tmp = out / ".README.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _usage(config: GeneratorTrainConfig) -> str:
    if config.method == "lora":
        return ("Load it with `pipe.load_lora_weights(\"THIS_FOLDER\")` on the base pipeline, or in a fer-synth "
                "manifest with `generator.lora: {path: THIS_FOLDER, scale: 1.0}`.")
    return ("Load it with `StableDiffusionPipeline.from_pretrained(\"THIS_FOLDER\")`, or in a fer-synth manifest "
            "with `generator.model: THIS_FOLDER`.")


def _validation(summary: dict) -> list[str]:
    line = summary.get("validation") or {}
    if not line:
        return ["No validation ran."]
    out = [f"![Validation images at step {line['step']}]({line['grid']})", ""]
    expert = summary.get("validation_expert")
    if expert is None or "per_class" not in line:
        return out + ["No validation expert was set: the images were not scored."]
    out += [f"Accuracy of `{expert['name']}` (sha256 `{expert['sha256'][:16]}...`) on the validation images at "
            f"step {line['step']}, per prompted expression (mean {line['mean']:.0%}). A build that guides or labels "
            "with this same model does not get an independent check of its labels from it.", "",
            "| expression | accuracy |", "|---|---|"]
    out += [f"| {name} | {'n/a (the expert has no such class)' if v is None else f'{v:.0%}'} |"
            for name, v in line["per_class"].items()]
    return out
