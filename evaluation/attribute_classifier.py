"""The attribute classifiers of ``build-dataset audit``: transformers image-classification models (a Hub id or a
``save_pretrained`` folder; safetensors only, never ``trust_remote_code``), loaded like the fidelity encoders
(``evaluation.encoders``), whose config's ``id2label`` names the groups they predict."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from builder.core.errors import UserError

GENERIC_LABEL = re.compile(r"^LABEL_\d+$")
EXAMPLES = "nateraw/vit-age-classifier, rizvandwiki/gender-classification, or a save_pretrained folder"
FIX = ("give a transformers image-classification model (config.json with id2label, model.safetensors, "
       f"preprocessor_config.json): a Hub id ({EXAMPLES})")


# -- classifiers -------------------------------------------------------------------------------------------------
@dataclass
class Classifier:
    """A loaded attribute classifier: ``predict(images)`` -> (label indices, probabilities of those labels)."""

    model: object
    processor: object
    labels: tuple[str, ...]
    device: str
    info: dict = field(default_factory=dict)

    def predict(self, images: list) -> tuple[list[int], list[float]]:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            probs = self.model(pixel_values=pixels).logits.float().softmax(-1).cpu()
        best = probs.argmax(-1)
        return [int(i) for i in best], [round(float(probs[k, i]), 6) for k, i in enumerate(best)]


def load_classifier(spec: str, revision: str | None = None, device: str = "cpu", log=print) -> Classifier:
    """The image-classification model ``spec`` names (Hub id or folder), in eval mode on ``device``."""
    from evaluation.encoders import (
        _check_weights,
        _combined,
        _first,
        _resolve,
        _weight_files,
        image_processor,
        pretrained,
    )

    flag = "--classifier"
    folder, source, resolved = _resolve(spec, revision, flag=flag, fix=FIX)
    _check_weights(folder, spec, flag=flag)
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    transformers.utils.logging.disable_progress_bar()
    config_file = str(folder / "config.json")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"{flag} '{spec}': config.json is not a transformers model config ({_first(exc)})",
                        file=config_file, fix=FIX) from None
    cls = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING.get(type(config), None)
    architectures = list(getattr(config, "architectures", None) or ())
    if cls is None or (architectures and not any("ForImageClassification" in a for a in architectures)):
        arch = ", ".join(architectures) or config.model_type
        raise UserError(f"{flag} '{spec}' is a '{config.model_type}' model ({arch}), not an image-classification "
                        "model: it has no classification head whose labels define the groups", file=config_file,
                        fix=FIX)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    labels = tuple(id2label[i] for i in sorted(id2label))
    if len(labels) < 2 or sorted(id2label) != list(range(len(labels))):
        raise UserError(f"{flag} '{spec}': its config's id2label has {len(labels)} label(s) ({', '.join(labels)}); "
                        "an audit needs two or more groups numbered 0..N-1", file=config_file,
                        fix="give a classifier whose config.json lists its groups in id2label")
    if all(GENERIC_LABEL.match(label) for label in labels):
        raise UserError(f"{flag} '{spec}': its config's id2label names no groups ({', '.join(labels[:3])}"
                        f"{', ...' if len(labels) > 3 else ''})", file=config_file,
                        fix="set id2label in config.json to the group names the model was trained on (e.g. "
                        "{\"0\": \"0-2\", \"1\": \"3-9\", ...})")
    if len(set(labels)) < len(labels):
        raise UserError(f"{flag} '{spec}': its config's id2label repeats a label ({', '.join(labels)})",
                        file=config_file, fix="give each class of id2label a distinct name")
    processor = image_processor(folder, spec, flag)
    log(f"loading classifier {spec} ({cls.__name__}, {len(labels)} groups: {', '.join(labels)})")
    model, loading = pretrained(cls, folder, spec, flag)
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise UserError(f"{flag} '{spec}': its weights leave {len(missing)} {cls.__name__} tensor(s) uninitialised "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); its predictions would be "
                        "random", file=str(folder), fix="give a trained classifier checkpoint (with its head)")
    model = model.to(device).eval().requires_grad_(False)
    files = _weight_files(folder)
    info = {"id": spec, "source": source, "folder": str(folder.resolve()), "revision": resolved,
            "model_type": config.model_type, "architecture": cls.__name__, "labels": list(labels),
            "weights_sha256": _combined(files), "weight_files": files, "processor": type(processor).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "device": device,
            "threads": torch.get_num_threads()}
    return Classifier(model, processor, labels, device, info)
