"""Train a FERAnno labeller on a frozen diffusion backbone (``build-dataset train-feranno``).

Features are extracted once per image into ``output_dir/features/`` and reused
by every later run. Batches are drawn from (seed, epoch), so a run resumed from
a checkpoint ends with the same weights as an uninterrupted one. After the last
epoch a temperature is fitted on the validation logits; the metrics before and
after it are measured on that same validation set (so the calibrated ECE is
optimistic). Outputs in ``output_dir``: ``feranno.safetensors`` +
``feranno_config.json``, ``metrics.json``, ``training_summary.json``,
``loss.jsonl`` and ``checkpoints/epoch-N/``.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from builder.core.checkpoints import (
    checkpoint_number,
    config_changes,
    latest_checkpoint,
    record_config,
    save_checkpoint,
    trim_log,
)
from builder.core.errors import OutputDirError, UserError
from builder.core.seeding import derive_seed
from builder.manifest.label_maps import LABEL_MAPS
from curation.labelling.feranno.config import FERAnnoTrainConfig

ARGS_FILE = "training_args.json"
RESUMABLE_CHANGES = {"epochs", "checkpoint_every", "extract_batch_size"}  # train.* fields a resume may change


def train_feranno(config: FERAnnoTrainConfig, source: str = "<config>", progress: bool = True, log=print) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from builder.manifest import Generator
    from builder.models.diffusion import (
        resolve_checkpoint,
        resolve_device,
        weights_sha256,
    )
    from curation.labelling.feranno import calibration as cal
    from curation.labelling.feranno.cache import FeatureCache, collate
    from curation.labelling.feranno.extract import (
        ExtractSettings,
        LazyExtractor,
        default_prompt,
    )
    from curation.labelling.feranno.model import FERAnno, FERAnnoConfig

    out, settings, names = config.out, config.train, LABEL_MAPS[config.label_map]
    train_set, val_set, skipped = _examples(config, names, source)
    start_epoch = _claim(out, config)

    spec = Generator(model=config.base_model, revision=config.revision, device=settings.device, dtype="float32")
    folder, revision = resolve_checkpoint(spec)
    base_sha = weights_sha256(folder)
    extract = ExtractSettings(config.resolution, config.prompt or default_prompt(names), config.inversion.steps,
                              config.inversion.timestep)
    cache = FeatureCache(out / "features", {"weights_sha256": base_sha, **extract.to_dict()})
    try:
        device = resolve_device(settings.device)
    except UserError as exc:
        raise UserError(f"train.device is '{settings.device}', which is not available here", file=source,
                        fix="set train.device to 'auto' or 'cpu', or run on a machine with that device") from exc
    backbone = LazyExtractor(spec, extract, base_sha)
    started = time.perf_counter()
    keys = {}
    for name, examples in (("training", train_set), ("validation", val_set)):
        keys[name] = cache.fill(examples, backbone, settings.extract_batch_size, skipped, progress, name)
        if not keys[name]:
            raise UserError(f"no usable {name} image (skipped: {dict(skipped) or 'none'})", file=source,
                            fix="check the images and labels of data" + (".validation" if name[0] == "v" else ""))
    train_keys, val_keys = keys["training"], keys["validation"]
    if cache.text() is None:
        cache.put_text(backbone.extractor().text, {"tokens": backbone.extractor().tokens})
    text, _ = cache.text()
    extract_seconds = time.perf_counter() - started
    log(f"features: {backbone.extracted} extracted, {len(train_keys) + len(val_keys) - backbone.extracted} "
        f"reused from {cache.folder}" + (f"; skipped examples: {dict(skipped)}" if skipped else ""))

    first = cache.get(train_keys[0][0])
    shapes = {"features": [list(f.shape) for f in first["features"]],
              "attention": {f"{h}x{w}": list(a.shape) for (h, w), a in first["attention"].items()}}
    t = cache.timestep(train_keys[0][0])
    meta = {"label_map": config.label_map, "label_names": list(names), "base_model": config.base_model,
            "revision": config.revision, "resolved_revision": revision, "weights_sha256": base_sha,
            "resolution": config.resolution, "prompt": extract.prompt,
            "inversion": {"steps": extract.steps, "timestep": extract.timestep, "t": t},
            "tokens": text.shape[1], "feature_shapes": shapes, "dtype": "float32"}
    model_config = FERAnnoConfig(feature_channels=[s[0] for s in shapes["features"]], tokens=text.shape[1],
                                 text_dim=text.shape[2], num_classes=len(names), hidden_dim=config.model.hidden_dim,
                                 heads=config.model.heads, mlp_ratio=config.model.mlp_ratio, meta=meta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(settings.seed, 0, "feranno-init"))
        model = FERAnno(model_config)
    model.to(device)
    text = text.to(device)

    def batches(keys, order, size):
        for b in range(0, len(order), size):
            chosen = [keys[i] for i in order[b: b + size]]
            features, attention = collate([cache.get(k) for k, _ in chosen], device)
            yield features, attention, torch.tensor([label for _, label in chosen], device=device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    checkpoint = latest_checkpoint(out, "epoch")
    if checkpoint is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(checkpoint / "model.safetensors", device=str(device)))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True))
        log(f"resuming from {checkpoint.name}")
    else:
        model.fit_input_stats((f, a) for f, a, _ in batches(train_keys, list(range(len(train_keys))), 64))
    trim_log(out / "loss.jsonl", "epoch", start_epoch)

    def logits_of(keys) -> tuple:
        model.eval()
        with torch.no_grad():
            parts = [(model(f, a, text).cpu().double(), y.cpu()) for f, a, y in
                     batches(keys, list(range(len(keys))), settings.batch_size)]
        model.train()
        return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()

    train_started = time.perf_counter()
    model.train()
    bar = tqdm(range(start_epoch, settings.epochs), initial=start_epoch, total=settings.epochs, unit="epoch",
               desc="train-feranno", disable=not progress, dynamic_ncols=True)
    with open(out / "loss.jsonl", "a", encoding="utf-8") as loss_log:
        for epoch in bar:
            gen = torch.Generator().manual_seed(derive_seed(settings.seed, epoch, "feranno-batches"))
            order = torch.randperm(len(train_keys), generator=gen).tolist()
            total = 0.0
            for features, attention, labels in batches(train_keys, order, settings.batch_size):
                loss = F.cross_entropy(model(features, attention, text), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(labels)
            logits, labels = logits_of(val_keys)
            probs = cal.softmax(logits)
            row = {"epoch": epoch + 1, "loss": round(total / len(train_keys), 6),
                   "val_nll": round(cal.nll(probs, labels), 6), "val_accuracy": round(cal.accuracy(probs, labels), 6),
                   "seconds": round(time.perf_counter() - train_started, 3)}
            loss_log.write(json.dumps(row) + "\n")
            loss_log.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", val_acc=f"{row['val_accuracy']:.3f}")
            if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.epochs:
                _save_checkpoint(out, epoch + 1, model, optimizer)
    train_seconds = time.perf_counter() - train_started

    logits, labels = logits_of(val_keys)
    train_logits, train_labels = logits_of(train_keys)
    metrics = cal.report(logits, labels, train_logits, train_labels, names)
    temperature = metrics["validation"]["temperature"]
    if metrics["validation"]["temperature_at_bound"]:
        log(f"note: the fitted temperature {temperature:.3g} is at its bound: the validation set is too small "
            "or perfectly separated to calibrate on")
    model.temperature.fill_(temperature)
    model.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    examples = len(train_keys) + len(val_keys)
    summary = {"epochs": settings.epochs, "resumed_from_epoch": start_epoch, "device": str(device),
               "examples": {"train": len(train_keys), "validation": len(val_keys)}, "skipped": dict(skipped),
               "features": {"extracted": backbone.extracted, "reused": examples - backbone.extracted,
                            "seconds": round(extract_seconds, 3), "shapes": shapes, "t": t},
               "training_seconds": round(train_seconds, 3),
               "seconds_per_image_epoch": round(train_seconds / max(1, (settings.epochs - start_epoch) *
                                                                    len(train_keys)), 6),
               "weights_sha256": base_sha, "model": str(out)}
    if backbone.extracted:
        summary["features"]["seconds_per_extracted_image"] = round(backbone.seconds / backbone.extracted, 4)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    v = metrics["validation"]
    log(f"FERAnno: validation accuracy {v['accuracy']:.3f} (macro {v['macro_accuracy']:.3f}, {v['examples']} images), "
        f"ECE {v['ece_before']:.3f} -> {v['ece_after']:.3f} at temperature {temperature:.3f}; model saved to {out}")
    return {"metrics": metrics, "summary": summary}


def _examples(config: FERAnnoTrainConfig, names, source: str):
    """(train examples, validation examples, skipped counts)."""
    from curation.labelling.feranno.data import LabelledImages, split_validation

    data = config.data
    train = LabelledImages(data, names, source, "data")
    skipped = Counter(train.skipped)
    if data.validation is not None:
        validation = LabelledImages(data.validation, names, source, "data.validation")
        skipped.update(validation.skipped)
        return train, validation, skipped
    train_idx, val_idx = split_validation(train, data.validation_fraction, config.train.seed)
    if not val_idx:
        raise UserError(f"data.validation_fraction {data.validation_fraction} leaves no validation image "
                        f"({len(train)} examples)", file=source,
                        fix="raise data.validation_fraction, add images, or give data.validation")
    return train.subset(train_idx), train.subset(val_idx), skipped


def _claim(out: Path, config: FERAnnoTrainConfig) -> int:
    """Record the config in ``output_dir`` or check a resumed run matches it; return the epoch to start at.

    Without a checkpoint there is nothing to resume, and any config may take the folder over (the
    feature cache is keyed by what changes features)."""
    out.mkdir(parents=True, exist_ok=True)
    args = out / ARGS_FILE
    current = config.model_dump(mode="json")
    latest = latest_checkpoint(out, "epoch")
    if args.exists() and latest is not None:
        changed = config_changes(json.loads(args.read_text()), current, RESUMABLE_CHANGES)
        if changed:
            raise OutputDirError(f"'{out}' holds a FERAnno training run with a different config "
                                 f"(changed: {', '.join(changed)})",
                                 fix="use a new output_dir; only train.epochs, train.checkpoint_every and "
                                 "train.extract_batch_size may change on resume")
    record_config(out, ARGS_FILE, current)
    epoch = checkpoint_number(latest, "epoch")
    if epoch > config.train.epochs:
        raise OutputDirError(f"'{out}' already holds a checkpoint after epoch {epoch}, past train.epochs "
                             f"({config.train.epochs})", fix=f"set train.epochs to at least {epoch}, or use a new output_dir")
    return epoch


def _save_checkpoint(out: Path, epoch: int, model, optimizer) -> None:
    import torch
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  folder / "model.safetensors")
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")

    save_checkpoint(out, "epoch", epoch, write)
