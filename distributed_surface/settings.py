"""Settings declared once: the machinery that turns one declaration into a flag, a TOML key, a check
and a part of the surface's identity.

A setting is a field of a frozen section dataclass (:mod:`.sections`), declared with :func:`setting`::

    seed: int = setting(0, type=int, identity=True, check=within_64_bits,
                        help="seed of the random directions and of the Hessian's random vectors (default 0)")

From the declarations are built: the flags of ``dsurf run``, ``hessian`` and ``sbatch``
(:func:`add_flags`), the TOML reading (:func:`toml_values`: keys are the fields' names, dashes or
underscores), the checks (:func:`check_values`: choices first, then the setting's own check), the
resume comparison (``identity``), and ``dsurf sbatch``'s ``dsurf run`` line (:func:`command_line`).
A config (:mod:`.config`) is a dataclass of sections; a command takes exactly its config's settings.

Torch-free, so that a bad flag is refused before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .core.errors import UserError

_KEY = "setting"  # where a field's metadata holds its declaration


@dataclass(frozen=True)
class Setting:
    """One setting's declaration (``name``: its field's; filled in by :func:`declared`)."""

    help: str
    flags: tuple[str, ...] = ()  # () : --NAME with dashes for underscores
    metavar: str | tuple[str, ...] | None = None
    nargs: int | str | None = None
    const: object = None
    type: Callable | None = None  # the command line's text -> value (argparse's type)
    choices: tuple | None = None  # the values allowed (from core/options.py)
    parser_choices: bool = False  # the parser refuses other values (argparse's message), not the check
    identity: bool = False  # part of the surface's identity: --resume compares it
    check: Callable[[str, object], None] | None = None  # (flag, value) -> raise UserError; None is "not given"
    from_toml: Callable | None = None  # a TOML value -> the setting's value (x = [-1, 1, 51])
    name: str = ""

    @property
    def flag(self) -> str:
        """The flag messages name."""
        return self.flags[0] if self.flags else f"--{self.name.replace('_', '-')}"


def setting(default=None, **declaration) -> dataclasses.Field:
    """A section's field, declared as a setting (the keywords of :class:`Setting`)."""
    return field(default=default, metadata={_KEY: Setting(**declaration)})


def declared(section) -> list[Setting]:
    """The settings of a section (a dataclass or an instance), in order, with their names."""
    return [dataclasses.replace(f.metadata[_KEY], name=f.name) for f in dataclasses.fields(section) if _KEY in f.metadata]


def sections(config) -> list[tuple[str, type]]:
    """``(attribute, section class)`` of a config class (a dataclass of sections), in order."""
    hints = typing.get_type_hints(config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(config)]


def settings_of(config) -> dict[str, tuple[str, Setting]]:
    """Every setting a config class holds, by name: ``(its section's attribute, declaration)``."""
    return {s.name: (attribute, s) for attribute, section in sections(config) for s in declared(section)}


def identity(config) -> tuple[str, ...]:
    """The settings that decide a surface's values, in declaration order (what ``--resume`` compares)."""
    return tuple(name for name, (_, s) in settings_of(config).items() if s.identity)


# ---------------------------------------------------------------- the command line


def add_flags(parser: argparse.ArgumentParser, config) -> None:
    """A flag for every setting of ``config`` (a config class); a flag not given leaves None."""
    for name, (_, s) in settings_of(config).items():
        options = {"dest": name, "help": s.help}
        for key in ("metavar", "nargs", "const", "type"):
            if getattr(s, key) is not None:
                options[key] = getattr(s, key)
        if s.parser_choices:
            options["choices"] = s.choices
        parser.add_argument(*(s.flags or (s.flag,)), **options)


def given_flags(args: argparse.Namespace, config) -> dict[str, object]:
    """The settings given as flags (not None), by name."""
    return {name: getattr(args, name) for name in settings_of(config) if getattr(args, name, None) is not None}


def command_line(values: dict[str, object], config) -> list[str]:
    """The flags that give ``values`` again (``--seed=3``; ``--plane B.pt C.pt``), as the parser reads them."""
    line = []
    for name, (_, s) in settings_of(config).items():
        value = values.get(name)
        if isinstance(value, (list, tuple)):
            line += [s.flag, *map(str, value)]
        elif value is not None:
            line.append(f"{s.flag}={value}")
    return line


# ---------------------------------------------------------------- TOML and checks


def toml_values(data: dict, config, where: str) -> dict[str, object]:
    """A TOML table's settings by name (keys with dashes or underscores); an unknown key is refused."""
    known = settings_of(config)
    values = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown setting {unknown[0]!r}")
    for name, value in values.items():
        convert = known[name][1].from_toml
        if convert is not None:
            values[name] = convert(value)
    return values


