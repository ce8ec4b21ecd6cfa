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


def check_lr_milestones(milestones: Any, minimum: int = 0) -> None:
    """``task.lr_milestones``: 0-based epochs from which lr is multiplied by ``task.lr_gamma``.

    The one step-decay schedule of every task that decays (MultiStepLR's convention). A reference that
    decays after 1-based epoch N (awd-lstm-lm's ``--when N``, mmdetection's ``step=[N]``) has milestone N:
    the first epoch at the new lr is 0-based index N. Tasks that decay at an epoch's end take ``minimum=1``.
    """
    values = list(milestones or [])
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= minimum for e in values):
        raise UserError(f"task.lr_milestones must be a list of epoch numbers >= {minimum} (0-based epochs from "
                        f"which lr is multiplied by lr_gamma), got {values!r}")
