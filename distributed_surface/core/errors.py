"""The one exception type for user mistakes: the command line prints its message as one line."""


class UserError(Exception):
    """Bad input from the user: a message that names the problem, shown without a traceback."""


def first_line(exc: BaseException) -> str:
    """An exception in one line: ``TypeName: the first line of its message`` (the type alone where the
    message is empty), for a :class:`UserError` that names what failed underneath."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
