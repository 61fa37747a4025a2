"""Every command of the ``fedmq`` app, found by walking it, shows an example in its --help."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tools.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the app (groups included: `fedmq fleet --help` is read too)."""
    found = [path]
    if hasattr(cmd, "commands"):  # a group (typer vendors click: no click to import)
        for name, sub in sorted(cmd.commands.items()):
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))[1:]  # not the bare `fedmq`


def test_the_walk_finds_the_commands_of_every_noun() -> None:
    assert {("fleet", "ls"), ("model", "history"), ("broker", "add-device"), ("agent",)} <= set(
        COMMANDS
    )
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_help_has_an_example_line(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="fedmq", terminal_width=200)
    assert result.exit_code == 0, result.output
    examples = [line for line in result.output.splitlines() if "Example" in line]
    assert examples, f"`fedmq {' '.join(path)} --help` has no example:\n{result.output}"
    # The example runs the command it documents (a group's: one of its own).
    assert any(f"fedmq {' '.join(path)}" in line for line in examples), examples
