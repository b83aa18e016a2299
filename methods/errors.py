"""The two refusals a method raises: it cannot run on a backbone, or cannot be merged into it."""


class Unsupported(ValueError):
    """A method cannot run on a backbone (family); the message says which and why."""


class NotMergeable(Exception):
    """Raised by ``merge`` for methods whose additions cannot be folded into the backbone."""
