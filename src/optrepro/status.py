"""What became of a run: one enum for train, the run store, sweeps and analysis.

A ``StrEnum`` member *is* its string (``RunStatus.COMPLETED == "completed"``, ``json.dumps`` and
f-strings give ``completed``), so summary.json, outcomes.jsonl and the CSV tables hold the same values
as before, and frames read back from them compare equal to the members.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    COMPLETED = "completed"  # trained to its last step
    DIVERGED = "diverged"  # stopped by a non-finite training loss: a result of the optimizer, kept
    FAILED = "failed"  # an exception (or the process was killed): retried on relaunch
    SKIPPED = "skipped"  # outcome only: the run folder already holds a completed or diverged run
    ERROR = "error"  # outcome only: a user error (bad config, unwritable folder); nothing was trained


#: what a summary.json may record (skipped and error are outcomes of a launch, never written to a run)
SUMMARY_STATUSES = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED)
#: a run folder with one of these is done: a relaunch skips it (a failed run is tried again)
FINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.DIVERGED)

__all__ = ["FINAL_STATUSES", "SUMMARY_STATUSES", "RunStatus"]
