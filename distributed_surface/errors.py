"""The one exception type for user mistakes: the command line prints its message as one line."""


class UserError(Exception):
    """Bad input from the user: a message that names the problem, shown without a traceback."""
