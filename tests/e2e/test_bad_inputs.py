"""Every case of the bad-input corpus (``tests/bad_inputs``) answers with exit 2, the file, the fix, no
traceback, and changes nothing; together with the manifest corpus it holds at least 80 cases."""
from __future__ import annotations

import pytest

from builder.cli import main
from tests.e2e.bad_inputs import CASES, snapshot
from tests.e2e.bad_inputs.env import Env
from tests.manifest.test_bad_manifests import CORPUS


@pytest.fixture(scope="session")
def bad_env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("bad-inputs"))


def test_corpus_has_80_cases():
    assert len(CORPUS) + len(CASES) >= 80, f"{len(CORPUS)} manifests + {len(CASES)} other cases"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, bad_env, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = CASES[name](tmp_path, bad_env)
    before = snapshot(bad.unchanged)
    capsys.readouterr()
    rc = main([str(a) for a in bad.argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("error: ") == 1 and err.startswith("error: ") or "\nerror: " in err, err  # after progress lines
    message = err[err.index("error: "):]
    assert str(bad.file) in message.splitlines()[0], err
    assert "\n  fix: " in message, err
    assert "Traceback" not in err
    for expected in bad.expect:
        assert expected in message, f"{expected!r} not in:\n{err}"
    assert snapshot(bad.unchanged) == before, "a refused input changed files"
    if bad.check is not None:
        bad.check()
