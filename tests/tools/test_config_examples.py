"""deploy/agent.toml and deploy/aggregator.toml: generated, complete, and valid config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aggregator.config import SCHEMA as AGGREGATOR
from edge_agent.config import SCHEMA as AGENT
from fedmq.settings import Schema
from tools import config_docs, config_examples

SCHEMAS = [AGENT, AGGREGATOR]
KEY_LINE = re.compile(r"^# ([a-z][a-z0-9_]*) = (.+)$")


def _path(schema: Schema) -> Path:
    return config_examples.DEPLOY / f"{schema.table}.toml"


def test_the_examples_are_generated_and_check_mode_sees_a_stale_one(monkeypatch, tmp_path):
    assert config_docs.main(["--check"]) == 0, f"stale: run `{config_docs.COMMAND}`"
    copy = tmp_path / "agent.toml"
    copy.write_text(_path(AGENT).read_text().replace("# label", "# lable"))
    monkeypatch.setattr(config_examples, "DEPLOY", tmp_path)
    monkeypatch.setattr(config_docs, "PATH", tmp_path / "config.md")
    assert config_docs.main(["--check"]) == 1
    assert config_docs.main([]) == 0 and config_docs.main(["--check"]) == 0
    assert (tmp_path / "aggregator.toml").read_text() == _path(AGGREGATOR).read_text()


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.table)
def test_every_key_is_listed_once_with_its_help(schema: Schema):
    text = _path(schema).read_text()
    keys = [m.group(1) for line in text.splitlines() if (m := KEY_LINE.match(line))]
    in_files = [s for s in schema.settings if "file" in s.sources]
    assert keys == [s.name for s in in_files]
    for s in in_files:
        assert s.help.split()[0] in text  # its help precedes it
    assert "password =" not in text  # a secret is never a key


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.table)
def test_loading_the_example_gives_the_defaults(schema: Schema, tmp_path: Path):
    as_is = schema.resolve(_path(schema), env={})
    assert {n: v.source for n, v in as_is.items()} == {s.name: "default" for s in schema.settings}
    # Uncommented, each key at its default still gives that default, now from the file;
    # each example value is of its setting's type.
    uncommented = re.sub(r"(?m)^# ([a-z][a-z0-9_]* = )", r"\1", _path(schema).read_text())
    path = tmp_path / "uncommented.toml"
    path.write_text(uncommented)
    resolved = schema.resolve(path, env={})
    for s in schema.settings:
        value = resolved[s.name]
        if "file" not in s.sources:
            assert value.source == "default"
        elif s.default is not None:
            assert (value.value, value.source) == (s.default, "file"), s.name
        else:
            assert value.source == "file" and value.value is not None, s.name
    resolved.require()  # every required key has its example


def test_docs_deploy_md_points_at_the_examples():
    text = (config_examples.DEPLOY.parent / "docs" / "deploy.md").read_text()
    assert "deploy/agent.toml" in text and "deploy/aggregator.toml" in text
