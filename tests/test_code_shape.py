"""The code's shape: no module over 400 lines, no function over 60 lines, unless EXCEPTIONS names it
with a one-line reason (the README repeats the reasons)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List

PKG = Path(__file__).resolve().parents[1] / "napari_medkd"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# "path/relative/to/napari_medkd.py" or "path.py::qualified.function" -> why it may stay long
EXCEPTIONS: Dict[str, str] = {}


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, name + ".")


def violations(pkg: Path = PKG) -> List[str]:
    out = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{rel} ({n} lines)")
        for name, node in _functions(ast.parse(text)):
            length = node.end_lineno - node.lineno + 1  # decorators not counted, the docstring is
            if length > MAX_FUNCTION_LINES:
                out.append(f"{rel}::{name} ({length} lines)")
    return out


def test_no_long_modules_or_functions():
    found = violations()
    keys = [v.rsplit(" (", 1)[0] for v in found]
    bad = [v for v, k in zip(found, keys) if k not in EXCEPTIONS]
    assert not bad, "over the limits (split them or add to EXCEPTIONS with a reason):\n" + "\n".join(bad)
    stale = sorted(set(EXCEPTIONS) - set(keys))
    assert not stale, f"EXCEPTIONS entries that are no longer long (remove them): {stale}"
    assert all(reason.strip() for reason in EXCEPTIONS.values())


def test_the_check_catches_a_long_function_and_module(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n\n\nclass C:\n    def ok(self):\n        return 1\n",
                                      encoding="utf-8")
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1), encoding="utf-8")
    assert violations(tmp_path) == [f"big.py ({MAX_MODULE_LINES + 1} lines)",
                                    f"long.py::f ({MAX_FUNCTION_LINES + 1} lines)"]
