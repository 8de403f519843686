"""One error type for problems the user can fix: the scripts print its message as one line and exit 2."""


class UserError(Exception):
    """Bad input or a missing prerequisite, explained in one line (never shown as a traceback)."""
