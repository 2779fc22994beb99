"""Bad evaluation inputs: a test set that holds the build's own training images."""
from __future__ import annotations

import json
import shutil

from tests.e2e.bad_inputs import Case, case


@case("eval-test-set-overlaps-training")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    rows = [json.loads(line) for line in (out / "records" / "train.jsonl").read_text().splitlines() if line.strip()]
    test = tmp / "test-set"
    for k, row in enumerate(rows[:3]):  # three released training images, copied into a labelled test folder
        folder = test / row["label_name"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / row["image"], folder / f"copy-{k}.png")

    def nothing_written():
        assert not (out / "eval").exists(), "a refused evaluation wrote OUT/eval"

    return Case(["evaluate", out, "--test", test, "--no-align"], test,
                ["overlaps the training data", "3 exact and 0 near duplicate(s)", f"'{rows[0]['sample_id']}'",
                 "--allow-overlap"], [out, test], nothing_written)
