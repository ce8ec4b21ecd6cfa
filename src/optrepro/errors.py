"""User-facing errors: printed as one line, no traceback (unless HYDRA_FULL_ERROR=1)."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data, unwritable folder).

    The message must be a single line naming the key or path and the fix.
    """


class DataMissingError(UserError):
    """A dataset or weights file is not where the config says."""


def require_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int > 0 (a bool is not), else a UserError naming the config key ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value
