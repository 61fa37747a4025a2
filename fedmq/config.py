"""Configuration shared by the agent, the aggregator and the CLI.

Settings come from a TOML file, then ``FEDMQ_*`` environment variables, then flags;
a later source wins. Secrets (passwords) never appear in ``repr`` or in logs.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fedmq.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


# The settings every service takes to reach its broker (see ``BrokerConfig.from_settings``).
BROKER_FIELDS: dict[str, type] = {
    "broker": str,
    "username": str,
    "password": str,
    "ca": Path,
    "cert": Path,
    "key": Path,
}


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to authenticate; built from an ``mqtt(s)://`` URL."""

    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> BrokerConfig:
        """Take the ``BROKER_FIELDS`` out of layered ``settings`` (``broker`` required)."""
        url = settings.pop("broker")
        return cls.from_url(
            url, **{k: settings.pop(k, None) for k in BROKER_FIELDS if k != "broker"}
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> BrokerConfig:
        """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

        Explicit ``username``/``password`` override those in the URL.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError("bad_broker_url", f"broker URL {_redact(url)!r}: {exc}") from exc
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError(
                "bad_broker_url",
                f"broker URL {_redact(url)!r} must look like mqtt://host:1883 or mqtts://host:8883",
            )
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError("bad_broker_url", f"broker URL {_redact(url)!r} has a path or query")
        tls, default_port = SCHEMES[parts.scheme]
        paths = {"ca": ca, "cert": cert, "key": key}
        for name, value in paths.items():
            if value is not None and not Path(value).is_file():
                raise ConfigError("missing_file", f"TLS {name} file {value} does not exist")
        if (cert is None) != (key is None):
            raise ConfigError("bad_tls", "a client certificate needs both cert and key")
        if not tls and any(v is not None for v in paths.values()):
            raise ConfigError("bad_tls", "CA or client certificates given, but the URL is mqtt://")
        return cls(
            host=parts.hostname,
            port=port or default_port,
            tls=tls,
            username=username if username is not None else _unquote(parts.username),
            password=password if password is not None else _unquote(parts.password),
            ca=Path(ca) if ca else None,
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
        )

    @property
    def url(self) -> str:
        """The URL without the password, safe to print."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
            if self.cert and self.key:
                ctx.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError("bad_tls", f"cannot load TLS files: {exc}") from exc
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client`` (hostname, port, credentials, TLS)."""
        return {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "tls_context": self.tls_context(),
        }


def _unquote(value: str | None) -> str | None:
    return unquote(value) if value else None


def _redact(url: str) -> str:
    """Hide a password in a URL before it is shown anywhere."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("missing_file", f"config file {p} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("bad_toml", f"config file {p} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError("unreadable", f"cannot read config file {p}: {exc}") from exc


def layered(
    fields: Mapping[str, type],
    *,
    file: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    env_prefix: str = "FEDMQ_",
) -> dict[str, Any]:
    """Merge file < environment < flags for the named fields, converting and checking types.

    ``fields`` maps a setting name to its type (str, int, float, bool, Path). Unknown keys
    in the file are an error, so a typo cannot silently fall back to a default.
    """
    file = dict(file or {})
    env = os.environ if env is None else env
    unknown = sorted(set(file) - set(fields))
    if unknown:
        raise ConfigError(
            "unknown_setting", f"unknown setting(s) {unknown}; known: {sorted(fields)}"
        )
    out: dict[str, Any] = {}
    for name, typ in fields.items():
        sources = [
            ("config file", file.get(name)),
            (f"${env_prefix}{name.upper()}", env.get(env_prefix + name.upper())),
            (f"--{name.replace('_', '-')}", (flags or {}).get(name)),
        ]
        for where, value in sources:
            if value is not None:
                out[name] = _convert(name, value, typ, where)
    return out


def _convert(name: str, value: Any, typ: type, where: str) -> Any:
    try:
        if typ is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if typ in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "bad_setting", f"{name} from {where} must be {typ.__name__}, got {value!r}"
        ) from exc
