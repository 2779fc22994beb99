"""The data card's figures (PNG, matplotlib, no display): samples per class, the funnel, class counts, leak similarity.

Each figure is drawn from the release's records and ``stats.json`` only, with
fixed sizes, fonts and no timestamps in the metadata, so the same release
draws the same bytes (a re-push uploads nothing).

Sizes: every figure is ``WIDTH`` inches at ``DPI``, 750 pixels wide, about the
width the Hub shows card images at (700-800 px), so it is shown at (nearly) its
own size and 10 pt text stays about 13 px tall. Heights grow with the number
of rows (classes, stages) and are whole multiples of a quarter inch, so the
pixel size is exact. Bar charts are horizontal (long class and stage names
sit on their own row, wrapped, never rotated), count axes have whole-number
ticks, and legends sit below the plot, never over the data.

The ``*_figure`` functions return the matplotlib ``Figure`` (``None`` when
there is nothing to draw); ``render_figures`` saves them. No pyplot: the
figures never touch the caller's backend or global state.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path

from builder.core.records import Record

PER_CLASS = 6
THUMB = 96
META = {"Software": None}  # no matplotlib version stamp: the same release gives the same bytes
DPI = 100
WIDTH = 7.5  # inches: 750 px, the Hub's card width
STEP = 0.25  # inches: heights are whole multiples (25 px, exact in binary), so the pixel size is exact
ROW = 0.42  # inches per bar (class, stage)
PAD = 0.1  # inches around the plot, its labels and the legend
WRAP = 16  # characters per line of a class or stage name
MAX_LINES = 3  # lines of a class or stage name at most
MAX_REASONS = 8  # drop reasons the funnel names; the rest are "other"
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "font.family": "DejaVu Sans",
         "axes.spines.top": False, "axes.spines.right": False}
KEPT = "#4c78a8"
SPLIT_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6")
REASON_COLOURS = ("#e45756", "#f58518", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#72b7b2", "#54a24b")
OTHER = "#bab0ac"


def render_figures(stats: dict, splits: dict[str, list[Record]], names, root: Path, folder: Path) -> dict:
    """Write the figures into ``folder``; return name -> path relative to the release folder."""
    return save_figures(folder, (("samples", lambda: samples_figure(splits, names, root)),
                                 ("funnel", lambda: funnel_figure(stats)),
                                 ("classes", lambda: classes_figure(stats, names)),
                                 ("leak_similarity", lambda: leak_figure(stats.get("identity_leak"))),
                                 ("identity_similarity", lambda: drift_figure((stats.get("edit") or {}).get(
                                     "identity")))))


def save_figures(folder: Path, figures) -> dict:
    """Draw each (name, draw) and save it as ``folder/<name>.png`` (a draw returning None saves nothing); return
    name -> path relative to the release folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, draw in figures:
        with _style():
            fig = draw()
            if fig is None:
                continue
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=DPI, metadata=META)
        out[name] = f"figures/{path.name}"
    return out


@contextmanager
def _style():
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _new_figure(height: float = 3.0, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout=layout)
    if layout == "constrained":
        fig.get_layout_engine().set(w_pad=PAD, h_pad=PAD)
    FigureCanvasAgg(fig)
    return fig


def _snap(height: float) -> float:
    """``height`` rounded up to a whole number of ``STEP``s (exact pixels)."""
    return math.ceil(round(height / STEP, 6)) * STEP


