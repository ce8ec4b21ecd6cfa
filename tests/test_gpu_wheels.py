"""The wheelhouse for the lent GPU machine (scripts/gpu_wheels.py, `make gpu-wheels`) and the install step
of scripts/gpu_check.sh that uses it.

The fast tests check the plan (image packages and left-out ones are never fetched, markers and extras
are applied for the image's Python) with a fake index, and the ``check`` subcommand. The slow rehearsal
builds a virtual environment holding only the image's packages that this machine has, runs
gpu_check.sh's install step in it with no index, then imports optrepro and trains toy2d there."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import re
import site
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from types import ModuleType

import pytest
from omegaconf import OmegaConf

from conftest import REPO

WHEELHOUSE = REPO / ".gpu-wheels"
NO_WHEELHOUSE = "no wheelhouse: run `make gpu-wheels` first (it downloads the wheels)"


def _gpu_wheels() -> ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module("gpu_wheels")
    finally:
        sys.path.pop(0)


gw = _gpu_wheels()


def _metadata(name: str, version: str, requires: list[str]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    return "\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n"


def test_image_list_is_a_dated_copy_with_the_image_core() -> None:
    header = gw.IMAGE_LIST.read_text().splitlines()[0]
    assert header.startswith("# ") and "nvidia-h200" in header
    assert re.search(r"20\d\d-\d\d-\d\d", gw.IMAGE_LIST.read_text().split("\n\n")[0])  # when it was read
    image = gw.image_packages()
    assert {"torch", "torchvision", "numpy", "pandas", "pytest", "pip", "packaging"} <= image
    assert not {"hydra-core", "omegaconf", "antlr4-python3-runtime", "wandb"} & image  # what the issue found missing


def test_roots_are_pyproject_runtime_plus_what_the_check_runs() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [r.name for r, _ in gw.roots()]
    assert names[: len(project["dependencies"])] == [Requirement(r).name for r in project["dependencies"]]
    assert {"adabelief-pytorch", "pytest", "pytest-timeout"} <= set(names)
    assert "ruff" not in names  # the rest of the dev extra is not the check's


def test_requires_applies_the_image_markers_and_extras() -> None:
    meta = _metadata("p", "1", ["a>=1", "b; python_version < '3.12'", "c; extra == 'x'",
                                "d; sys_platform == 'win32'", "e; python_version >= '3.12'"])
    assert [r.name for r in gw.requires(meta, set())] == ["a", "e"]  # the image's Python is 3.12
    assert [r.name for r in gw.requires(meta, {"x"})] == ["a", "c", "e"]


def test_plan_never_fetches_the_image_or_the_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake index: what is on the image (and torch whatever the list says) or left out is recorded with
    who asked for it, never fetched; a cycle and a repeated requirement fetch once."""
    from packaging.requirements import Requirement

    index = {
        "pkg-a": ["pkg-b>=1", "pkg-c", "torch>=2", "pkg-d; extra == 'more'"],
        "pkg-b": ["pkg-a", "numpy; python_version < '3'"],
        "pkg-d": [],
    }
    fetched: list[str] = []

    def fake_fetch(spec: str, dest: Path) -> tuple[Path, bool]:
        name = Requirement(spec).name
        fetched.append(name)
        wheel = dest / f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{name.replace('-', '_')}-1.0.dist-info/METADATA", _metadata(name, "1.0", index[name]))
        return wheel, False

    roots = [(Requirement("pkg-a"), "pyproject.toml"), (Requirement("torch>=2"), "pyproject.toml"),
             (Requirement("wandb>=0.17"), "pyproject.toml"), (Requirement("pkg-a[more]"), "pyproject.toml")]
    monkeypatch.setattr(gw, "_fetch", fake_fetch)
    monkeypatch.setattr(gw, "roots", lambda: roots)
    monkeypatch.setattr(gw, "image_packages", lambda: frozenset({"pkg-c"}))  # no torch: NEVER_CARRY holds it
    plan = gw.build(tmp_path / "wheels")
    assert sorted(fetched) == ["pkg-a", "pkg-b", "pkg-d"]  # pkg-d only through the extra
    assert sorted(plan.wheels) == ["pkg-a", "pkg-b", "pkg-d"]
    assert plan.wheels["pkg-a"]["required_by"] == ["pyproject.toml", "pkg-b"]
    assert dict(plan.on_image) == {"pkg-c": {"pkg-a"}, "torch": {"pyproject.toml", "pkg-a"}}
    assert dict(plan.left_out) == {"wandb": {"pyproject.toml"}}


def test_check_names_unmet_requirements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    for folder, requires in ((ok, ["pytest>=1", "nothing-here>=1; python_version < '3'"]),
                             (bad, ["pytest>=1", "nothing-here-xyz>=1", "pytest<1"])):
        (folder / "fake_pkg-1.0.dist-info").mkdir(parents=True)
        (folder / "fake_pkg-1.0.dist-info" / "METADATA").write_text(_metadata("fake-pkg", "1.0", requires))
    assert gw.check(ok) == 0 and capsys.readouterr().out == ""
    assert gw.check(bad) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "gpu_wheels: fake-pkg 1.0 needs nothing-here-xyz>=1, not installed"
    assert lines[1] == f"gpu_wheels: fake-pkg 1.0 needs pytest<1, found {md.version('pytest')}"


