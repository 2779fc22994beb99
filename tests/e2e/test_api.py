"""The Python API (``builder.api``) and the command line over it: documented, typed, the README's example
calls what exists, a build and a release through the API, ``--help`` lists every command, and the logging
switches do what they say."""
from __future__ import annotations

import ast
import inspect
import re

import pytest

from builder import api
from builder.cli import SUBCOMMANDS, main
from builder.core.errors import UserError
from tests.conftest import DEMO, ROOT


def test_every_api_function_is_documented_and_typed():
    for name in api.__all__:
        obj = getattr(api, name)
        assert inspect.getdoc(obj), f"api.{name} has no docstring"
        if inspect.isfunction(obj):
            signature = inspect.signature(obj)
            assert signature.return_annotation is not inspect.Signature.empty, name
            untyped = [p for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty
                       and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            assert not untyped, (name, untyped)


def test_the_readme_example_calls_what_the_api_has():
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from builder import api" in b)
    calls = [node for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", None) == "api"]
    assert {c.func.attr for c in calls} >= {"load", "build", "release", "evaluate", "push"}
    for call in calls:
        target = getattr(api, call.func.attr)
        parameters = inspect.signature(target).parameters
        accepts_more = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        for keyword in call.keywords:
            assert keyword.arg in parameters or accepts_more, f"api.{call.func.attr} has no {keyword.arg}"


def test_build_and_release_through_the_api(tmp_path):
    messages = []
    manifest = api.load(DEMO)
    result = api.build(manifest, tmp_path / "out", progress=False, log=messages.append)
    assert result.released and result.stats["released"]["total"] == 28
    again = api.build(DEMO, tmp_path / "out", progress=False, log=messages.append)
    assert not again.released and "build is complete, nothing to do" in messages[-1]
    stats = api.release(tmp_path / "out", no_review=True, log=messages.append)
    assert stats["released"] == result.stats["released"]
    with pytest.raises(UserError, match="give one of"):
        api.release(tmp_path / "out", decisions="d.json", no_review=True)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert f"  {command} " in out, command
    assert {"validate", "schema", "models", "release", "review", "push", "evaluate", "train-au-adapter",
            "train-feranno", "index-reference"} <= set(SUBCOMMANDS)
    assert main(["release", "--help"]) == 0 and "--decisions" in capsys.readouterr().out


def test_quiet_verbose_and_log_file(tmp_path, capsys):
    out, log = tmp_path / "out", tmp_path / "run.log"
    assert main([str(DEMO), "--out", str(out), "--no-progress", "--verbose", "--log-file", str(log)]) == 0
    err = capsys.readouterr().err
    assert "setting up stage 'generate' (loading its models)" in err and "stage 'generate' ready in" in err
    text = log.read_text()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO 4 of 4 shards to process", text)
    assert "DEBUG stage 'generate' ready in" in text and "INFO done: 28 images" in text
    assert main(["--quiet", str(DEMO), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err == "", "only warnings and errors with --quiet"
    assert main([str(DEMO), "--out", str(out)]) == 0
    assert "build is complete, nothing to do" in capsys.readouterr().err
