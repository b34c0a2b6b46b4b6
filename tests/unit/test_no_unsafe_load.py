"""Nothing in the project unpickles: every Python source is parsed and its calls checked.

Refused: `torch.load(...)` without `weights_only=True`; `pickle.load`/`loads`/`Unpickler` (and the same from
`cPickle`, `dill`, `joblib`, `pandas.read_pickle`); `np.load(..., allow_pickle=<anything but False>)`;
`from pickle import load` style imports that would hide such a call from the check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP_DIRS = {".venv", ".git", "runs", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"}
PICKLE_CALLS = {"load", "loads", "Unpickler"}


def sources() -> list[Path]:
    out = []
    for path in REPO.rglob("*.py"):
        if not SKIP_DIRS.intersection(path.relative_to(REPO).parts):
            out.append(path)
    return sorted(out)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(code: str, filename: str = "<string>") -> list[str]:
    """'file:line: problem' for every unsafe load in `code`."""
    problems = []
    tree = ast.parse(code, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            hidden = [a.name for a in node.names if a.name in PICKLE_CALLS]
            if hidden:
                problems.append(f"{where}: from {node.module} import {', '.join(hidden)}")
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            problems.append(f"{where}: from torch import load (use torch.load(..., weights_only=True))")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, attr = name.rpartition(".")
        if name == "torch.load" and not _is_constant(_keyword(node, "weights_only"), True):
            problems.append(f"{where}: torch.load without weights_only=True")
        elif head.split(".")[-1] in PICKLE_MODULES and attr in PICKLE_CALLS:
            problems.append(f"{where}: {name} unpickles")
        elif name in ("pd.read_pickle", "pandas.read_pickle"):
            problems.append(f"{where}: {name} unpickles")
        elif name in ("np.load", "numpy.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_constant(allow, False):
                problems.append(f"{where}: np.load with allow_pickle={ast.unparse(allow)}")
    return problems


def test_the_check_finds_each_unsafe_form():
    bad = """
import pickle, torch, numpy as np, joblib
torch.load(p)
torch.load(p, weights_only=False)
torch.load(p, map_location="cpu", weights_only=flag)
pickle.load(f)
pickle.loads(b)
np.load(p, allow_pickle=True)
joblib.load(p)
from pickle import loads
"""
    assert len(unsafe_calls(bad)) == 8, unsafe_calls(bad)
    good = """
import torch, numpy as np
torch.load(p, weights_only=True)
np.load(p)
np.load(p, allow_pickle=False)
"""
    assert unsafe_calls(good) == []


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_unsafe_load(path):
    assert unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO))) == []
