"""Aggregate run folders into tables, figures and a report (README, "Analysis").

``load`` reads run folders into a runs table and a long curves table, ``stats`` holds the
Student-t intervals, tests, Holm and detectable effects, ``tables`` the comparison / paper / ablation
tables, ``figures`` the plots, ``speed`` time to target and performance profiles, ``curves`` the AdaBelief
authors' published per-epoch curves, and ``report`` REPORT.md. ``optrepro.analyze`` is the command line
over all of them.
"""

from optrepro.analysis.load import RunsData, load_runs

__all__ = ["RunsData", "load_runs"]
