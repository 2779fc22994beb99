"""The card's figures: made, 750 px wide (the Hub's card width), byte-identical when drawn twice, count axes with
whole-number ticks, legends outside the plot, and class names that never collide, for a tiny and a large release."""
from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from PIL import Image

from builder.core.records import Record
from cards import figures

SMALL_NAMES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
LARGE_NAMES = ["neutral", "happy", "sad", "happily surprised with open mouth", "fear", "disgust", "anger",
               "contempt_or_smugness_unlabelled"]
EDGES = [round(-1 + 0.05 * i, 4) for i in range(41)]


def small_stats() -> dict:
    """The demo's shape: 28 images, counts of 1 to 4 (where matplotlib would tick 0.5), nothing dropped."""
    return {
        "stages": {stage: {"in": 28, "kept": 28, "dropped": {}} for stage in ("generate", "integrity", "dedupe")},
        "released": {"total": 28, "class_by_split": {
            "train": {n: 3 for n in SMALL_NAMES} | {"anger": 4},
            "validation": {"neutral": 1, "sad": 1, "fear": 1}, "test": {"happy": 1, "surprise": 1, "disgust": 1}}},
        "identity_leak": {"threshold": 0.3, "count": 4, "at_or_above_threshold": 3,
                          "histogram": {"edges": EDGES, "counts": [0] * 24 + [1, 0, 2, 1] + [0] * 12}},
    }


