"""The one exception type for user mistakes: the command line prints its message as one line."""

import re

# A terminal's colour and style codes (ESC [ ... m), which some libraries put in their messages.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UserError(Exception):
    """Bad input from the user: a message that names the problem, shown without a traceback."""


def first_line(exc: BaseException) -> str:
    """An exception in one line: ``TypeName: the first line of its message`` (the type alone where the
    message is empty), with no terminal colour codes, for a :class:`UserError` that names what failed
    underneath."""
    lines = _TERMINAL_CODES.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def one_line(message: str) -> str:
    """A message as the one line the command line prints: its lines joined, terminal codes removed (a
    library's message inside a :class:`UserError` may have both)."""
    return " ".join(line.strip() for line in _TERMINAL_CODES.sub("", message).splitlines() if line.strip())