def _wrap(name: str, width: int = WRAP, most: int = MAX_LINES) -> str:
    """``name`` on at most ``most`` lines of at most ``width`` characters, broken after spaces, '_', '-' and
    '/' where it can be (inside a longer word where it cannot); what does not fit ends in '…'."""
    lines, line = [], ""
    for space, word in re.findall(r"(\s*)([^\s_\-/]*[_\-/]|[^\s_\-/]+)", str(name).strip()):
        joined = line + (" " if space and line else "") + word
        if len(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        while len(word) > width:
            lines.append(word[:width])
            word = word[width:]
        line = word
    lines.append(line)
    if len(lines) > most:
        lines = lines[:most]
        lines[-1] = lines[-1][:width - 1] + "…"
    return "\n".join(lines)


def _row(labels: list[str]) -> float:
    """Inches per bar: ``ROW``, or more where a wrapped label needs it (0.18 in a line)."""
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    return max(ROW, 0.18 * lines + 0.08)


def _count_axis(axis) -> None:
    """Whole-number ticks with thousands separators on a count axis."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _legend_below(fig, handles, labels, most: int = 5):
    """A frameless legend under the plot, in as many columns (at most ``most``) as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width - 20
    for ncols in range(min(most, len(labels)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False,
                            borderaxespad=PAD * 72 / STYLE["legend.fontsize"])  # centred in its margin
        if ncols == 1 or legend.get_window_extent(renderer).width <= room:
            return legend
        legend.remove()


def _fit_height(fig, labels: list[str], extra: float) -> None:
    """Size ``fig`` for one bar per label plus ``extra`` inches (title, axis label) and its legend."""
    legend = fig.legends[0].get_window_extent(fig.canvas.get_renderer()).height / DPI if fig.legends else 0.0
    fig.set_size_inches(WIDTH, _snap(_row(labels) * len(labels) + extra + legend))


def samples_figure(splits, names, root: Path):
    """Up to PER_CLASS images per class (lowest sample index first, any split), one row per class.

    Thumbnails are ``THUMB`` px, drawn pixel for pixel; the class name (wrapped) and its count sit left of each row.
    """
    import numpy as np
    from PIL import Image

    by_class: dict[int, list[Record]] = {}
    for record in sorted((r for recs in splits.values() for r in recs), key=lambda r: r.index):
        by_class.setdefault(record.label, []).append(record)
    rows = [c for c in range(len(names)) if by_class.get(c)]
    if not rows:
        return None
    gap, row_gap, margin = 8, 12, 10  # px
    left = WIDTH * DPI - margin - PER_CLASS * THUMB - (PER_CLASS - 1) * gap
    height = _snap((2 * margin + len(rows) * THUMB + (len(rows) - 1) * row_gap) / DPI)
    fig = _new_figure(height, layout=None)
    w, h = WIDTH * DPI, height * DPI
    for row, c in enumerate(rows):
        top = margin + row * (THUMB + row_gap)
        fig.text((left - 10) / w, 1 - (top + THUMB / 2) / h, f"{_wrap(names[c], 12, 4)}\n({len(by_class[c]):,})",
                 ha="right", va="center")
        for col, record in enumerate(by_class[c][:PER_CLASS]):
            ax = fig.add_axes(((left + col * (THUMB + gap)) / w, 1 - (top + THUMB) / h, THUMB / w, THUMB / h))
            ax.set_axis_off()
            with Image.open(root / record.image) as im:
                pixels = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BICUBIC))
            ax.imshow(pixels, interpolation="nearest")
    return fig


def funnel_figure(stats: dict):
    """Samples into each stage (top to bottom in order): kept, and dropped by reason."""
    from matplotlib.patches import Patch

    stages = [(name, s) for name, s in stats["stages"].items() if name != "release"]
    if not stages:
        return None
    totals: dict[str, int] = {}
    for _, s in stages:
        for reason, n in s["dropped"].items():
            totals[reason] = totals.get(reason, 0) + n
    ranked = sorted(totals, key=lambda r: (-totals[r], r))
    named = ranked[:MAX_REASONS] if len(ranked) <= MAX_REASONS else ranked[:MAX_REASONS - 1]
    colours = dict(zip(named, REASON_COLOURS))
    fig = _new_figure()
    ax = fig.add_subplot()
    y = range(len(stages))
    kept = [s["kept"] for _, s in stages]
    ax.barh(y, kept, color=KEPT, height=0.7)
    left = list(kept)
    other = [s["in"] - s["kept"] - sum(n for r, n in s["dropped"].items() if r in colours) for _, s in stages]
    for reason in named:
        values = [s["dropped"].get(reason, 0) for _, s in stages]
        ax.barh(y, values, left=left, color=colours[reason], height=0.7)
        left = [a + b for a, b in zip(left, values)]
    if any(other):
        ax.barh(y, other, left=left, color=OTHER, height=0.7)
    ticks = [_wrap(name) for name, _ in stages]
    ax.set_yticks(list(y), ticks)
    ax.invert_yaxis()
    _count_axis(ax.xaxis)
    ax.set_xlim(0, max(1, max(s["in"] for _, s in stages)) * 1.02)
    ax.set_xlabel("samples")
    ax.set_title("Samples into each stage: kept and dropped (by reason)", loc="left")
    handles = [Patch(color=KEPT)] + [Patch(color=colours[r]) for r in named]
    end = f"{stages[-1][1]['kept']:,} at the end" + ("" if totals or any(other) else "; nothing dropped")
    labels = [f"kept ({end})"] + [f"{r} ({totals[r]:,})" for r in named]
    if any(other):
        handles.append(Patch(color=OTHER))
        labels.append(f"other reasons ({sum(other):,})")
    _legend_below(fig, handles, labels, most=3)
    _fit_height(fig, ticks, 1.1)
    return fig


