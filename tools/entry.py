"""The ``fedmq`` console script: the full CLI, or just the agent on a minimal install.

``fedmq agent`` goes straight to ``edge_agent.main`` (argparse, flags from the same
declarations as the full CLI's) without importing typer or rich: on a device they
would cost ~14 MB of resident memory and a third of the start-up for nothing.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        from edge_agent.main import main as agent_main

        agent_main(sys.argv[2:])
        return
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError:
        # fedmq[agent] on a Pi: no typer, but the agent must still start.
        sys.exit("fedmq: this install has only the agent; run `fedmq agent` or install fedmq[cli]")
    from tools.cli import main as cli_main

    cli_main()
