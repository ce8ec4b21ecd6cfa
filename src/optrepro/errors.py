"""User-facing errors: printed as one line, no traceback (unless HYDRA_FULL_ERROR=1)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data, unwritable folder).

    The message must be a single line naming the key or path and the fix.
    """


class DataMissingError(UserError):
    """A dataset or weights file is not where the config says."""
