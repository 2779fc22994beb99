"""--dry-run prints the plan without loading a model or importing torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from builder.cli import main
from tests.conftest import DEMO, ROOT

PROBE = """
import sys
from builder.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "datasets") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


def test_dry_run_of_100k_samples_imports_no_torch(write_manifest):
    manifest = write_manifest({"labels": {"counts": {"happy": 20000, "sad": 20000, "anger": 20000, "fear": 20000,
                                                      "surprise": 20000}},
                               "output": {"shard_size": 512}})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", PROBE, str(manifest), "--dry-run", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr
    plan = json.loads(result.stdout)
    assert plan["total"] == 100_000 and sum(plan["classes"].values()) == 100_000
    assert plan["classes"]["happy"] == 20000 and plan["classes"]["neutral"] == 0
    assert plan["shards"]["count"] == 196
    assert sum(plan["cells"]["counts"].values()) == 100_000
    for axis, counts in plan["axes"].items():
        assert sum(counts.values()) == 100_000, axis
    assert plan["work"]["unet_forwards"] == 100_000 * 4 * 2
    print(f"dry-run of 100,000 samples: {seconds:.1f} s")


def test_dry_run_text_plan(capsys, tmp_path):
    assert main([str(DEMO), "--dry-run", "--out", str(tmp_path / "nothing")]) == 0
    out = capsys.readouterr().out
    assert "28 samples, label map affectnet7" in out
    assert re.search(r"^  happy +4$", out, re.M)
    assert "shards: 4 of up to 8 samples; stages per shard: generate, integrity, then dedupe, release" in out
    assert "224 UNet forwards" in out
    assert not (tmp_path / "nothing").exists(), "a dry run writes nothing"
