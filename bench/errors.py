"""The one exception type for mistakes a user can make.

The CLI turns a ``UserError`` into a single ``error: ...`` line on stderr and exit code 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, missing file, unknown name, corrupt input: something the user can fix."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
