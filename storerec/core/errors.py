"""Errors a user can cause. The CLI prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """Bad input or a missing prerequisite; the message names the file/row/field and what to do."""


class NotFoundError(UserError):
    """What the input names does not exist (a registered version, an alias)."""