def test_tracker_without_wandb_warns_once_and_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optrepro.tracking import Tracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = OmegaConf.create({"wandb": {"mode": "offline"}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = Tracker(cfg, tmp_path, "run-id", {})
        tracker.log({"loss": 1.0}, step=1)
        tracker.finish({"status": "completed"})
    assert tracker.run is None
    assert [str(w.message) for w in caught] == [
        "wandb is not installed, so wandb.mode=offline logs nothing (pip install wandb, or wandb.mode=disabled); "
        "local results are unaffected"]


def test_built_wheelhouse_matches_its_manifest() -> None:
    """What `make gpu-wheels` wrote: only wheels for the image's Python, none of the image's packages."""
    if not (WHEELHOUSE / "manifest.json").is_file():
        pytest.skip(NO_WHEELHOUSE)
    manifest = json.loads((WHEELHOUSE / "manifest.json").read_text())
    files = sorted(p.name for p in WHEELHOUSE.glob("*.whl"))
    assert files == sorted(w["file"] for w in manifest["wheels"].values())
    assert not set(manifest["wheels"]) & (gw.image_packages() | gw.NEVER_CARRY)
    tag = re.compile(r"-(py3-none-any|cp312-(cp312|abi3)-[a-z0-9_.]*manylinux[a-z0-9_.]*x86_64)\.whl$")
    assert all(tag.search(f) for f in files), files
    assert manifest["total_bytes"] == sum((WHEELHOUSE / f).stat().st_size for f in files)
    assert manifest["room_left_bytes"] > 0


def _link_image_packages(dest: Path) -> list[str]:
    """Symlink, file by file from each distribution's RECORD, this environment's copies of the image's
    packages into ``dest``: the packages themselves, not their folders, so a folder shared with a package
    the image lacks (a namespace) brings none of that package's files along."""
    image = gw.image_packages()
    linked: list[str] = []
    for dist in md.distributions(path=site.getsitepackages()):
        name = gw.canonicalize_name(dist.metadata["Name"])
        if name not in image or name in linked:
            continue
        assert dist.files is not None, f"{name} has no RECORD"
        for f in dist.files:
            rel = PurePosixPath(str(f))
            source = Path(dist.locate_file(f))
            target = dest / rel
            if rel.parts[0] == ".." or not source.is_file() or target.exists():
                continue  # console scripts outside site-packages; files RECORD lists but no longer there
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
        linked.append(name)
    return linked


@pytest.mark.slow
def test_offline_rehearsal_install_then_train(tmp_path: Path) -> None:
    """The lent machine as it is, on this CPU: an environment with only the image's packages (those this
    machine has), gpu_check.sh's install step with no index, then optrepro imported and toy2d trained."""
    if not (WHEELHOUSE / "manifest.json").is_file():
        pytest.skip(NO_WHEELHOUSE)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    venv, image_site, site_dir = tmp_path / "venv", tmp_path / "image_site", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    linked = _link_image_packages(image_site)
    assert {"torch", "torchvision", "pip", "pytest", "packaging"} <= set(linked)
    py = str(venv / "bin" / "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir, as for a real site-packages (its own .pth files are read too)
    (Path(purelib) / "image_packages.pth").write_text(f"import site; site.addsitedir({str(image_site)!r})\n")
    times["environment"] = time.perf_counter() - t0
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1",
           "OPTREPRO_PYTHON": py, "GPU_CHECK_SITE": str(site_dir)}

    # the environment really lacks what the wheelhouse carries, and torch comes from the image's packages
    probe = ("import importlib.util as u, torch; print(torch.__file__); "
             "print([m for m in ('hydra', 'omegaconf', 'antlr4', 'wandb', 'optrepro') if u.find_spec(m)])")
    done = subprocess.run([py, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    torch_file, present = done.stdout.splitlines()
    assert Path(torch_file).is_relative_to(image_site) and present == "[]"

    t0 = time.perf_counter()
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    times["gpu_check.sh (start-up + install + CUDA probe)"] = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    n = len(json.loads((WHEELHOUSE / "manifest.json").read_text())["wheels"])
    install, no_cuda = done.stdout.splitlines()
    expected = rf"gpu_check: install rc=0 [0-9.]+s \({n} wheels from {WHEELHOUSE} -> {site_dir}\)"
    assert re.fullmatch(expected, install), done.stdout
    assert no_cuda == "gpu_check: no CUDA device here; nothing to check (run it on a GPU machine)"
    installed = {gw.canonicalize_name(d.metadata["Name"]) for d in md.distributions(path=[str(site_dir)])}
    assert installed == set(json.loads((WHEELHOUSE / "manifest.json").read_text())["wheels"])
    assert not {p.name for p in site_dir.iterdir()} & {"torch", "torchvision", "numpy"}  # --no-deps pulled none

    # the run, as gpu_check.sh's steps see it (src/, then the installed site); wandb is absent
    t0 = time.perf_counter()
    env["PYTHONPATH"] = f"{REPO / 'src'}:{site_dir}"
    done = subprocess.run([py, "-m", "optrepro.train", "task=toy2d", "profile=smoke", "progress=false",
                           f"results_dir={tmp_path / 'runs'}"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    times["toy2d smoke run"] = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert "wandb is not installed, so wandb.mode=offline logs nothing" in done.stderr
    (summary,) = (tmp_path / "runs").glob("toy2d_*/summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"
    print("offline rehearsal: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
