"""Rebuild results/published_curves.csv.gz from a checkout of the AdaBelief repository.

    python scripts/published_curves.py --ref /path/to/Adabelief-Optimizer [--commit SHA] [--out CSV]

Reads every per-epoch curve file under PyTorch_Experiments/classification_cifar10/curve and
PyTorch_Experiments/LSTM/curve (torch.save files, loaded with weights_only=True: plain data only) and
writes one row per (task, optimizer, metric, epoch) in this project's names, with the file it came
from as repo@commit:path (optrepro.analysis.curves says how names map). The same checkout gives the
same bytes. The CSV is gzipped (a .gz --out) because in plain text it is 5.4 MB, over the repo's
5 MB file limit (the source column repeats the file's path on every row). --commit defaults to
``git -C REF rev-parse HEAD``; a checkout without .git needs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from optrepro.analysis.curves import REFERENCE_REPO, write_csv

REPO = Path(__file__).resolve().parents[1]


def _commit(ref: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help=f"a checkout of {REFERENCE_REPO}")
    parser.add_argument("--commit", default=None, help="its commit (default: git rev-parse HEAD in --ref)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "published_curves.csv.gz")
    args = parser.parse_args(argv)
    commit = args.commit or _commit(args.ref)
    if not commit:
        print(f"error: {args.ref} is not a git checkout; pass --commit SHA", file=sys.stderr)
        return 2
    try:
        n = write_csv(args.ref, commit, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} rows from {REFERENCE_REPO}@{commit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
