"""User-facing errors: the CLI prints them as one line, without a traceback."""


class UserError(ValueError):
    """Bad input or configuration that the user must fix; the message says what to change."""
