"""A trained FERAnno model as an image labeller: RGB images -> class probabilities.

``FERAnnoLabeller.from_pretrained(folder, device)`` loads the model and the
diffusion backbone named in its config (local files only, like the rest of the
tool) and refuses a backbone whose weights differ from the ones it was trained on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.core.errors import ModelLoadError
from curation.labelling.feranno.model import CONFIG_NAME, WEIGHTS_NAME


class FERAnnoLabeller:
    """``predict(images) -> (N, C)`` probabilities (temperature applied); ``label_names``; ``describe()``."""

    def __init__(self, model, extractor, folder: Path, batch_size: int = 8):
        self.model, self.extractor, self.folder, self.batch_size = model, extractor, Path(folder), batch_size
        self.meta = model.config.meta
        self.label_names: tuple[str, ...] = tuple(self.meta["label_names"])

    @property
    def dtype(self) -> str:
        """The backbone's dtype ('float32', 'bfloat16', ...)."""
        return str(self.extractor.pipe.unet.dtype).removeprefix("torch.")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "auto", batch_size: int = 8,
                        dtype: str = "float32") -> FERAnnoLabeller:
        """``dtype``: the backbone's (``Generator.dtype`` values); the head always runs in float32."""
        from builder.manifest import Generator
        from builder.models.diffusion import load_pipeline
        from curation.labelling.feranno.extract import ExtractSettings, FeatureExtractor
        from curation.labelling.feranno.model import FERAnno

        folder = Path(folder)
        model = FERAnno.from_pretrained(folder)
        meta = model.config.meta
        spec = Generator(model=meta["base_model"], revision=meta.get("revision"), device=device, dtype=dtype)
        pipe, _, provenance = load_pipeline(spec)
        if provenance.weights_sha256 != meta["weights_sha256"]:
            raise ModelLoadError(
                f"{folder / CONFIG_NAME}: field 'meta.weights_sha256' says the labeller was trained on weights "
                f"{meta['weights_sha256'][:12]}... of '{meta['base_model']}', but that model now has "
                f"{provenance.weights_sha256[:12]}...",
                fix="load the exact checkpoint (and revision) it was trained on, or retrain with "
                "`build-dataset train-feranno`")
        inversion = meta["inversion"]
        extractor = FeatureExtractor(pipe, ExtractSettings(meta["resolution"], meta["prompt"], inversion["steps"],
                                                           inversion["timestep"]))
        if extractor.tokens != model.config.tokens:
            raise ModelLoadError(f"{folder / CONFIG_NAME}: the prompt has {extractor.tokens} tokens with this "
                                 f"tokenizer, the model expects {model.config.tokens}",
                                 fix="use the tokenizer the model was trained with")
        return cls(model.to(pipe.unet.device).eval(), extractor, folder, batch_size)

    def predict(self, images) -> np.ndarray:
        """Probabilities (N, C) for RGB images: PIL, HxWx3 uint8 or [0, 1] float arrays, or a (N, 3, H, W) tensor."""
        import torch

        device = next(self.model.parameters()).device
        text = self.extractor.text.to(device)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.extractor(images[start: start + self.batch_size], on_device=True)
            with torch.no_grad():
                probs = self.model.predict_proba([f.to(device) for f in batch["features"]],
                                                 {hw: a.to(device) for hw, a in batch["attention"].items()}, text)
            out.append(probs.cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)))

    def describe(self) -> dict:
        """Provenance: path, sha256 of the weights file, backbone, feature timestep and inversion settings,
        temperature, label names; the backbone dtype unless float32 (what builds before it existed ran)."""
        from builder.models.diffusion import file_sha256

        info = {"path": str(self.folder), "sha256": file_sha256(self.folder / WEIGHTS_NAME),
                "base_model": self.meta["base_model"], "revision": self.meta.get("revision"),
                "base_weights_sha256": self.meta["weights_sha256"], "timestep": self.meta["inversion"]["t"],
                "inversion": dict(self.meta["inversion"]),
                "temperature": float(self.model.temperature), "label_names": list(self.label_names)}
        if self.dtype != "float32":
            info["dtype"] = self.dtype
        return info
