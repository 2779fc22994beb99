"""What an evaluation leaves in ``OUT/eval/``: per result ``<name>``, ``<name>.json`` (every number, the
configuration, seeds, backbone provenance, label alignment and class coverage, the guard's record; written
last), ``<name>-predictions.jsonl`` (one line per test sample: its class, the model class it counts as, the
prediction and the probabilities, so the metrics can be recomputed with ``evaluation.metrics.from_predictions``)
and ``<name>-confusion.png``. The card's fragment and section are the card's (``cards.evaluation_section``).
This module imports neither torch nor numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

from builder.core.shards import write_durably

KIND = "fer-synth-evaluation"
META = {"Software": None}  # no matplotlib version stamp in the PNG


def write_predictions(path: Path, rows: list[dict]) -> None:
    write_durably(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def confusion_figure(metrics: dict, path: Path, title: str, unpredictable: dict | None = None) -> None:
    """Rows: the evaluated test classes, then (marked) the test classes the model cannot predict
    (``unpredictable``: class -> model class -> count); columns: every model class; cells: counts, shaded by
    row share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = metrics["confusion"]
    rows, cols, matrix = list(conf["rows"]), conf["columns"], [list(r) for r in conf["matrix"]]
    for name, predicted in (unpredictable or {}).items():
        rows.append(f"{name} (not a model class)")
        matrix.append([predicted.get(c, 0) for c in cols])
    shares = [[v / max(1, sum(r)) for v in r] for r in matrix]
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(cols), 1.4 + 0.6 * max(1, len(rows))))
    ax.imshow(shares or [[0.0] * len(cols)], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if shares[i][j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if unpredictable:
        ax.axhline(len(conf["rows"]) - 0.5, color="black", linewidth=1)
    ax.set_xlabel("predicted (model class)", fontsize=8)
    ax.set_ylabel("test class", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=META)
    plt.close(fig)
