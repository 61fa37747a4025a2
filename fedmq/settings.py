"""Settings declared once, on dataclasses; TOML keys, ``FEDMQ_*`` variables and flags derived.

A field declared with ``setting(default, help=...)`` is a setting named after the field:
the key ``name`` in the service's TOML table, ``$FEDMQ_NAME`` and ``--name``. A later
source wins: flag > environment > file > default. A service's ``Schema`` lists its
sections (dataclasses); all their settings share the service's one flat table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedmq.errors import ConfigError

ENV_PREFIX = "FEDMQ_"
SOURCES = ("flag", "env", "file")
TABLES = ("agent", "aggregator")  # the top-level tables a config file may hold
TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
TYPES[Path] = "path"
MASK = "***"
_META = "fedmq"
T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """One declared setting: what ``setting()`` recorded plus the field's name and type."""

    name: str
    type: type
    default: Any
    help: str
    section: str
    secret: bool = False
    sources: tuple[str, ...] = SOURCES
    choices: tuple[Any, ...] = ()
    required: bool = False
    applies: tuple[str, ...] = ()  # strategies this one applies to (empty: all)
    requires: str | None = None  # a boolean setting that must be on for this one to matter
    check: Callable[[Any, str], object] | None = None  # refuses a bad value with ConfigError

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        return TYPES[self.type]

    def parse(self, raw: str, where: str) -> Any:
        """A string (an environment value or a flag) as this setting's type."""
        value: Any = raw
        try:
            if self.type is bool:
                if raw.lower() not in _BOOLS:
                    raise ValueError(raw)
                value = _BOOLS[raw.lower()]
            elif self.type in (int, float, Path):
                value = self.type(raw)
        except ValueError:
            raise self._bad(where, raw) from None
        return self._check_choice(value, where)

    def from_flag(self, value: Any) -> Any:
        """A flag's value: a string from a command line, or a typed value from code."""
        if isinstance(value, str):
            return self.parse(value, self.flag)
        return self.coerce(value, self.flag)

    def coerce(self, value: Any, where: str) -> Any:
        """A TOML (or programmatic) value as this setting's type, without lossy conversion."""
        if isinstance(value, str) and self.type is not str:
            if self.type is Path:
                return self._check_choice(Path(value), where)
            raise self._bad(where, value)
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
            Path: isinstance(value, Path),
        }[self.type]
        if not ok:
            raise self._bad(where, value)
        return self._check_choice(float(value) if self.type is float else value, where)

    def _check_choice(self, value: Any, where: str) -> Any:
        if self.choices and value not in self.choices:
            raise ConfigError(
                "bad_setting",
                f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}",
            )
        if self.check is not None and value is not None:
            self.check(value, where)
        return value

    def _bad(self, where: str, value: Any) -> ConfigError:
        shown = MASK if self.secret else repr(value)
        article = "an" if self.type_name[0] in "aeiou" else "a"
        return ConfigError(
            "bad_setting", f"{where} must be {article} {self.type_name}, got {shown}"
        )


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    secret: bool = False,
    sources: tuple[str, ...] = SOURCES,
    choices: tuple[Any, ...] = (),
    applies: tuple[str, ...] = (),
    requires: str | None = None,
    required: bool = False,
    check: Callable[[Any, str], object] | None = None,
) -> Any:
    """Declare a dataclass field as a setting; without a ``default`` it is ``required``.

    ``required`` with a default (``None``) lets code build the dataclass without the
    setting while a user running the service must still give it. ``check(value, where)``
    refuses a value that ``choices`` cannot list (``topk:F``) with one ConfigError line.
    """
    meta = {
        "required": required or default is dataclasses.MISSING,
        "help": help,
        "secret": secret,
        "sources": sources,
        "choices": choices,
        "applies": applies,
        "requires": requires,
        "check": check,
    }
    return dataclasses.field(default=default, repr=not secret, metadata={_META: meta})


def refuse_password_flag(value: str | None) -> None:
    """``--password`` is gone: a password in argv shows in ``ps`` to every local user."""
    if value is not None:
        raise ConfigError(
            "password_flag",
            "--password is not accepted (it shows in `ps`): "
            "use --password-file PATH or $FEDMQ_PASSWORD",
        )


