"""The JSON side of ``scripts/gpu_check.sh``: the step record, fake CIFAR, run outcomes, pytest counts.

The shell script runs each step under ``timeout`` and calls this helper between steps, so the record
``<out>/gpu_check.json`` is written (atomically) after every step and survives a step that fails or
hangs. Subcommands:

    start   RECORD                      header: machine, torch, CUDA, GPU, git commit; no steps yet
    record  RECORD --name N --rc R --wall S --limit L [--json P] [--log P] [--note T] -- CMD...
    skip    RECORD NAME REASON          a step not run (listed under "skipped", not failed)
    finish  RECORD                      total wall time and ``ok`` (every step rc 0); exit 1 if not ok
    fake-cifar ROOT [--n-train N] [--n-test N]   torchvision's on-disk CIFAR-10 layout (the tests' writer)
    runs    RESULTS_DIR OUT --expect N [--log P]  each run folder's summary.json and metrics rows -> OUT;
                                        exit 1 unless exactly N runs exist and all completed
    pytest-counts JUNIT_XML OUT         tests / passed / failed / errors / skipped from pytest's junit XML;
                                        exit 1 if none passed (all skipped means CUDA went missing)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _write_json(path: Path, data: Any) -> None:
    """Write whole or not at all (a step killed mid-write must not leave half a record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def start(record: Path) -> int:
    import torch

    cuda = torch.cuda.is_available()
    header: dict[str, Any] = {
        "script": "scripts/gpu_check.sh",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_unix": time.time(),
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "steps": [],
        "skipped": [],
    }
    _write_json(record, header)
    return 0


def add_step(record: Path, args: argparse.Namespace) -> int:
    data = json.loads(record.read_text())
    data["steps"].append(
        {
            "name": args.name,
            "command": args.cmd,
            "rc": args.rc,
            "ok": args.rc == 0,
            "timed_out": args.rc in (124, 137),  # timeout's exit codes (TERM, then KILL)
            "wall_s": round(args.wall, 2),
            "limit_s": args.limit,
            "json": args.json,
            "log": args.log,
            "note": args.note,
        }
    )
    _write_json(record, data)
    return 0


def skip(record: Path, name: str, reason: str) -> int:
    data = json.loads(record.read_text())
    data["skipped"].append({"name": name, "reason": reason})
    _write_json(record, data)
    return 0


def finish(record: Path) -> int:
    data = json.loads(record.read_text())
    data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data["wall_s"] = round(time.time() - data["started_unix"], 2)
    data["failed"] = [s["name"] for s in data["steps"] if not s["ok"]]
    data["ok"] = not data["failed"]
    _write_json(record, data)
    return 0 if data["ok"] else 1


def fake_cifar(root: Path, n_train: int, n_test: int) -> int:
    from optrepro.data.cifar import write_fake_cifar

    folder = write_fake_cifar(root, "cifar10", n_train=n_train, n_test=n_test, seed=0)
    print(f"fake CIFAR-10 ({n_train} train, {n_test} test, torchvision format) in {folder}")
    return 0


def runs(results_dir: Path, out: Path, expect: int, log: Path | None) -> int:
    """One JSON with every run's outcome, so the record shows what trained, not only that it exited 0."""
    found = []
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        summary_path, metrics_path = folder / "summary.json", folder / "metrics.jsonl"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        metrics = (
            [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            if metrics_path.exists()
            else []
        )
        found.append({"folder": folder.name, "summary": summary, "metrics": metrics})
    statuses = [(r["summary"] or {}).get("status") for r in found]
    launcher = None
    if log is not None and log.exists():
        launcher = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("population launcher:")]
    result = {
        "results_dir": str(results_dir),
        "expected_runs": expect,
        "statuses": statuses,
        "ok": len(found) == expect and all(s == "completed" for s in statuses),
        "launcher_lines": launcher,
        "runs": found,
    }
    _write_json(out, result)
    print(f"{len(found)} run(s) in {results_dir}, statuses {statuses} -> {out}")
    return 0 if result["ok"] else 1


def pytest_counts(junit: Path, out: Path) -> int:
    if not junit.exists():
        _write_json(out, {"junit": str(junit), "error": "pytest wrote no junit XML"})
        return 1
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    _write_json(out, {"junit": str(junit), **counts, "failed_tests": failed})
    print(json.dumps(counts))
    return 0 if counts["passed"] > 0 else 1  # on a GPU machine a GPU test that only skips is a failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start").add_argument("record", type=Path)
    rec = sub.add_parser("record")
    rec.add_argument("record", type=Path)
    rec.add_argument("--name", required=True)
    rec.add_argument("--rc", type=int, required=True)
    rec.add_argument("--wall", type=float, required=True)
    rec.add_argument("--limit", type=int, required=True)
    rec.add_argument("--json", default=None, help="where the step's own JSON went")
    rec.add_argument("--log", default=None)
    rec.add_argument("--note", default=None)
    skip_p = sub.add_parser("skip")
    skip_p.add_argument("record", type=Path)
    skip_p.add_argument("name")
    skip_p.add_argument("reason")
    sub.add_parser("finish").add_argument("record", type=Path)
    fake = sub.add_parser("fake-cifar")
    fake.add_argument("root", type=Path)
    fake.add_argument("--n-train", type=int, default=50_000)
    fake.add_argument("--n-test", type=int, default=10_000)
    run_p = sub.add_parser("runs")
    run_p.add_argument("results_dir", type=Path)
    run_p.add_argument("out", type=Path)
    run_p.add_argument("--expect", type=int, required=True)
    run_p.add_argument("--log", type=Path, default=None, help="the training log (population launcher lines)")
    junit = sub.add_parser("pytest-counts")
    junit.add_argument("junit", type=Path)
    junit.add_argument("out", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    cmd: list[str] = []
    if "--" in argv:  # record's trailing command: everything after the first "--", verbatim
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.cmd = cmd
    if args.command == "start":
        return start(args.record)
    if args.command == "record":
        return add_step(args.record, args)
    if args.command == "skip":
        return skip(args.record, args.name, args.reason)
    if args.command == "finish":
        return finish(args.record)
    if args.command == "fake-cifar":
        return fake_cifar(args.root, args.n_train, args.n_test)
    if args.command == "runs":
        if not args.results_dir.is_dir():
            _write_json(args.out, {"results_dir": str(args.results_dir), "ok": False, "error": "no results folder"})
            print(f"error: no results folder {args.results_dir}", file=sys.stderr)
            return 1
        return runs(args.results_dir, args.out, args.expect, args.log)
    return pytest_counts(args.junit, args.out)


if __name__ == "__main__":
    sys.exit(main())
