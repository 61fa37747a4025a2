"""deploy/agent.toml and deploy/aggregator.toml, written from the settings' declarations.

Every key a file may hold is listed once, with its help, and commented out: a key at
its default reads ``# key = DEFAULT``, so uncommenting it changes nothing; a key without
a default shows an example value to replace. ``python -m tools.config_docs`` writes
these files with docs/config.md, and its ``--check`` compares all three.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from fedmq.settings import Schema, Setting, settings_of

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

# Example values of the settings that have no default (by table, then for both).
EXAMPLES: dict[str, dict[str, Any]] = {
    "agent": {"username": "pi-001", "password_file": "/etc/fedmq/agent.password"},
    "aggregator": {"username": "aggregator", "password_file": "/etc/fedmq/aggregator.password"},
    "": {
        "broker": "mqtts://mqtt.example.org:8883",
        "ca": "/etc/fedmq/ca.crt",
        "cert": "/etc/fedmq/client.crt",
        "key": "/etc/fedmq/client.key",
        "device": "pi-001",
        "data": "/var/lib/fedmq-data/local.csv",
        "seed": 1,
        "model": "mlp:64,32,10",
        "eval": "/etc/fedmq/holdout.npz",
        "client_id": "fedmq-aggregator-farm",
        "metrics_port": 9108,
    },
}
_PLACEHOLDER = {str: "...", Path: "/path/to/file", int: 0, float: 0.0, bool: False}

# What the units in deploy/ set on the command line (a flag wins over this file).
UNIT_NOTES = {
    "password_file": "The systemd unit passes its credential as --password-file.",
    "state_dir": "The systemd unit sets --state-dir to its StateDirectory.",
    "out_dir": "The systemd unit sets --out-dir to its StateDirectory.",
}


def header(table: str, command: str) -> str:
    return f"""\
# /etc/fedmq/{table}.toml: every key of `fedmq {table}`, each commented out.
# Generated from the settings' declarations by `{command}`;
# docs/config.md lists the same keys. A key at its default reads `# key = DEFAULT`
# (uncommenting it changes nothing); the others show an example to replace.
# $FEDMQ_KEY and --key win over a key set here. The broker password is never a key:
# use password_file or $FEDMQ_PASSWORD.
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def example_of(table: str, s: Setting) -> Any:
    if s.default is not None:
        return s.default
    for where in (table, ""):
        if s.name in EXAMPLES[where]:
            return EXAMPLES[where][s.name]
    return _PLACEHOLDER[s.type]


def _entry(table: str, s: Setting) -> list[str]:
    notes = [s.help]
    if s.choices:
        notes.append(f"One of: {', '.join(map(str, s.choices))}.")
    if s.applies:
        notes.append(f"Applies to {' and '.join(s.applies)}.")
    if s.requires:
        notes.append(f"Only with {s.requires} on.")
    if s.required:
        notes.append("Required.")
    elif s.default is None:
        notes.append("Default: none.")
    if s.name in UNIT_NOTES:
        notes.append(UNIT_NOTES[s.name])
    text = textwrap.wrap(" ".join(notes), 86)
    return [*(f"# {line}" for line in text), f"# {s.name} = {toml_value(example_of(table, s))}"]


def render(schema: Schema, command: str) -> str:
    lines = [header(schema.table, command).rstrip(), "", f"[{schema.table}]"]
    for cls in schema.sections:
        entries = [s for s in settings_of(cls) if "file" in s.sources]
        if not entries:
            continue
        title = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
        lines += ["", f"## {title.replace('``', '`')}"]
        for s in entries:
            lines += ["", *_entry(schema.table, s)]
    return "\n".join(lines) + "\n"


def files(schemas: list[Schema], command: str) -> dict[Path, str]:
    """Each example file's path and its text."""
    return {DEPLOY / f"{s.table}.toml": render(s, command) for s in schemas}