def given_flags(sections: tuple[type, ...], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags a user gave (not ``None``) for settings of ``sections``, converted."""
    by_name = {s.name: s for cls in sections for s in settings_of(cls)}
    return {n: by_name[n].from_flag(v) for n, v in flags.items() if v is not None}


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings a dataclass declares, in field order (other fields are not settings)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _META not in f.metadata:
            continue
        meta = f.metadata[_META]
        out.append(
            Setting(
                name=f.name,
                type=_base_type(hints[f.name]),
                default=None if f.default is dataclasses.MISSING else f.default,
                section=cls.__name__,
                **meta,
            )
        )
    return tuple(out)


def _base_type(hint: Any) -> type:
    """``int | None`` -> int; only the types ``TYPES`` names are allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if hint not in TYPES:
        raise TypeError(f"a setting must be one of {list(TYPES)}, not {hint!r}")
    return hint


@dataclass(frozen=True)
class Value:
    value: Any
    source: str  # flag | env | file | default


class Resolved(Mapping[str, Value]):
    """The effective settings of one service: each setting's value and where it came from."""

    def __init__(self, schema: Schema, values: dict[str, Value]) -> None:
        self.schema = schema
        self._values = values

    def __getitem__(self, name: str) -> Value:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def given(self, cls: type) -> dict[str, Any]:
        """The settings of section ``cls`` that some source set (not left at the default)."""
        names = {s.name for s in settings_of(cls)}
        return {n: v.value for n, v in self._values.items() if n in names and v.source != "default"}

    def values_of(self, cls: type) -> dict[str, Any]:
        """Every setting of section ``cls``, as keyword arguments for ``cls``."""
        return {s.name: self._values[s.name].value for s in settings_of(cls)}

    def build(self, cls: type[T], **extra: Any) -> T:
        """Section ``cls`` made from these settings (plus fields that are not settings)."""
        return cls(**self.values_of(cls), **extra)

    def require(self) -> None:
        """A required setting nobody set is one clear error naming its three spellings."""
        for s in self.schema.settings:
            if s.required and self._values[s.name].value is None:
                raise ConfigError(
                    "missing_setting",
                    f"{s.name} is not set: give {s.flag}, ${s.env} "
                    f"or {s.name} = ... in the [{self.schema.table}] table",
                )

    def to_json(self) -> str:
        """``{"KEY": {"value": ..., "source": ...}}`` with secrets masked (``--print-config``).

        One key per line, so the output reads (and greps) as a table.
        """
        out = {}
        for s in self.schema.settings:
            v = self._values[s.name]
            value = v.value
            if s.secret and value is not None:
                value = MASK
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str):
                value = redact_url(value)
            out[s.name] = {"value": value, "source": v.source}
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()]
        return "{\n" + ",\n".join(lines) + "\n}"


class Schema:
    """A service's settings: its TOML table and the sections (dataclasses) declaring them."""

    def __init__(self, table: str, *sections: type) -> None:
        if table not in TABLES:
            raise ValueError(f"table {table!r} is not one of {TABLES}")
        self.table = table
        self.sections = sections
        self.settings = tuple(s for cls in sections for s in settings_of(cls))
        self.by_name = {s.name: s for s in self.settings}
        if len(self.by_name) != len(self.settings):
            raise TypeError(f"two sections of [{table}] declare the same setting name")

    def resolve(
        self,
        config: str | Path | None = None,
        *,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Resolved:
        """Merge default < file < environment < flags (``None`` flags are not given)."""
        env = os.environ if env is None else env
        file = self.read_table(config) if config is not None else {}
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        unknown = set(flags) - set(self.by_name)
        if unknown:
            raise TypeError(f"flags {sorted(unknown)} are not settings of [{self.table}]")
        out = {}
        for s in self.settings:
            out[s.name] = self._one(s, file, env, flags, config)
        return Resolved(self, out)

    def _one(self, s: Setting, file: Mapping, env: Mapping, flags: Mapping, path: Any) -> Value:
        if s.name in flags:
            return Value(s.from_flag(flags[s.name]), "flag")
        raw_env = env.get(s.env) if "env" in s.sources else None
        if raw_env:  # an empty variable counts as unset, as shells often leave them
            return Value(s.parse(raw_env, f"${s.env}"), "env")
        if s.name in file:
            return Value(s.coerce(file[s.name], f"{s.name} in [{self.table}] of {path}"), "file")
        return Value(s.default, "default")

    def read_table(self, path: str | Path) -> dict[str, Any]:
        """This service's table of a config file; unknown tables and keys are errors."""
        doc = load_toml(path)
        for key, value in doc.items():
            if not isinstance(value, dict):
                raise ConfigError(
                    "unknown_setting",
                    f"config file {path}: {key!r} is outside any table; "
                    f"put it under [{self.table}]",
                )
            if key not in TABLES:
                raise ConfigError(
                    "unknown_table",
                    f"config file {path}: unknown table [{key}]{_hint(key, TABLES, '[{}]')}; "
                    f"fedmq reads {' and '.join(f'[{t}]' for t in TABLES)}",
                )
        table = doc.get(self.table, {})
        for key, value in table.items():
            self._check_key(path, key, value)
        return table

    def _check_key(self, path: str | Path, key: str, value: Any) -> None:
        where = f"config file {path}: "
        if isinstance(value, dict):
            raise ConfigError(
                "unknown_table",
                f"{where}unknown table [{self.table}.{key}]; "
                f"every {self.table} setting goes directly in [{self.table}]",
            )
        s = self.by_name.get(key)
        if s is None:
            raise ConfigError(
                "unknown_setting",
                f"{where}unknown key {key!r} in [{self.table}]"
                f"{_hint(key, self.by_name, '{!r}')} (see docs/config.md)",
            )
        if "file" not in s.sources:
            raise ConfigError(
                "secret_in_file",
                f"{where}{key} cannot be set in a config file; use {' or '.join(spellings(s))}",
            )


def spellings(s: Setting) -> list[str]:
    """How a user can give this setting: ``--name``, ``$FEDMQ_NAME``, ``name = ...``."""
    names = {"flag": s.flag, "env": f"${s.env}", "file": f"{s.name} = ..."}
    return [names[src] for src in s.sources]


def _hint(word: str, known: Any, fmt: str) -> str:
    import difflib  # here: only a mistake needs it, and every agent start imports this

    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a ConfigError."""
    if sys.version_info >= (3, 11):  # here: an agent started with flags only needs none
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("missing_file", f"config file {p} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("bad_toml", f"config file {p} is not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("unreadable", f"cannot read config file {p}: {exc}") from exc


def redact_url(url: str) -> str:
    """Hide a password in a URL before it is shown anywhere."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:{MASK}@{host}"


def check_choices(obj: Any) -> None:
    """Refuse a value outside a setting's declared choices (for code that builds configs)."""
    for s in settings_of(type(obj)):
        s._check_choice(getattr(obj, s.name), s.name)
