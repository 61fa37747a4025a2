"""The ``name:a,b`` specs of flags and configs: ``poly:0.5``, ``shards:2``, ``mlp:64,10:relu``.

One parser; each caller checks the name and the number of arguments and raises its own
ConfigError, with the usage of that flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple


class Spec(NamedTuple):
    name: str
    args: tuple[float, ...]  # () for a bare name; ints when parsed with number=int
    tail: str = ""  # the text after a second ':' (only with tail=True), e.g. an activation


def parse_spec(
    spec: object, number: Callable[[str], float] = float, *, tail: bool = False
) -> Spec | None:
    """``"name:a,b"`` as ``Spec("name", (number(a), number(b)))``; ``"name"`` has no args.

    None when ``spec`` is not a string, an argument is empty (``"name:"``, ``"a,,b"``),
    ``number`` refuses one (ValueError) or gives a non-finite value. With ``tail``, the
    text after a second ``:`` is returned apart (``"mlp:64,10:relu"``); without, it makes
    the last argument bad. Surrounding spaces are ignored.
    """
    if not isinstance(spec, str):
        return None
    name, sep, rest = spec.strip().partition(":")
    rest, _, after = rest.partition(":") if tail else (rest, "", "")
    if not sep:
        return Spec(name.strip(), ())
    try:
        args = tuple(number(part.strip()) for part in rest.split(","))
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in args):
        return None
    return Spec(name.strip(), args, after.strip())
