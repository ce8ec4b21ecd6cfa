"""The wheelhouse that lets ``scripts/gpu_check.sh`` run on the lent GPU machine as that machine is.

The device tool's nvidia-h200 image (Python 3.12 x86-64, torch 2.11) has no package index and lacks
hydra-core, omegaconf and a few more of our run-time packages; it holds everything in
``scripts/gpu_image_packages.txt``. ``build`` downloads (or, for sdist-only ones, builds) the wheels of
exactly what the image lacks: pyproject.toml's run-time dependencies plus what the check itself runs
(``GPU_CHECK_NEEDS``), with their dependencies, each checked against the image list, never one of
``NEVER_CARRY``. It pins each package to the version this checkout's environment runs (when that
satisfies the requirement), so what travels is what the tests here ran against. ``check`` runs on the
GPU machine after ``pip install --no-deps --target``: it says which requirement of a carried package the
image does not satisfy (``--no-deps`` is what keeps pip from pulling torch, so nothing else checks them).

    build [--out .gpu-wheels]   wheels + manifest.json; exit 2 if a wheel is missing or it would not travel
    check SITE                  exit 1 if a requirement of a package installed in SITE is unmet
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import NoReturn

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMAGE_LIST = REPO / "scripts" / "gpu_image_packages.txt"
DEFAULT_OUT = REPO / ".gpu-wheels"
# the device tool carries the working tree and every carried path together, up to 64 MiB
TRAVEL_LIMIT_BYTES = 64 * 1024 * 1024
# dev extras the check runs: pytest -m gpu (pytest, pytest-timeout) and bench_optim's reference candidate
GPU_CHECK_NEEDS = ("pytest", "pytest-timeout", "adabelief-pytorch")
# the image's own CUDA builds must be the ones that run, whatever the image list says
NEVER_CARRY = frozenset({"torch", "torchvision", "numpy"})
# run-time packages deliberately not carried, and why (the code imports them only when used)
LEFT_OUT = {
    "wandb": "every run of the check has wandb.mode=disabled, so it is never imported; with it the wheelhouse "
    "grows from 1.4 to 24.5 MiB (17 more wheels, wandb's own a manylinux binary, pydantic-core a CPython-3.12 "
    "one that the offline rehearsal on this machine's Python 3.11 cannot install)",
}
# the image's interpreter, for environment markers (PEP 508)
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# manylinux tags the image's glibc runs; pip expands none of the manylinux_2_N ones by itself
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)] + ["manylinux2014_x86_64"]
PIP_DOWNLOAD = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]


def _fail(message: str) -> NoReturn:
    """A one-line user error, exit status 2 (the project's convention)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def image_packages(path: Path = IMAGE_LIST) -> frozenset[str]:
    """Canonical names from the copied image list (``#`` lines are its header)."""
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return frozenset(canonicalize_name(ln) for ln in lines if ln and not ln.startswith("#"))


def roots(pyproject: Path = REPO / "pyproject.toml") -> list[tuple[Requirement, str]]:
    """pyproject.toml's run-time dependencies plus the dev extras named in GPU_CHECK_NEEDS, each with
    where it came from."""
    project = tomllib.loads(pyproject.read_text())["project"]
    dev = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["optional-dependencies"]["dev"]}
    missing = [n for n in GPU_CHECK_NEEDS if canonicalize_name(n) not in dev]
    if missing:
        _fail(f"pyproject.toml's dev extra lacks {', '.join(missing)}; add them or edit GPU_CHECK_NEEDS")
    return [(Requirement(r), "pyproject.toml") for r in project["dependencies"]] + [
        (dev[canonicalize_name(n)], "pyproject.toml [dev], for the check") for n in GPU_CHECK_NEEDS
    ]


def requires(metadata: str, extras: set[str], env: dict[str, str] | None = None) -> list[Requirement]:
    """The Requires-Dist lines of a METADATA text that apply to ``env`` (the image) with ``extras``."""
    env = env or TARGET_ENV
    found = []
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ({""} | extras)):
            found.append(req)
    return found


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return zf.read(name).decode()


def _pin(req: Requirement) -> str:
    """``name==<this environment's version>`` when that satisfies ``req``, else ``req`` unmarked."""
    try:
        local = md.version(req.name)
    except md.PackageNotFoundError:
        local = None
    if local is not None and req.specifier.contains(local, prereleases=True):
        return f"{req.name}=={local}"
    return f"{req.name}{req.specifier}"


