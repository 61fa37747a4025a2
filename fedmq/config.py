"""How every service reaches its broker: the broker settings and the connection they make.

Settings themselves (declaration, TOML, ``FEDMQ_*``, flags) live in ``fedmq.settings``.
A password comes only from ``--password-file`` or ``$FEDMQ_PASSWORD``, never from argv,
and never goes over plain ``mqtt://`` to another host unless ``--insecure`` says so.
Secrets never appear in ``repr`` or in logs.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fedmq.errors import ConfigError
from fedmq.settings import redact_url, setting

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


def fleet_setting() -> Any:
    return setting("default", help="Fleet name: this service's topics live under fl/FLEET/.")


def keepalive_setting() -> Any:
    return setting(30, help="MQTT keepalive in seconds (5 to 3600).")


# Chunking (fedmq.chunks), the same on both sides: what each one publishes larger than
# max_payload goes out in chunks; what it receives in chunks it always reassembles.
MIN_PAYLOAD = 1024


def max_payload_setting() -> Any:
    return setting(
        None,
        help="Largest MQTT payload to publish, in bytes (>= 1024; AWS IoT Core: 131072): a "
        "larger update or model goes out in chunks (none: never chunk).",
    )


def chunk_timeout_setting() -> Any:
    return setting(30.0, help="Seconds a chunked message may take to arrive whole.")


def check_chunking(max_payload: int | None, chunk_timeout: float) -> None:
    if max_payload is not None and max_payload < MIN_PAYLOAD:
        raise ConfigError("bad_setting", f"max_payload must be >= {MIN_PAYLOAD}, got {max_payload}")
    if not 0 < chunk_timeout < float("inf"):
        raise ConfigError("bad_setting", f"chunk_timeout must be > 0, got {chunk_timeout}")


@dataclass(frozen=True)
class BrokerSettings:
    """Broker connection (the same keys for the agent and the aggregator)."""

    broker: str = setting(help="Broker URL: mqtt://host:1883 or mqtts://host:8883.")
    username: str | None = setting(None, help="Broker username.")
    password_file: Path | None = setting(
        None, help="File holding the broker password (its first line); keep it mode 0600."
    )
    password: str | None = setting(
        None,
        help="Broker password, from the environment only so it stays out of `ps`.",
        secret=True,
        sources=("env",),
    )
    ca: Path | None = setting(None, help="CA certificate (PEM) to verify an mqtts:// broker.")
    cert: Path | None = setting(None, help="Client certificate (PEM) for mutual TLS.")
    key: Path | None = setting(None, help="Client private key (PEM) for mutual TLS.")
    insecure: bool = setting(
        False, help="Allow a password over plain mqtt:// to a host other than loopback."
    )

    def connect(self) -> BrokerConfig:
        """The connection these settings describe; refuses an unsafe use of a password."""
        if _url_password(self.broker):
            raise ConfigError(
                "password_in_url",
                "the broker URL holds a password; use --password-file or $FEDMQ_PASSWORD",
            )
        if self.password is not None and self.password_file is not None:
            raise ConfigError("two_passwords", "give --password-file or $FEDMQ_PASSWORD, not both")
        password = (
            self.password if self.password_file is None else _read_password(self.password_file)
        )
        cfg = BrokerConfig.from_url(
            self.broker,
            username=self.username,
            password=password,
            ca=self.ca,
            cert=self.cert,
            key=self.key,
        )
        if cfg.password and not cfg.tls and not _loopback(cfg.host) and not self.insecure:
            raise ConfigError(
                "insecure_password",
                f"refusing to send a password over plain mqtt:// to {cfg.host}: "
                "use mqtts://, or --insecure if the network is trusted",
            )
        return cfg


def _read_password(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("unreadable", f"cannot read the password file {path}: {exc}") from exc
    if not lines or not lines[0]:
        raise ConfigError("bad_password_file", f"the password file {path} is empty")
    return lines[0]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


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
            raise ConfigError("bad_broker_url", f"broker URL {redact_url(url)!r}: {exc}") from exc
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError(
                "bad_broker_url",
                f"broker URL {redact_url(url)!r} must look like mqtt://host:1883 or mqtts://host:8883",
            )
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(
                "bad_broker_url", f"broker URL {redact_url(url)!r} has a path or query"
            )
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