def check_values(config) -> None:
    """Refuse the first setting of ``config`` (an instance) whose value its declaration does not allow."""
    for attribute, section in sections(type(config)):
        part = getattr(config, attribute)
        for s in declared(section):
            value = getattr(part, s.name)
            if value is None:
                continue
            if s.choices is not None and value not in s.choices:
                raise UserError(f"{s.flag} {value!r}: expected one of {', '.join(s.choices)}")
            if s.check is not None:
                s.check(s.flag, value)


def walk(config) -> Iterator[tuple[str, object]]:
    """``(name, value)`` of every setting of ``config`` (an instance), in declaration order."""
    for attribute, section in sections(type(config)):
        part = getattr(config, attribute)
        for s in declared(section):
            yield s.name, getattr(part, s.name)


# ---------------------------------------------------------------- the checks that declarations name


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(flag: str, value) -> None:
    """A whole number of at least 1 (said in two steps: a number, then its size)."""
    if not _whole(value):
        raise UserError(f"{flag} must be a whole number, got {value!r}")
    if value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def within_64_bits(flag: str, value) -> None:
    """A whole number that a 64-bit seed holds."""
    if not _whole(value):
        raise UserError(f"{flag} must be a whole number, got {value!r}")
    if not -(2**63) <= value < 2**64:
        raise UserError(f"{flag} must fit in 64 bits, got {value}")


def count(minimum: int) -> Callable[[str, object], None]:
    """A whole number of ``minimum`` or more (said in one step)."""
    said = "0 or more" if minimum == 0 else f"at least {minimum}"

    def check(flag: str, value) -> None:
        if not _whole(value) or value < minimum:
            raise UserError(f"{flag} must be a whole number of {said}, got {value!r}")

    return check


def number_between(low: float, high: float) -> Callable[[str, object], None]:
    def check(flag: str, value) -> None:
        if not _number(value) or not low < value < high:
            raise UserError(f"{flag} must be a number between {low:g} and {high:g}, got {value!r}")

    return check


def number_above(low: float) -> Callable[[str, object], None]:
    def check(flag: str, value) -> None:
        if not _number(value) or not value > low:
            raise UserError(f"{flag} must be a number above {low:g}, got {value!r}")

    return check


def text(what: str = "string") -> Callable[[str, object], None]:
    """A non-empty string (``what``: how messages name it)."""

    def check(flag: str, value) -> None:
        if not isinstance(value, str) or not value:
            raise UserError(f"{flag} must be a non-empty {what}")

    return check


def matching(pattern: str, expected: str) -> Callable[[str, object], None]:
    """A string that matches ``pattern`` (``expected``: what messages say is allowed)."""
    regex = re.compile(pattern)

    def check(flag: str, value) -> None:
        if not isinstance(value, str) or not regex.match(value):
            raise UserError(f"{flag} {value!r}: expected {expected}")

    return check


def all_of(*checks: Callable[[str, object], None]) -> Callable[[str, object], None]:
    def check(flag: str, value) -> None:
        for one in checks:
            one(flag, value)

    return check


# ---------------------------------------------------------------- switches: --compile, --channels-last

_SWITCH_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def parse_switch(text, auto: bool = False) -> bool | str:
    """on/off (also true/false, yes/no, 1/0) as a bool; "auto" as itself where ``auto``; else the text
    unchanged, for the check to name. A bool stays itself."""
    if isinstance(text, bool):
        return text
    word = str(text).lower()
    if auto and word == "auto":
        return "auto"
    return _SWITCH_WORDS.get(word, text)


def switch_setting(default: bool | str, *, auto: bool = False, help: str, **declaration) -> dataclasses.Field:
    """A switch: ``--compile`` alone is on, ``--compile=on|off`` (also true/false, yes/no, 1/0), and
    where ``auto``, ``=auto`` (decided later); in TOML ``compile = "on"`` or ``compile = true``."""
    allowed = f"{'auto, ' if auto else ''}on or off"

    def parse(text: str) -> bool | str:
        value = parse_switch(text, auto=auto)
        if not isinstance(value, bool) and value != "auto":
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    def check(flag: str, value) -> None:
        if not (isinstance(value, bool) or (auto and value == "auto")):
            raise UserError(f"{flag} must be {allowed}, got {value!r}")

    return setting(
        default, nargs="?", const=True, type=parse, metavar=allowed.replace(", ", "|").replace(" or ", "|"),
        check=check, from_toml=lambda value: parse_switch(value, auto=auto), help=help, **declaration,
    )  # fmt: skip