def _fetch(spec: str, dest: Path) -> tuple[Path, bool]:
    """One wheel for ``spec`` into ``dest``: a CPython 3.12 / pure one from the index, else built here from
    its sdist (allowed only when the result is pure Python). Returns (wheel, built_here)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        done = subprocess.run([*pip, "download", "--no-deps", *PIP_DOWNLOAD, *platforms, "-d", tmp, spec],
                              capture_output=True, text=True)
        built = done.returncode != 0
        if built:
            done = subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp, spec], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            _fail(f"no wheel for {spec} (pip: {done.stderr.strip().splitlines()[-1:]}); "
                             "check the package index is reachable")
        if built and not wheels[0].name.endswith("-none-any.whl"):
            _fail(f"{spec} has no CPython 3.12 x86-64 wheel and its local build {wheels[0].name} "
                             "is not pure Python; pin a version that has one")
        return Path(shutil.move(wheels[0], dest / wheels[0].name)), built


@dataclass
class Plan:
    """What build decided: the wheels it fetched and every package it did not carry, with who asked."""

    wheels: dict[str, dict] = field(default_factory=dict)
    on_image: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    left_out: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def build(out: Path) -> Plan:
    """Fetch the closure of ``roots()`` minus the image's packages into ``out`` (emptied first)."""
    image = image_packages()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    plan = Plan()
    extras: dict[str, set[str]] = {}
    # every queued requirement applies to the image (requires() applies markers to the dependencies)
    queue = [(r, p) for r, p in roots() if r.marker is None or r.marker.evaluate({**TARGET_ENV, "extra": ""})]
    while queue:
        req, parent = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in image or name in NEVER_CARRY:
            plan.on_image[name].add(parent)
            continue
        if name in LEFT_OUT:
            plan.left_out[name].add(parent)
            continue
        if name in plan.wheels:
            entry = plan.wheels[name]
            if not req.specifier.contains(entry["version"], prereleases=True):
                _fail(f"{parent} needs {req}, but {entry['file']} was fetched for "
                                 f"{', '.join(entry['required_by'])}; pin one version in pyproject.toml")
            if parent not in entry["required_by"]:
                entry["required_by"].append(parent)
            new = set(req.extras) - extras[name]
            if new:
                extras[name] |= new
                meta = _wheel_metadata(out / entry["file"])
                queue += [(r, name) for r in requires(meta, new) if r not in requires(meta, set())]
            continue
        wheel, built = _fetch(_pin(req), out)
        meta = _wheel_metadata(wheel)
        version = HeaderParser().parsestr(meta)["Version"]
        extras[name] = set(req.extras)
        plan.wheels[name] = {"file": wheel.name, "version": version, "bytes": wheel.stat().st_size,
                             "pure": wheel.name.endswith("-none-any.whl"), "built_here": built,
                             "required_by": [parent]}
        queue += [(r, name) for r in requires(meta, extras[name])]
    return plan


def travelling_bytes() -> int:
    """Bytes of what the device tool sends besides carried paths: tracked and untracked-unignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((REPO / p).lstat().st_size for p in listed if p and (REPO / p).is_file())


def write_manifest(plan: Plan, out: Path) -> dict:
    total = sum(w["bytes"] for w in plan.wheels.values())
    tree = travelling_bytes()
    manifest = {
        "for": "the device tool's nvidia-h200 image: CPython 3.12 x86-64 Linux",
        "image_list": str(IMAGE_LIST.relative_to(REPO)),
        "wheels": dict(sorted(plan.wheels.items())),
        "total_bytes": total,
        "tree_bytes": tree,
        "room_left_bytes": TRAVEL_LIMIT_BYTES - tree - total,
        "on_image": {k: sorted(v) for k, v in sorted(plan.on_image.items())},
        "left_out": {k: {"reason": LEFT_OUT[k], "required_by": sorted(v)} for k, v in sorted(plan.left_out.items())},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(site: Path) -> int:
    """Every requirement (for this interpreter, no extras) of each distribution installed in ``site``,
    looked up on sys.path (``site`` and the image): print the unmet ones, exit 1 if any."""
    unmet = []
    for dist in md.distributions(path=[str(site)]):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                have = None
            if have is None or not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} {dist.version} needs {req}, "
                             f"{'not installed' if have is None else f'found {have}'}")
    for line in unmet:
        print(f"gpu_wheels: {line}")
    return 1 if unmet else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build_p = sub.add_parser("build", help="the wheelhouse + manifest.json")
    build_p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sub.add_parser("check", help="unmet requirements of what SITE holds").add_argument("site", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "check":
        return check(args.site)
    out = args.out.resolve()
    m = write_manifest(build(out), out)
    mib = 1024 * 1024
    for w in m["wheels"].values():
        print(f"  {w['file']:<70} {w['bytes'] / 1024:8.1f} KiB  (for {', '.join(w['required_by'])})")
    print(f"on the image, not carried: {', '.join(m['on_image'])}")
    for name, why in m["left_out"].items():
        print(f"left out: {name} ({why['reason']})")
    print(f"{len(m['wheels'])} wheels, {m['total_bytes'] / mib:.2f} MiB in {out}; the tree that travels "
          f"{m['tree_bytes'] / mib:.2f} MiB; room left under the 64 MiB limit {m['room_left_bytes'] / mib:.2f} MiB")
    if m["room_left_bytes"] < 0:
        _fail("the wheels and the tree would not travel together (64 MiB); leave out more (LEFT_OUT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
