"""The size rules (CONTRIBUTING: small modules, one concern each), enforced over the tree.

No source module over MAX_MODULE_LINES lines and no function or method over
MAX_FUNCTION_LINES lines, counted from its ``def`` to its last line, nested functions
included. One failure lists every offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("fedmq", "edge_agent", "aggregator", "tools", "benchmarks", "broker_config")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def offenders(root: Path = ROOT) -> list[str]:
    """``path: N lines`` and ``path:LINE name(): N lines`` for each rule broken."""
    found = []
    for top in SOURCE:
        for path in sorted((root / top).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(root).as_posix()
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES:
                found.append(f"{where}: {lines} lines (module limit {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(text, filename=where)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    span = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if span > MAX_FUNCTION_LINES:
                        found.append(
                            f"{where}:{node.lineno} {node.name}(): {span} lines "
                            f"(function limit {MAX_FUNCTION_LINES})"
                        )
    return found


def test_no_module_or_function_is_over_the_size_limits() -> None:
    found = offenders()
    assert not found, f"{len(found)} over the size rules:\n  " + "\n  ".join(found)


def test_the_rules_catch_a_long_module_and_a_long_nested_function(tmp_path: Path) -> None:
    # inner() is just at the limit; outer() is over it only with inner() counted.
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    (tmp_path / "fedmq").mkdir()
    (tmp_path / "fedmq" / "long.py").write_text(
        f"def outer():\n    def inner():\n{body}\n    return inner\n" + "\n" * MAX_MODULE_LINES
    )
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "ok.py").write_text("def short():\n    return 1\n")
    found = offenders(tmp_path)
    assert [f.split(" (")[0] for f in found] == [
        f"fedmq/long.py: {MAX_FUNCTION_LINES + 2 + MAX_MODULE_LINES} lines",
        f"fedmq/long.py:1 outer(): {MAX_FUNCTION_LINES + 2} lines",
    ]
