"""Typer options made from declared settings (``fedmq.settings.setting``), never by hand.

``with_settings(*sections)`` adds one option per setting of the sections to a command and
hands the command what the user gave as ``settings={name: value}`` (``None``: not given).
Values arrive as strings and are converted by the schema, exactly as environment values
are, so a bad flag is the same one-line error as a bad variable.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import typer

from fedmq.settings import Setting, settings_of

# Accepted only to refuse it with a clear line (``refuse_password_flag``), not click's box.
PASSWORD = typer.Option(None, "--password", hidden=True)


def option(s: Setting, *, default_note: str | None = None, env: bool = True) -> Any:
    """The typer option of one setting; its help names the default and the variable."""
    note = default_note or _default(s)
    env_note = f"; `${s.env}`" if env and "env" in s.sources else ""
    choices = f" One of: {', '.join(map(str, s.choices))}." if s.choices else ""
    help_text = f"{s.help}{choices} [default: {note}{env_note}]"
    if s.type is bool:
        name = s.flag[2:]
        return typer.Option(None, f"--{name}/--no-{name}", help=help_text, show_default=False)
    metavar = s.type_name.upper()
    return typer.Option(None, s.flag, help=help_text, metavar=metavar, show_default=False)


def _default(s: Setting) -> str:
    if s.required:
        return "required"
    if isinstance(s.default, bool):
        return str(s.default).lower()
    return "none" if s.default is None else str(s.default)


def with_settings(
    *sections: type,
    exclude: tuple[str, ...] = (),
    default_notes: Mapping[type, str] | None = None,
    env: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the sections' settings as options to a command taking ``settings``.

    ``default_notes`` replaces the declared default in the help of a section whose
    defaults the command sets otherwise (the simulator's hyper-parameters: the task's).
    ``env=False``: the command reads flags only, so its help names no variables.
    """
    notes = default_notes or {}
    settings = [
        (s, notes.get(cls))
        for cls in sections
        for s in settings_of(cls)
        if "flag" in s.sources and s.name not in exclude
    ]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "settings"
        ]
        made = [
            inspect.Parameter(
                s.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option(s, default_note=note, env=env),
                annotation=bool if s.type is bool else str,
            )
            for s, note in settings
        ]
        names = {s.name for s, _ in settings}

        def command(**kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in list(kwargs) if n in names}
            return fn(**kwargs, settings=given)

        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + made
        )
        return command

    return wrap