def large_stats() -> dict:
    """8 classes (two long names), 5 splits, six-figure counts, 20 drop reasons over 10 stages."""
    rng = random.Random(0)
    splits = ["train", "validation", "test", "holdout_synthetic", "calibration"]
    by_split = {s: {n: rng.randint(200, 40_000) // (1 if s == "train" else 6) for n in LARGE_NAMES} for s in splits}
    total = sum(sum(c.values()) for c in by_split.values())
    reasons = {"generate": {"nonfinite_output": 312, "error": 4},
               "integrity": {"corrupt_image": 88, "blurry": 2310, "too_dark": 1402, "too_bright": 955},
               "faces": {"no_face": 12_011, "face_too_small": 5120, "multiple_faces": 3311, "low_sharpness": 1700},
               "identity_leak": {"identity_leak": 733},
               "label": {"low_confidence": 20_411, "disagreement": 7211, "label_mismatch": 4001},
               "select": {"below_top_k": 1300},
               "dedupe": {"exact_duplicate": 120, "near_duplicate": 3302, "reference_embedding_duplicate": 51},
               "identities": {"identity_cap": 2900}, "balance": {"over_target": 15_000},
               "review": {"reviewer_reject": 17}}
    stages, n = {}, total + sum(sum(d.values()) for d in reasons.values())
    for name, dropped in reasons.items():
        stages[name] = {"in": n, "kept": n - sum(dropped.values()), "dropped": dropped}
        n = stages[name]["kept"]
    counts = [0] * 40
    for _ in range(5000):
        counts[min(39, max(0, int((rng.gauss(0.25, 0.12) + 1) / 0.05)))] += 1
    return {"stages": stages, "released": {"total": total, "class_by_split": by_split},
            "identity_leak": {"threshold": 0.5123, "count": 5000, "at_or_above_threshold": sum(counts[30:]),
                              "histogram": {"edges": EDGES, "counts": counts}}}


CASES = {"small": (small_stats, SMALL_NAMES), "large": (large_stats, LARGE_NAMES)}


@pytest.fixture
def images(tmp_path):
    """Three 64 px images per class of the large case, as records of one split."""
    (tmp_path / "images").mkdir()
    records = []
    for index, (label, k) in enumerate(itertools.product(range(len(LARGE_NAMES)), range(3))):
        path = f"images/{index:04d}.png"
        Image.new("RGB", (64, 64), (30 * label % 256, 80 + 40 * k, 120)).save(tmp_path / path)
        records.append(Record(sample_id=f"s-{index}", index=index, label=label, label_name=LARGE_NAMES[label],
                              au=[], attributes={}, prompt="", negative_prompt="", seed=index, image=path))
    return tmp_path, {"train": records[::2], "test": records[1::2]}


def drawn(fig):
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def inside(box, fig) -> bool:
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_render_writes_every_figure_750_px_wide_and_the_same_bytes_twice(tmp_path, images):
    root, splits = images
    stats = large_stats()
    paths = figures.render_figures(stats, splits, LARGE_NAMES, root, tmp_path / "a" / "figures")
    assert paths == {name: f"figures/{name}.png" for name in ("samples", "funnel", "classes", "leak_similarity")}
    sizes = {}
    for name, path in paths.items():
        with Image.open(tmp_path / "a" / path) as im:
            sizes[name] = im.size
            assert im.format == "PNG" and "Software" not in im.info
        assert b"matplotlib" not in (tmp_path / "a" / path).read_bytes()  # no version stamp
    assert {w for w, _ in sizes.values()} == {750}
    assert all(h % 25 == 0 and 200 <= h <= 1200 for _, h in sizes.values())  # whole quarter inches, exact pixels
    with figures._style():
        for name, fig in (("samples", figures.samples_figure(splits, LARGE_NAMES, root)),
                          ("funnel", figures.funnel_figure(stats)),
                          ("classes", figures.classes_figure(stats, LARGE_NAMES)),
                          ("leak_similarity", figures.leak_figure(stats["identity_leak"]))):
            assert tuple(round(v * figures.DPI) for v in fig.get_size_inches()) == sizes[name]

    again = figures.render_figures(stats, splits, LARGE_NAMES, root, tmp_path / "b" / "figures")
    assert again == paths
    for path in paths.values():
        assert (hashlib.sha256((tmp_path / "a" / path).read_bytes()).hexdigest()
                == hashlib.sha256((tmp_path / "b" / path).read_bytes()).hexdigest())


def test_nothing_to_draw_writes_no_file(tmp_path):
    stats = small_stats() | {"identity_leak": None}
    stats["released"] = {"total": 0, "class_by_split": {"train": {}}}
    assert figures.render_figures(stats, {"train": []}, SMALL_NAMES, tmp_path, tmp_path / "figures") == {
        "funnel": "figures/funnel.png"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["funnel.png"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["funnel", "classes", "leak_similarity"])
def test_count_axes_tick_whole_numbers_and_legends_stay_off_the_plot(case, which):
    make, names = CASES[case]
    stats = make()
    with figures._style():
        fig = {"funnel": lambda: figures.funnel_figure(stats), "classes": lambda: figures.classes_figure(stats, names),
               "leak_similarity": lambda: figures.leak_figure(stats["identity_leak"])}[which]()
        renderer = drawn(fig)
    (ax,) = fig.axes
    counts = ax.yaxis if which == "leak_similarity" else ax.xaxis
    lo, hi = sorted(counts.get_view_interval())
    ticks = [t for t in counts.get_majorticklocs() if lo <= t <= hi]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    labels = [t.get_text() for loc, t in zip(counts.get_majorticklocs(), counts.get_ticklabels()) if lo <= loc <= hi]
    assert labels and all(label.replace(",", "").isdigit() for label in labels)

    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert inside(box, fig)
    assert not overlap(box, ax.get_tightbbox(renderer))  # below the plot, its ticks and axis label: never on data
    assert box.y1 <= ax.get_window_extent(renderer).y0
    assert not ax.get_legend()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["funnel", "classes"])
def test_class_and_stage_names_do_not_collide(case, which):
    make, names = CASES[case]
    stats = make()
    with figures._style():
        fig = figures.funnel_figure(stats) if which == "funnel" else figures.classes_figure(stats, names)
        renderer = drawn(fig)
    (ax,) = fig.axes
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        boxes = [t.get_window_extent(renderer) for loc, t in zip(axis.get_majorticklocs(), axis.get_ticklabels())
                 if lo <= loc <= hi and t.get_text()]  # the labels drawn
        assert all(inside(b, fig) for b in boxes)
        assert not any(overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    assert inside(ax.title.get_window_extent(renderer), fig)
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())
    if which == "classes":
        assert len(ax.get_yticklabels()) == len(names)
        assert all(len(line) <= figures.WRAP for t in ax.get_yticklabels() for line in t.get_text().splitlines())


def test_sample_rows_keep_names_beside_the_thumbnails(images):
    root, splits = images
    with figures._style():
        fig = figures.samples_figure(splits, LARGE_NAMES, root)
        renderer = drawn(fig)
    assert len(fig.axes) == 3 * len(LARGE_NAMES)
    thumbs = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert {round(b.width) for b in thumbs} == {round(b.height) for b in thumbs} == {figures.THUMB}  # pixel for pixel
    assert all(inside(b, fig) for b in thumbs)
    texts = [t.get_window_extent(renderer) for t in fig.texts]
    assert len(texts) == len(LARGE_NAMES)
    assert all(inside(b, fig) for b in texts)
    assert not any(overlap(a, b) for a, b in itertools.combinations(texts + thumbs, 2))


def test_wrap_breaks_long_names_at_word_and_underscore_boundaries():
    assert figures._wrap("contempt") == "contempt"
    assert figures._wrap("happily surprised with open mouth") == "happily\nsurprised with\nopen mouth"
    assert figures._wrap("contempt_or_smugness_unlabelled") == "contempt_or_\nsmugness_\nunlabelled"
    long = figures._wrap("x" * 100)
    assert len(long.splitlines()) == figures.MAX_LINES and long.endswith("…")