def classes_figure(stats: dict, names):
    """Released images per class (top to bottom in label order), stacked by split, the total at the end."""
    from matplotlib.patches import Patch

    by_split = stats["released"]["class_by_split"]
    if not stats["released"]["total"]:
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    y = range(len(names))
    left = [0] * len(names)
    handles, labels = [], []
    for i, (split, counts) in enumerate((s, c) for s, c in by_split.items() if sum(c.values())):
        colour = SPLIT_COLOURS[i % len(SPLIT_COLOURS)]
        values = [counts.get(n, 0) for n in names]
        ax.barh(y, values, left=left, color=colour, height=0.7)
        left = [a + b for a, b in zip(left, values)]
        handles.append(Patch(color=colour))
        labels.append(f"{split} ({sum(values):,})")
    for row, total in zip(y, left):
        ax.annotate(f"{total:,}", (total, row), xytext=(4, 0), textcoords="offset points", va="center", ha="left")
    ticks = [_wrap(n) for n in names]
    ax.set_yticks(list(y), ticks)
    ax.invert_yaxis()
    _count_axis(ax.xaxis)
    ax.set_xlim(0, max(left) * 1.14)  # room for the totals
    ax.set_xlabel("images")
    ax.set_title("Released images per class and split", loc="left")
    _legend_below(fig, handles, labels)
    _fit_height(fig, ticks, 1.1)
    return fig


def drift_figure(drift: dict | None):
    """Histogram of every edit's identity similarity to its source, with the drop threshold."""
    if not drift or not drift.get("measured"):
        return None
    return _similarity_figure(drift["histogram"], drift["min_similarity"], "edits",
                              "cosine similarity of the edit's face to its source's",
                              "Identity similarity of every edit to its source", f"edits ({drift['measured']:,})",
                              f"min_similarity {drift['min_similarity']:g} "
                              f"({drift['dropped'].get('identity_drift', 0):,} below: dropped)")


def leak_figure(leak: dict | None):
    """Histogram of every judged face's similarity to its nearest real reference, with the drop threshold."""
    if not leak or not leak.get("count"):
        return None
    return _similarity_figure(leak["histogram"], leak["threshold"], "faces",
                              "cosine similarity to the nearest real reference face",
                              "Nearest-reference similarity of every face", f"faces ({leak['count']:,})",
                              f"threshold {leak['threshold']:.3f} "
                              f"({leak.get('at_or_above_threshold', 0):,} at or above: dropped)")


def _similarity_figure(hist: dict, threshold: float, ylabel: str, xlabel: str, title: str, what: str, line: str):
    """A similarity histogram (fixed bins over [-1, 1]) with its drop threshold as a dashed line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    edges, counts = hist["edges"], hist["counts"]
    fig = _new_figure(_snap(3.25))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color=KEPT)
    ax.axvline(threshold, color="#e45756", linestyle="--")
    _count_axis(ax.yaxis)
    ax.set_ylim(0, max(1, max(counts)) * 1.05)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    _legend_below(fig, [Patch(color=KEPT), Line2D([], [], color="#e45756", linestyle="--")], [what, line])
    return fig
