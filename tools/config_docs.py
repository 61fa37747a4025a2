"""Write docs/config.md and the example deploy/agent.toml and deploy/aggregator.toml from
the settings' declarations: ``python -m tools.config_docs``.

``--check`` writes nothing and exits 1 when any of them is stale (tests/fedmq/test_config.py
and tests/tools/test_config_examples.py run the same comparison).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from aggregator.config import SCHEMA as AGGREGATOR
from edge_agent.config import SCHEMA as AGENT
from fedmq.settings import SOURCES, Schema, Setting, settings_of, spellings
from tools import config_examples

COMMAND = "python -m tools.config_docs"
PATH = Path(__file__).resolve().parent.parent / "docs" / "config.md"


INTRO = f"""
# fedmq settings

<!-- Generated from the declarations by `{COMMAND}`; do not edit by hand.
     tests/fedmq/test_config.py fails when this file is stale. -->

Each setting is declared once, on its dataclass (`setting(...)` in `edge_agent/config.py`,
`aggregator/config.py`, `fedmq/config.py` and `fedmq/training.py`). From that one
declaration come its TOML key, its environment variable and its flag:

- the key `name` in the service's table of the file given with `--config FILE`;
- the environment variable `FEDMQ_NAME` (an empty variable counts as unset);
- the flag `--name` (`--name/--no-name` for a boolean).

**Precedence: flag > environment > file > default.**

The file has one flat table per service, and every key of that service goes directly in
it (strategy parameters and hyper-parameters too); one file may hold both tables:

```toml
[agent]
broker = "mqtts://mqtt.example.org:8883"
ca = "ca.crt"
device = "pi-001"
data = "local.csv"
password_file = "/etc/fedmq/pi-001.pw"

[aggregator]
broker = "mqtts://mqtt.example.org:8883"
ca = "ca.crt"
username = "aggregator"
password_file = "/etc/fedmq/aggregator.pw"
model = "mlp:64,32,10"
strategy = "fedbuff"
k = 10
lr = 0.05
```

A key or table fedmq does not know (`[agnet]`, `[aggregator.strategy]`, `kk = 1`), a value
of the wrong type in the file, or a bad environment value or flag (`FEDMQ_K=abc`) is one
error line and exit status 2. A strategy parameter set for a strategy it does not apply
to (`--k 5` with `--strategy fedasync`) is an error too.

`fedmq agent --print-config` and `fedmq aggregator --print-config` print the effective
settings as JSON, `{{"KEY": {{"value": ..., "source": "flag|env|file|default"}}}}`, with
secrets masked, and exit 0.

**Passwords** come only from `password_file` (`--password-file PATH`, a file whose first
line is the password) or `$FEDMQ_PASSWORD`: there is no `--password` flag (argv shows in
`ps`) and no `password` key (config files get copied around). A password in the broker
URL is refused. Over plain `mqtt://` a password is sent only to a loopback host, unless
`insecure` (`--insecure`) is on. Secrets never appear in `--print-config`, `repr` or logs.
(`fedmq broker add-device --password-file` is a different file: Mosquitto's hashes.)
"""


def render() -> str:
    return markdown({"fedmq agent": AGENT, "fedmq aggregator": AGGREGATOR}, INTRO)


def markdown(schemas: Mapping[str, Schema], intro: str) -> str:
    """A page listing every setting of every schema, from the declarations."""
    lines = [intro.strip(), ""]
    for title, schema in schemas.items():
        lines += [f"## `{title}`: the `[{schema.table}]` table", ""]
        for cls in schema.sections:
            lines += [f"### {_title(cls)}", ""]
            lines += ["| key | type | default | environment | flag | meaning |"]
            lines += ["|---|---|---|---|---|---|"]
            lines += [_row(s) for s in settings_of(cls)]
            lines.append("")
    return "\n".join(lines)


def _title(cls: type) -> str:
    doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return doc.rstrip(".").replace("``", "`")


def _row(s: Setting) -> str:
    default = "(none)" if s.default is None else f"`{s.default}`"
    if s.required:
        default = "(required)"
    if isinstance(s.default, bool):
        default = f"`{str(s.default).lower()}`"
    env = f"`{s.env}`" if "env" in s.sources else "—"
    flag = f"`{s.flag}`" if "flag" in s.sources else "—"
    if s.type is bool and "flag" in s.sources:
        flag = f"`{s.flag}`, `--no-{s.flag[2:]}`"
    notes = [s.help]
    if s.choices:
        notes.append(f"One of {', '.join(f'`{c}`' for c in s.choices)}.")
    if s.applies:
        notes.append(f"Applies to {', '.join(f'`{a}`' for a in s.applies)}.")
    if s.requires:
        notes.append(f"Needs `{s.requires}`.")
    if tuple(s.sources) != SOURCES:
        notes.append(f"Only as {' or '.join(f'`{x}`' for x in spellings(s))}.")
    if s.secret:
        notes.append("Secret: masked in `--print-config`, never logged.")
    meaning = " ".join(notes).replace("|", "\\|")  # a bare | would end the table cell
    return f"| `{s.name}` | {s.type_name} | {default} | {env} | {flag} | {meaning} |"


def outputs() -> dict[Path, str]:
    """Every file this generator writes, and its text."""
    return {PATH: render(), **config_examples.files([AGENT, AGGREGATOR], COMMAND)}


def main(argv: list[str] | None = None) -> int:
    wanted = outputs()
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        stale = [p for p, text in wanted.items() if not p.exists() or p.read_text("utf-8") != text]
        for path in stale:
            print(f"{path} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
