"""Figures of a training-pairs release (the manifest's ``annotate``): a grid of pairs with their captions, the
caption lengths in text-encoder tokens, and the mean AU intensity per class. Same size and style rules as
``cards.figures`` (750 px wide, heights in whole 25 px steps, byte-stable)."""
from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

from builder.core.paths import record_file
from builder.core.records import Record
from cards.figures import (
    DPI,
    WIDTH,
    _count_axis,
    _new_figure,
    _snap,
    _wrap,
    save_figures,
)

PAIRS = 6  # pairs shown
PAIR_THUMB = 128  # px
CAPTION_CHARS = 62  # characters per caption line in the grid
CAPTION_LINES = 6


def pairs_figure(records: list[Record], names, root: Path):
    """The first ``PAIRS`` released pairs (lowest sample index), each image beside its caption and class."""
    import numpy as np
    from PIL import Image

    shown = sorted((r for r in records if r.text), key=lambda r: r.index)[:PAIRS]
    if not shown:
        return None
    margin, gap = 10, 12
    height = _snap((2 * margin + len(shown) * PAIR_THUMB + (len(shown) - 1) * gap) / DPI)
    fig = _new_figure(height, layout=None)
    w, h = WIDTH * DPI, height * DPI
    for row, record in enumerate(shown):
        top = margin + row * (PAIR_THUMB + gap)
        ax = fig.add_axes((margin / w, 1 - (top + PAIR_THUMB) / h, PAIR_THUMB / w, PAIR_THUMB / h))
        ax.set_axis_off()
        with Image.open(record_file(root, record.image)) as im:
            ax.imshow(np.asarray(im.convert("RGB").resize((PAIR_THUMB, PAIR_THUMB), Image.Resampling.BICUBIC)),
                      interpolation="nearest")
        lines = textwrap.wrap(record.text, CAPTION_CHARS)
        if len(lines) > CAPTION_LINES:
            lines = lines[:CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][:CAPTION_CHARS - 1] + "…"]
        fig.text((2 * margin + PAIR_THUMB) / w, 1 - (top + 4) / h, f"{names[record.label]}\n" + "\n".join(lines),
                 ha="left", va="top", fontsize=9)
    return fig


def caption_lengths_figure(records: list[Record]):
    """How many released captions have each length in text-encoder tokens, with the encoder's limit."""
    lengths = [int(r.scores["caption_tokens"]) for r in records if "caption_tokens" in r.scores]
    if not lengths:
        return None
    fig = _new_figure(_snap(2.75))
    ax = fig.add_subplot()
    bins = range(0, max(lengths) + 2, max(1, (max(lengths) + 1) // 30 or 1))
    ax.hist(lengths, bins=list(bins), color="#4c78a8")
    ax.set_xlabel("caption length (text-encoder tokens, with the start and end tokens)")
    ax.set_ylabel("captions")
    _count_axis(ax.yaxis)
    ax.set_title("Caption lengths", loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def au_by_class_figure(records: list[Record], names, au_names):
    """Mean measured intensity (0-5) of each AU per released class; blank where the detector has no value."""
    import numpy as np

    classes = sorted({r.label for r in records if r.au})
    if not classes or not au_names:
        return None
    table = np.full((len(classes), len(au_names)), np.nan)
    for row, c in enumerate(classes):
        values = np.array([[np.nan if v is None else v for v in r.au] for r in records if r.label == c and r.au],
                          dtype=float)
        if len(values):
            with warnings.catch_warnings():  # an AU the detector never measures: a blank cell, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                table[row] = np.nanmean(values, axis=0)
    fig = _new_figure(_snap(0.9 + 0.36 * len(classes)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(table), vmin=0, vmax=5, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(au_names)), au_names, rotation=90 if len(au_names) > 14 else 0)
    ax.set_yticks(range(len(classes)), [_wrap(names[c]) for c in classes])
    ax.set_title("Mean AU intensity per class (0-5)", loc="left")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return fig


def render_pair_figures(stats: dict, splits: dict[str, list[Record]], names, root: Path, folder: Path) -> dict:
    """Write the training-pair figures (when the release has captions or AU intensities) into ``folder``."""
    released = [r for records in splits.values() for r in records]
    au_names = (stats.get("annotate") or {}).get("au_names") or ()
    return save_figures(folder, (("pairs", lambda: pairs_figure(released, names, root)),
                                 ("caption_lengths", lambda: caption_lengths_figure(released)),
                                 ("au_by_class", lambda: au_by_class_figure(released, names, au_names))))
