"""The fleet ACL: one block of Mosquitto ``acl_file`` lines per user, naming its fleet.

Mosquitto's ``pattern`` lines apply to every user and can substitute only the username
(``%u``) or client id (``%c``), never a fleet, so they cannot keep fleets apart. Each
user gets ``topic`` lines of its own instead, written by ``fedmq broker add-device``:

    # fedmq: device pi-001 of fleet farm
    user pi-001
    topic write fl/farm/updates/pi-001
    ...

A file is its header (the comments of ``broker_config/acl`` when new) and these blocks.
:func:`with_user` replaces a user's block, or appends it, and leaves every other line as
it was, including blocks an operator wrote by hand.
"""

from __future__ import annotations

from fedmq.errors import ConfigError
from fedmq.topics import validate_device_id, validate_fleet

ROLES = ("device", "aggregator", "observer")
_MARK = "# fedmq: "

# What each role may do in its fleet; {f} is fl/FLEET, {u} the username.
_GRANTS = {
    "device": (
        # Its updates: the aggregator takes the {device} level as the sender's identity.
        "write {f}/updates/{u}",
        # Its retained status, and its last will.
        "write {f}/devices/{u}/status",
        # Its federated feature statistics.
        "write {f}/stats/{u}",
        # The global model and its ONNX export (retained), and its own ledger entry.
        "read {f}/model/global",
        # The retained chunks of a global model too large for one payload (fedmq.chunks).
        "read {f}/model/global/+",
        "read {f}/model/onnx",
        "read {f}/aggregator/devices/{u}",
    ),
    "aggregator": (
        # Every device's updates (also as $share/GROUP/fl/FLEET/updates/+), statuses, stats.
        "read {f}/updates/+",
        "read {f}/devices/+/status",
        "read {f}/stats/+",
        # The models it publishes, its status, the per-device ledgers and the history
        # summary (aggregator/history); it may read them back (the retained model tells
        # it which version the fleet holds).
        "readwrite {f}/model/#",
        "readwrite {f}/aggregator/#",
    ),
    # Fleet tools (fedmq CLI, dashboards): everything in the fleet, writing nothing.
    "observer": ("read {f}/#",),
}


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError("bad_role", f"role {role!r} is not one of {'|'.join(ROLES)}")
    return role


def block(username: str, role: str, fleet: str) -> list[str]:
    """The ACL lines that give ``username`` the rights of ``role`` in ``fleet``."""
    validate_device_id(username)
    validate_fleet(fleet)
    prefix = f"fl/{fleet}"
    grants = [f"topic {g.format(f=prefix, u=username)}" for g in _GRANTS[check_role(role)]]
    return [f"{_MARK}{role} {username} of fleet {fleet}", f"user {username}", *grants]


def with_user(text: str, username: str, role: str, fleet: str) -> str:
    """The ACL ``text`` with ``username``'s block (if any) replaced by a new one at the end."""
    header, blocks = _split(text)
    lines = header + [line for name, lines in blocks if name != username for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join([*lines, "", *block(username, role, fleet)]).lstrip("\n") + "\n"


def grants(text: str) -> dict[str, tuple[str, str]]:
    """The users fedmq wrote into an ACL: username -> (role, fleet)."""
    out = {}
    for line in text.splitlines():
        words = line[len(_MARK) :].split() if line.startswith(_MARK) else []
        if len(words) == 5 and words[2:4] == ["of", "fleet"]:
            out[words[1]] = (words[0], words[4])
    return out


def _split(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``text`` as its header and its ``(username, lines)`` blocks, in file order.

    A block starts at its ``user`` line, or at the fedmq comment just before it.
    """
    lines = text.splitlines()
    starts: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        words = line.split()
        if words[:1] == ["pattern"]:
            raise ConfigError(
                "bad_acl",
                f"ACL line {i + 1} {line.strip()!r} grants every user the same topics, "
                "across fleets; remove it (fedmq writes a block per user)",
            )
        if words[:1] == ["user"]:
            if len(words) != 2:
                raise ConfigError("bad_acl", f"ACL line {i + 1} {line.strip()!r}: not 'user NAME'")
            begin = i - 1 if i > 0 and lines[i - 1].startswith(_MARK) else i
            starts.append((begin, words[1]))
    if not starts:
        return lines, []
    header = lines[: starts[0][0]]
    ends = [begin for begin, _ in starts[1:]] + [len(lines)]
    spans = zip(starts, ends, strict=True)
    return header, [(name, lines[begin:end]) for (begin, name), end in spans]
