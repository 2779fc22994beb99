"""The data card's figures (PNG, matplotlib, no display): samples per class, the funnel, class counts, leak similarity.

Each figure is drawn from the release's records and ``stats.json`` only, with
fixed sizes, fonts and no timestamps in the metadata, so the same release
draws the same bytes (a re-push uploads nothing).
"""
from __future__ import annotations

from pathlib import Path

from builder.core.records import Record

PER_CLASS = 6
THUMB = 96
META = {"Software": None}  # no matplotlib version stamp: the same release gives the same bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9})
    return plt


def render_figures(stats: dict, splits: dict[str, list[Record]], names, root: Path, folder: Path) -> dict:
    """Write the figures into ``folder``; return name -> path relative to the release folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, draw in (("samples", lambda p: _samples(splits, names, root, p)),
                       ("funnel", lambda p: _funnel(stats, p)),
                       ("classes", lambda p: _classes(stats, names, p)),
                       ("leak_similarity", lambda p: _leak(stats.get("identity_leak"), p))):
        path = folder / f"{name}.png"
        if draw(path):
            out[name] = f"figures/{path.name}"
    return out


def _save(fig, path: Path) -> bool:
    fig.savefig(path, dpi=100, metadata=META)
    _plt().close(fig)
    return True


def _samples(splits, names, root: Path, path: Path) -> bool:
    """Up to PER_CLASS images per class (lowest sample index first, any split), one row per class."""
    import numpy as np
    from PIL import Image

    by_class: dict[int, list[Record]] = {}
    for record in sorted((r for recs in splits.values() for r in recs), key=lambda r: r.index):
        by_class.setdefault(record.label, []).append(record)
    rows = [c for c in range(len(names)) if by_class.get(c)]
    if not rows:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(rows), PER_CLASS, figsize=(PER_CLASS * 1.2, len(rows) * 1.25), squeeze=False)
    for row, c in enumerate(rows):
        for col in range(PER_CLASS):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if col < len(by_class[c]):
                with Image.open(root / by_class[c][col].image) as im:
                    ax.imshow(np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BICUBIC)))
            if col == 0:
                ax.set_ylabel(f"{names[c]}\n({len(by_class[c])})", rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, path)


def _funnel(stats: dict, path: Path) -> bool:
    stages = [(name, s) for name, s in stats["stages"].items() if name != "release"]
    if not stages:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(stages) + 1))
    labels = [name for name, _ in stages][::-1]
    kept = [s["kept"] for _, s in stages][::-1]
    dropped = [s["in"] - s["kept"] for _, s in stages][::-1]
    ax.barh(labels, kept, color="#4c78a8", label="kept")
    ax.barh(labels, dropped, left=kept, color="#e45756", label="dropped")
    ax.set_xlabel("samples")
    ax.legend(loc="lower right", frameon=False)
    ax.set_title("Samples into each stage")
    fig.tight_layout()
    return _save(fig, path)


def _classes(stats: dict, names, path: Path) -> bool:
    by_split = stats["released"]["class_by_split"]
    if not stats["released"]["total"]:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = [0] * len(names)
    for split, counts in by_split.items():
        values = [counts.get(n, 0) for n in names]
        ax.bar(names, values, bottom=bottom, label=split)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("images")
    ax.set_title("Released images per class and split")
    ax.legend(frameon=False)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return _save(fig, path)


def _leak(leak: dict | None, path: Path) -> bool:
    if not leak or not leak.get("count"):
        return False
    plt = _plt()
    edges, counts = leak["histogram"]["edges"], leak["histogram"]["counts"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.stairs(counts, edges, fill=True, color="#4c78a8")
    ax.axvline(leak["threshold"], color="#e45756", linestyle="--", label=f"threshold {leak['threshold']:.3f}")
    ax.set_xlabel("cosine similarity to the nearest real reference face")
    ax.set_ylabel("faces")
    ax.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, path)
