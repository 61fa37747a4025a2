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


def test_fedmq_agent_under_the_full_install_skips_typer_and_the_cli():
    # typer, rich and the CLI's command modules cost ~14 MB of RSS (benchmarks/RESULTS.md,
    # "Agent footprint"); `fedmq agent` must not load them even where they are installed.
    code = (
        "import sys\n"
        "sys.argv = ['fedmq', 'agent', '--help']\n"
        "from tools.entry import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})),"
        " any(m.startswith('tools.cli') for m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: fedmq agent" in out.stdout
    assert out.stderr.strip() == "[] False"
