"""The one exception type for mistakes a user can make.

The CLI turns a ``UserError`` into a single ``error: ...`` line on stderr and exit code 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, missing file, unknown name, corrupt input: something the user can fix."""
