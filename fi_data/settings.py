"""One definition per setting: a dataclass field that carries its help, choices and flag.

A settings dataclass (``fi_data.params.PreprocessParams``, ``search.config.SearchConfig``)
declares each setting once with :func:`setting`: its default, its meaning (the ``--help``
text), its allowed values and how the command line spells and parses it. The command line
(``run_search.py``) builds its flags from those fields with :func:`add_setting_arguments` and
reads them back with :func:`setting_values`; the dataclass validates the allowed values with
:func:`choice_problems`. Adding a setting therefore touches its field and the code that uses
it, nothing else: the flag, the help text with its default and the check of its choices follow.

Flags: ``--name-with-dashes`` unless the field says otherwise; a boolean that defaults to
False is a switch (``--audio-masking``), one that defaults to True is turned off by
``--no-<name>`` (``--no-augment``). The default is appended to the help text as
``(default: X)`` (or the field's ``default_text``). This mirrors how Keras Tuner's
``Hyperband`` keeps each constructor argument's default next to its documentation, and how
nanoGPT's configurator overrides a config's fields from ``--key=value`` flags.

This module imports nothing heavy: the parser stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable

_KEYS = ("help", "flag", "choices", "parse", "metavar", "default_text")


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,  # noqa: A002 - argparse's name
            choices: Iterable | None = None, parse: Callable[[str], Any] | None = None,
            metavar: str | None = None, default_text: str | None = None,
            default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field that defines one setting.

    Args:
        default: the default value (or give ``default_factory`` for a mutable one).
        help: what the setting means, with its unit; the ``--help`` text, without the default.
            For a boolean that defaults to True, write it for the ``--no-<name>`` flag that
            turns it off (``augment``: "no training augmentation ...").
        flag: the command-line flag (default ``--`` + the field name with dashes).
        choices: the allowed values (checked by :func:`choice_problems` and by argparse).
        parse: turns the flag's text into the value (argparse ``type``; default: the type of
            ``default`` for int, float and str).
        metavar: argparse's name for the value in ``--help``.
        default_text: how ``--help`` shows the default, when ``default`` alone says too little.
        default_factory: as ``dataclasses.field``.

    Returns:
        A ``dataclasses.Field`` with the above in its ``metadata``.
    """
    metadata = {"help": help, "flag": flag, "choices": None if choices is None else tuple(choices),
                "parse": parse, "metavar": metavar, "default_text": default_text}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if "help" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{name} is not declared with setting()")
            return f
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def default_of(cls, name: str) -> Any:
    """The default value of field ``name`` of dataclass ``cls`` (calling its factory)."""
    f = _field(cls, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def help_of(cls, name: str, default: bool = True) -> str:
    """The help text of setting ``name``, with ``(default: X)`` appended when ``default``."""
    f = _field(cls, name)
    text = f.metadata["help"]
    if not default:
        return text
    shown = f.metadata["default_text"]
    if shown is None:
        value = default_of(cls, name)
        shown = "off" if value is False else "on" if value is True else str(value)
    return f"{text} (default: {shown})"


def flag_of(cls, name: str) -> str:
    """The command-line flag of setting ``name``."""
    f = _field(cls, name)
    if f.metadata["flag"]:
        return f.metadata["flag"]
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if default_of(cls, name) is True else f"--{dashed}"


def add_setting_arguments(group, cls, names: Iterable[str]) -> None:
    """Add one flag per setting ``names`` of dataclass ``cls`` to an argparse parser or group.

    Each flag stores into ``dest = <field name>`` with the field's default, so
    :func:`setting_values` can rebuild the dataclass's keyword arguments.

    Raises:
        TypeError: for a name that is not a :func:`setting` field of ``cls`` (a programming
            error).
    """
    for name in names:
        f = _field(cls, name)
        meta, default = f.metadata, default_of(cls, name)
        flag = flag_of(cls, name)
        if isinstance(default, bool):
            action = "store_false" if default else "store_true"
            group.add_argument(flag, dest=name, action=action, default=default, help=help_of(cls, name, False))
            continue
        kwargs: dict = {"dest": name, "default": default, "help": help_of(cls, name)}
        parse = meta["parse"] or (type(default) if isinstance(default, (int, float, str)) else None)
        if parse is not None:
            kwargs["type"] = parse
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["choices"] is None:  # argparse shows the choices themselves
            kwargs["metavar"] = meta["metavar"] or flag.lstrip("-").replace("-", "_").upper()
        group.add_argument(flag, **kwargs)


def setting_values(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """``{name: args.<name>}`` for the settings added by :func:`add_setting_arguments`."""
    return {name: getattr(args, name) for name in names}


def choice_problems(obj) -> list[str]:
    """One message per setting of dataclass instance ``obj`` whose value is not among its choices."""
    problems = []
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("choices")
        if allowed is not None and getattr(obj, f.name) not in allowed:
            problems.append(f"{f.name} must be one of {allowed}, got {getattr(obj, f.name)!r}")
    return problems


def positive_int(text: str) -> int:
    """argparse type: a positive integer.

    Raises:
        argparse.ArgumentTypeError: for anything else (argparse prints it with the flag).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def duration(text: str) -> float:
    """argparse type: seconds from ``'900'``, ``'900s'``, ``'15m'`` or ``'1.5h'``.

    Raises:
        argparse.ArgumentTypeError: for text that is not a positive finite duration.
    """
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:].lower() in units:
            value = float(text[:-1]) * units[text[-1].lower()]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 900, 15m or 1.5h, got {text!r}") from None
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"a duration must be positive and finite, got {text!r}")
    return value
