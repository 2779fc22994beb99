"""Every ``fail(...)`` in the tree formats: its message and fix are ``str.format`` templates, so a literal brace
must be doubled, or the user gets a KeyError traceback instead of the validation message (found twice)."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PACKAGES = ("builder", "curation", "cards", "evaluation")


def fail_calls():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "fail":
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node


CALLS = list(fail_calls())


def test_there_are_fail_calls_to_check():
    assert len(CALLS) >= 40


@pytest.mark.parametrize("where, node", CALLS, ids=[w for w, _ in CALLS])
def test_message_and_fix_format_with_the_given_values(where, node):
    values = {kw.arg: 1.5 for kw in node.keywords if kw.arg not in (None, "at")}
    for arg in node.args[1:3]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            arg.value.format(**values)  # KeyError / ValueError / IndexError = a broken template
