"""``build-dataset status OUT`` and the resume line every failure prints: where the partial results are, how
far the build got, the last error, and whether the release is current."""
from __future__ import annotations

import json
import shutil

from builder.cli import main
from tests.conftest import DEMO


def test_status_of_a_finished_build_and_after_a_review(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(DEMO), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shards: 4 of 4 done" in text and "  integrity: 4 shards, 28 in, 28 kept; none dropped" in text
    assert "release: 28 images, current" in text
    assert main(["status", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["release"] == {"exists": True, "current": True, "released": 28}
    assert list(summary["stages"]) == ["generate", "integrity"] and summary["last_error"] is None
    (out / "review.json").write_text(json.dumps({"decisions": {}}))  # decisions written after the release
    assert main(["status", str(out)]) == 0
    assert "out of date" in capsys.readouterr().out


def test_a_failure_says_where_the_partial_results_are_and_status_keeps_it(tmp_path, tiny_model, write_manifest,
                                                                          capsys):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    manifest = write_manifest({"generator": {"model": str(model)}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    for stage in ("generate", "integrity"):
        shutil.rmtree(out / "shards" / stage / "00003")
    (out / ".release.json").unlink()
    (model / "model_index.json").unlink()  # the model breaks between two runs
    capsys.readouterr()
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"partial results are kept in {out} (3 of 4 shards done)" in err and "build-dataset status" in err
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shards: 3 of 4 done" in text and "release: none yet" in text
    assert "last error (" in text and "model_index.json" in text
    (model / "model_index.json").write_text((tiny_model / "model_index.json").read_text())
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_error"] is None, "a successful run clears it"


def test_bad_input_before_anything_is_written_says_so(tmp_path, capsys):
    assert main([str(DEMO), "--out", str(tmp_path / "out"), "--threads", "0"]) == 2
    assert "nothing was written" in capsys.readouterr().err
