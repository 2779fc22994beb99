"""The malformed-manifest corpus: each file says, in '# expect:' lines, what its message must contain."""
from __future__ import annotations

from pathlib import Path

import pytest

from builder.cli import main

CORPUS = sorted((Path(__file__).parent / "bad").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20
    assert all(expectations(p) for p in CORPUS), "every corpus file states its expected message"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_malformed_manifest_message(path, capsys):
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"error: {path}: "), err
    assert "\n  fix: " in err, err
    assert "Traceback" not in err
    for expected in expectations(path):
        assert expected in err, f"{expected!r} not in:\n{err}"


@pytest.mark.parametrize("name", ["01-wrong-type-steps.yaml", "15-bad-yaml-syntax.yaml"])
def test_build_command_exits_2_in_a_real_process(run_cli, name, tmp_path):
    path = Path(__file__).parent / "bad" / name
    result = run_cli(path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for expected in expectations(path):
        assert expected in result.stderr
    assert not (tmp_path / "out").exists(), "a bad manifest must not create the output folder"


def test_missing_manifest_file(run_cli, tmp_path):
    result = run_cli(tmp_path / "nope.yaml", "--dry-run")
    assert result.returncode == 2
    assert f"error: {tmp_path / 'nope.yaml'}: manifest file not found" in result.stderr
    assert "fix: check the path" in result.stderr


def test_manifest_path_is_a_folder(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a folder, not a manifest file" in capsys.readouterr().err
