"""Training: a linear head on a backbone, fine-tuned end to end or trained on frozen features (linear probe).

Seeded throughout: ``torch.manual_seed(seed)`` before the head is made, and
every epoch's order and flips from ``numpy.random.default_rng([seed, epoch])``,
so the same command gives the same numbers on the same device (on a GPU, cuDNN
runs in deterministic mode).

The real/synthetic mix (``--mix RATIO``, the fraction of real samples in every
epoch): an epoch holds every synthetic training sample once plus
``round(N_syn * RATIO / (1 - RATIO))`` real samples, taken in turn from seeded
permutations of the real set (so over epochs every real sample is seen about
equally often); the epoch is then shuffled. ``RATIO`` 0 trains on synthetic
data only, 1 on real data only (one pass over the real set per epoch, the
baseline to compare with).

Fine-tuning: AdamW (backbone ``lr``, head ``head_lr``), cosine decay over all
steps, cross-entropy, horizontal flips. Linear probe: the backbone in eval
mode computes each image's features once (no flips); only the head trains.
The last epoch's model is evaluated (no selection on the test set).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Settings:
    mode: str  # "finetune" or "linear"
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    seed: int
    flip: bool
    device: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Pool:
    """Training images of one origin: sample ``k`` is crop ``pixels[rows[k]]`` (uint8, possibly memory-mapped)
    with model class ``labels[k]``."""

    name: str  # "synthetic" or "real"
    pixels: np.ndarray
    rows: np.ndarray
    labels: np.ndarray


def resolve_device(requested: str) -> str:
    from builder.core.errors import UserError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is visible", fix="use --device auto or cpu")
    return requested


def mix_counts(n_syn: int, n_real: int, ratio: float) -> tuple[int, int]:
    """(synthetic, real) samples per epoch for ``--mix RATIO`` (see the module docstring)."""
    if n_real == 0 or ratio <= 0:
        return n_syn, 0
    if ratio >= 1 or n_syn == 0:
        return 0, n_real
    return n_syn, round(n_syn * ratio / (1 - ratio))


def epoch_plan(n_syn: int, n_real: int, ratio: float | None, seed: int,
               epochs: int) -> list[list[tuple[int, int]]]:
    """Per epoch, the shuffled (pool, index) pairs: pool 0 synthetic, 1 real. ``ratio`` None: every sample of
    both pools once per epoch (the union; ``--synthetic-ratios``)."""
    if ratio is None:
        union = [(0, i) for i in range(n_syn)] + [(1, i) for i in range(n_real)]
        return [[union[j] for j in np.random.default_rng([seed, epoch]).permutation(len(union))]
                for epoch in range(epochs)]
    syn, real = mix_counts(n_syn, n_real, ratio)
    plan, stream, turn = [], [], 0
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        items = [(0, int(i)) for i in rng.permutation(n_syn)[:syn]] if syn else []
        while len(stream) < real:
            stream += [int(i) for i in np.random.default_rng([seed, 1_000_000 + turn]).permutation(n_real)]
            turn += 1
        items += [(1, i) for i in stream[:real]]
        stream = stream[real:]
        plan.append([items[j] for j in rng.permutation(len(items))])
    return plan


def batch_slices(n: int, size: int) -> list[slice]:
    """Batches of ``size``; a last batch of one sample joins the one before (batch norm needs two)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(s, starts[k + 1] if k + 1 < len(starts) else n) for k, s in enumerate(starts)]


def to_input(pixels: np.ndarray, size: int, mean, std, flip: np.ndarray | None = None,
             device: str = "cpu") -> torch.Tensor:
    """uint8 crops (B, S, S, 3) -> normalised float (B, 3, size, size) on ``device``; ``flip`` mirrors the
    marked ones. The uint8 batch moves first, so resizing runs on the GPU when there is one."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if flip is not None and flip.any():
        marked = torch.from_numpy(flip).to(device)
        x[marked] = x[marked].flip(-1)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(std, device=device).view(1, 3, 1, 1)


class Classifier(nn.Module):
    """Backbone features -> linear head over the model's classes."""

    def __init__(self, backbone: nn.Module, dim: int, classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _gather(pools: list[Pool], items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([pools[p].pixels[pools[p].rows[i]] for p, i in items])
    labels = np.array([pools[p].labels[i] for p, i in items], dtype=np.int64)
    return pixels, labels


@torch.no_grad()
def features(backbone, pixels: np.ndarray, rows: np.ndarray, batch_size: int, device: str) -> torch.Tensor:
    """Backbone features of the crops ``pixels[rows]``, in eval mode, on the CPU."""
    backbone.module.eval()
    out = []
    for sl in batch_slices(len(rows), batch_size):
        x = to_input(pixels[rows[sl]], backbone.input_size, backbone.mean, backbone.std, device=device)
        out.append(backbone.module(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, backbone.dim)


def fit(backbone, pools: list[Pool], classes: int, settings: Settings, ratio: float | None, log=print):
    """Train (``ratio``: see ``epoch_plan``); returns (Classifier on ``settings.device``, per-epoch history)."""
    device = settings.device
    if device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(settings.seed)
    model = Classifier(backbone.module, backbone.dim, classes).to(device)
    n_syn, n_real = len(pools[0].labels), len(pools[1].labels) if len(pools) > 1 else 0
    plan = epoch_plan(n_syn, n_real, ratio, settings.seed, settings.epochs)
    linear = settings.mode == "linear"
    if linear:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        cached = [features(backbone, pool.pixels, pool.rows, settings.batch_size, device) for pool in pools]
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": settings.lr},
                                       {"params": model.head.parameters(), "lr": settings.head_lr}],
                                      weight_decay=settings.weight_decay)
    steps = sum(len(batch_slices(len(items), settings.batch_size)) for items in plan)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch, items in enumerate(plan):
        started = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch, 1])
        flips = rng.random(len(items)) < 0.5 if settings.flip and not linear else None
        model.head.train()
        if not linear:
            model.backbone.train()
        total, correct, count = 0.0, 0, 0
        for sl in batch_slices(len(items), settings.batch_size):
            chunk = items[sl]
            labels = torch.tensor([pools[p].labels[i] for p, i in chunk], dtype=torch.long, device=device)
            if linear:
                x = torch.stack([cached[p][i] for p, i in chunk]).to(device)
                logits = model.head(x)
            else:
                pixels, _ = _gather(pools, chunk)
                x = to_input(pixels, backbone.input_size, backbone.mean, backbone.std,
                             None if flips is None else flips[sl], device)
                logits = model(x)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(chunk)
            correct += int((logits.argmax(1) == labels).sum())
            count += len(chunk)
        synthetic = sum(1 for p, _ in items if p == 0)
        history.append({"epoch": epoch + 1, "samples": count, "synthetic": synthetic, "real": count - synthetic,
                        "loss": total / max(1, count), "train_accuracy": correct / max(1, count),
                        "seconds": round(time.perf_counter() - started, 3)})
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.4f}, "
            f"train accuracy {history[-1]['train_accuracy']:.3f} ({count} samples)")
    return model, history


@torch.no_grad()
def predict(model: Classifier, backbone, pixels: np.ndarray, rows: np.ndarray, batch_size: int,
            device: str) -> np.ndarray:
    """Class probabilities (len(rows), classes) of the crops ``pixels[rows]`` as float64, in eval mode."""
    model.eval()
    out = []
    for sl in batch_slices(len(rows), batch_size):
        x = to_input(pixels[rows[sl]], backbone.input_size, backbone.mean, backbone.std, device=device)
        out.append(torch.softmax(model(x).float(), dim=1).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_features))
