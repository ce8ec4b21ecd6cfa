"""Configs ship with the package: a non-editable ``pip install .`` works from any directory."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_pip_install_then_train_elsewhere(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # this interpreter's packages (pip, setuptools, torch, hydra...) for the dependencies, never src/
    deps = os.pathsep.join(site.getsitepackages())
    env = {**os.environ, "PYTHONPATH": deps, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("OPTREPRO_CONFIG_DIR", None)
    py = venv / "bin" / "python"
    # build from a copy of the checkout (symlinks kept): no build/ left behind, no stale build/ used
    source = tmp_path / "source"
    anywhere = shutil.ignore_patterns(".git", "build", "*.egg-info", ".venv", "*cache*", "wandb")

    def ignore(folder: str, names: list[str]) -> set[str]:  # results/ and data/ of the checkout, not optrepro.data
        top = {"results", "data"} & set(names) if Path(folder) == REPO else set()
        return set(anywhere(folder, names)) | top

    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(venv / "site"), str(source)], check=True, env=env, cwd=tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(venv / "site"), deps])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import optrepro.config as c; print(c.CONFIG_DIR)"],
                           env=env, cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv / "site") and (Path(where) / "train.yaml").is_file()
    assert not Path(where).is_symlink()  # a copy in the installed package, not the checkout's link
    script = venv / "site" / "bin" / "optrepro-train"  # the console script, run by the venv's python
    proc = subprocess.run([str(py), str(script), "task=toy2d", "profile=smoke", "progress=false"],
                          env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((elsewhere / "results" / "runs").glob("toy2d_l1_adam_s0_*/summary.json"))) == 1
