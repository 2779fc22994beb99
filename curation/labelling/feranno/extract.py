"""Images -> FERAnno inputs: VAE latents, DDIM inversion to t, one UNet pass under ``FeatureTap``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from builder.manifest.label_maps import expression_text
from builder.models.imaging import to_pixels
from curation.labelling.feranno.features import FeatureTap
from curation.labelling.feranno.inversion import encode, invert_to


@dataclass(frozen=True)
class ExtractSettings:
    """Everything besides the backbone and the image that changes the features."""

    resolution: int
    prompt: str
    steps: int = 50
    timestep: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


def default_prompt(label_names) -> str:
    """'a close-up photo of a face with a neutral, happy, ... or angry expression' (every class's adjective)."""
    words = list(dict.fromkeys(expression_text(n) for n in label_names))
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    return f"a close-up photo of a face with a {listed} expression"


class FeatureExtractor:
    """``extractor(images)`` -> {'features': [(B, C, h, w)] coarse to fine, 'attention': {(h, w): (B, tokens, h, w)},
    't': timestep}, float32 on the CPU (or the backbone's device). ``text`` is the prompt's (1, tokens, D) text-encoder states."""

    def __init__(self, pipe, settings: ExtractSettings):
        self.pipe, self.settings = pipe, settings
        tokenizer = pipe.tokenizer
        ids = tokenizer(settings.prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
        self.tokens = len(ids)  # BOS + words + EOS; the attention maps keep these
        with torch.no_grad():
            self._text, _ = pipe.encode_prompt([settings.prompt], pipe.unet.device, 1, False)
        self.text = self._text[:, : self.tokens].float().cpu()

    @torch.no_grad()
    def __call__(self, images, on_device: bool = False) -> dict:
        """``on_device``: leave the float32 features on the backbone's device (labelling) instead of copying
        them to the CPU (caching for training)."""
        s = self.settings
        pixels = to_pixels(images, s.resolution)
        x_t, t = invert_to(self.pipe, encode(self.pipe, pixels), self._text, s.steps, s.timestep)
        text = self._text.to(x_t.dtype).expand(x_t.shape[0], -1, -1)
        with FeatureTap(self.pipe.unet, self.tokens) as tap:
            self.pipe.unet(x_t, t, encoder_hidden_states=text)
        place = (lambda x: x.float()) if on_device else (lambda x: x.float().cpu())  # noqa: E731
        return {"features": [place(f) for f in tap.features],
                "attention": {hw: place(a) for hw, a in tap.attention.items()},
                "t": t}


class LazyExtractor:
    """A ``FeatureExtractor`` whose pipeline is loaded on first use (never, when every feature is cached);
    counts the images it extracts and the seconds spent."""

    def __init__(self, spec, settings: ExtractSettings, weights_sha256: str):
        self.spec, self.settings, self.weights_sha256 = spec, settings, weights_sha256
        self._extractor: FeatureExtractor | None = None
        self.extracted, self.seconds = 0, 0.0

    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            from builder.core.errors import ModelLoadError
            from builder.models.diffusion import load_pipeline

            pipe, _, provenance = load_pipeline(self.spec)
            if provenance.weights_sha256 != self.weights_sha256:
                raise ModelLoadError(f"the weights of '{self.spec.model}' changed during the run",
                                     fix="rerun once the model files are stable")
            self._extractor = FeatureExtractor(pipe, self.settings)
        return self._extractor

    def extract(self, images) -> list[dict]:
        """One {'features', 'attention', 't'} dict per image (tensors without the batch dimension)."""
        import time

        started = time.perf_counter()
        batch = self.extractor()(images)
        self.extracted += len(images)
        self.seconds += time.perf_counter() - started
        return [{"features": [f[i] for f in batch["features"]],
                 "attention": {hw: a[i] for hw, a in batch["attention"].items()}, "t": batch["t"]}
                for i in range(len(images))]
