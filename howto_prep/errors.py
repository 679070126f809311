"""User-facing errors: raised for bad input, printed as one line by the CLIs (no traceback)."""


class UserError(Exception):
    """Bad input or an unrecoverable condition the user can fix; the message is one sentence."""
