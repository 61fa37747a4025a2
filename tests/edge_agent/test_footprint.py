"""A Pi installs fedmq[agent]: the agent must not import what that install lacks."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("onnx", "onnxruntime", "sklearn", "typer", "rich", "cryptography", "scipy")


def test_the_agent_imports_nothing_heavy():
    code = (
        "import sys, edge_agent.agent, edge_agent.main\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
