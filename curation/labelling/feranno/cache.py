"""On-disk cache of FERAnno inputs, one safetensors file per image.

The backbone is frozen and the inversion deterministic, so an image's features
are a function of its pixels and the extraction parameters (backbone weights'
sha256, resolution, prompt, inversion steps and timestep): the file name is a
hash of both. Files are written to a temporary name and renamed, so a killed
run leaves no partial entry; an unreadable entry is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import torch

CACHE_FORMAT = 1


class FeatureCache:
    """``key(image)``, ``get(key)``, ``put(key, example)``; ``text()`` / ``put_text()`` for the prompt states."""

    def __init__(self, folder: Path, params: dict):
        self.folder = Path(folder)
        self.params = {**params, "cache_format": CACHE_FORMAT}
        self.digest = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()

    def key(self, image) -> str:
        """Hash of the extraction parameters and the image's RGB pixels (PIL image)."""
        from builder.core.images import to_rgb8

        pixels = np.asarray(to_rgb8(image))
        h = hashlib.sha256(self.digest.encode())
        h.update(f"{pixels.shape}".encode())
        h.update(pixels.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (its safetensors header parses and matches the file size)."""
        return self.timestep(key) is not None

    def timestep(self, key: str) -> int | None:
        """The UNet timestep an entry was extracted at; None if there is no readable entry."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(self.path(key), framework="pt") as fh:
                return int(fh.metadata()["t"])
        except (OSError, SafetensorError, KeyError, TypeError, ValueError):
            return None

    def get(self, key: str) -> dict | None:
        """{'features': [...], 'attention': {(h, w): ...}} of one image (no batch dimension), or None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(self.path(key))
        except (OSError, SafetensorError):
            return None
        features = [tensors[f"feature.{i}"] for i in range(sum(k.startswith("feature.") for k in tensors))]
        attention = {tuple(int(v) for v in k.removeprefix("attention.").split("x")): t
                     for k, t in tensors.items() if k.startswith("attention.")}
        return {"features": features, "attention": attention}

    def put(self, key: str, example: dict) -> None:
        """Store one image's features (tensors without the batch dimension)."""
        tensors = {f"feature.{i}": f for i, f in enumerate(example["features"])}
        tensors.update({f"attention.{h}x{w}": a for (h, w), a in example["attention"].items()})
        self._write(self.path(key), tensors, {"t": str(example["t"])})

    def text(self) -> tuple[torch.Tensor, dict] | None:
        """(prompt states (1, tokens, D), info) stored by ``put_text``, or None."""
        from safetensors import SafetensorError, safe_open

        path = self.folder / f"text-{self.digest[:32]}.safetensors"
        try:
            with safe_open(path, framework="pt") as fh:
                return fh.get_tensor("text"), json.loads(fh.metadata()["info"])
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError):
            return None

    def put_text(self, text: torch.Tensor, info: dict) -> None:
        self._write(self.folder / f"text-{self.digest[:32]}.safetensors", {"text": text}, {"info": json.dumps(info)})

    @staticmethod
    def _write(path: Path, tensors: dict, metadata: dict) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex[:12]}-{path.name}"
        try:
            save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


    def fill(self, examples, extractor, batch_size: int, skipped: Counter, progress: bool, desc: str) -> list:
        """[(key, label)] of every readable example of ``examples`` (``data.LabelledImages``), extracting with
        ``extractor`` (``extract.LazyExtractor``) the ones not cached yet; unreadable images count in ``skipped``."""
        from tqdm.auto import tqdm

        for stale in [*self.folder.glob(".tmp-*"), *self.folder.glob("*/.tmp-*")]:  # left by a killed run
            stale.unlink(missing_ok=True)
        keys, pending = [], {}

        def flush():
            for (key, _), example in zip(pending.items(), extractor.extract(list(pending.values())), strict=True):
                self.put(key, example)
            pending.clear()

        for i in tqdm(range(len(examples)), desc=f"features ({desc})", unit="img", disable=not progress,
                      dynamic_ncols=True):
            image = examples.image(i)
            if image is None:
                skipped["unreadable_image"] += 1
                continue
            key = self.key(image)
            keys.append((key, examples.label(i)))
            if key not in pending and not self.has(key):
                pending[key] = image
                if len(pending) >= batch_size:
                    flush()
        if pending:
            flush()
        return keys


def collate(examples: list[dict], device) -> tuple[list[torch.Tensor], dict]:
    """Stack cached examples into (features per scale, attention per resolution) batches on ``device``."""
    features = [torch.stack([e["features"][i] for e in examples]).to(device)
                for i in range(len(examples[0]["features"]))]
    attention = {hw: torch.stack([e["attention"][hw] for e in examples]).to(device) for hw in examples[0]["attention"]}
    return features, attention
