"""scripts/gpu_check.sh without a GPU: it parses, says in one line that there is nothing to check, and
every script option, candidate, bench name and config override it passes exists (so a rename fails here,
not on the GPU machine). The step record helper (scripts/gpu_check_util.py) is tested in-process."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import REPO, compose

SCRIPT = REPO / "scripts" / "gpu_check.sh"
NO_CUDA_LINE = "gpu_check: no CUDA device here; nothing to check (run it on a GPU machine)"


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _commands() -> list[list[str]]:
    """The script's logical lines (backslash continuations joined), comments dropped, as shell words."""
    text = re.sub(r"\\\n", " ", SCRIPT.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [shlex.split(ln, comments=True) for ln in lines]


def _invocations(marker: str) -> list[list[str]]:
    """Words after ``marker`` (e.g. ``scripts/bench_optim.py``) on every line that runs it."""
    found = [words[words.index(marker) + 1 :] for words in _commands() if marker in words]
    assert found, f"gpu_check.sh never runs {marker}"
    return found


def _help(module: ModuleType, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


def _value(words: list[str], option: str) -> str:
    return words[words.index(option) + 1]


def test_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the checks")
def test_without_cuda_one_line_and_exit_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "OPTREPRO_PYTHON": sys.executable}
    done = subprocess.run(  # from another folder: the script finds the repo itself
        ["bash", str(SCRIPT), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == NO_CUDA_LINE + "\n"
    assert done.stderr == ""
    assert not out.exists()  # nothing written without a GPU


def test_needs_an_out_folder(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("error: usage: bash scripts/gpu_check.sh OUT_DIR")


def test_cannot_import_and_no_wheelhouse_is_one_error_line(tmp_path: Path) -> None:
    """The lent machine without the carried wheels: a hydra that fails to import stands for the image's
    missing packages; the script says what to build and carry instead of failing in the first step."""
    (tmp_path / "shadow" / "hydra").mkdir(parents=True)
    (tmp_path / "shadow" / "hydra" / "__init__.py").write_text("raise ImportError('no hydra on this image')\n")
    env = {**os.environ, "OPTREPRO_PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "shadow"),
           "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "gpu")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: {sys.executable} cannot import hydra, optrepro.train (ImportError: no hydra on "
                           f"this image) and {tmp_path / 'no-wheels'} holds no wheels; run make gpu-wheels where "
                           "pip works and carry .gpu-wheels (or make setup)\n")
    assert not (tmp_path / "gpu").exists()


def _checked_invocations(name: str) -> tuple[ModuleType, str, list[list[str]]]:
    """The script ``scripts/<name>.py``, its --help text and the script's invocations of it, after
    checking that every option an invocation passes is one the script has."""
    module = _script(name)
    help_text = _help(module, [])
    invocations = _invocations(f"scripts/{name}.py")
    for words in invocations:
        for option in (w for w in words if w.startswith("--")):
            assert option in help_text, f"{name}.py has no {option}"
    return module, help_text, invocations


def test_bench_optim_options_and_candidates_exist() -> None:
    bench_optim, help_text, invocations = _checked_invocations("bench_optim")
    for words in invocations:
        assert _value(words, "--device") == "cuda"
        for name in _value(words, "--candidates").split(","):
            assert name in bench_optim.CANDIDATES, f"bench_optim.py has no candidate {name}"
        candidates = set(_value(words, "--candidates").split(","))
        assert {"torch_adam_fused", "adabelief_fused", "adabelief_foreach"} <= candidates
        for name in _value(words, "--sets").split(","):
            assert name in help_text, f"bench_optim.py has no parameter set {name}"


def test_bench_train_options_and_benches_exist() -> None:
    bench_train, help_text, invocations = _checked_invocations("bench_train")
    for words in invocations:
        assert _value(words, "--device") == "cuda"
        for name in _value(words, "--only").split(","):
            assert name in bench_train.BENCHES
    # the precisions the loop passes are choices of --precision
    loop = next(w for w in _commands() if w[:3] == ["for", "precision", "in"])
    choices = re.search(r"--precision \{([a-z0-9,]+)\}", help_text)
    assert choices and {w.rstrip(";") for w in loop[3 : loop.index("do")]} == {"fp32", "bf16"} <= set(
        choices.group(1).split(",")
    )


def test_bench_population_options_exist_when_the_script_does() -> None:
    if not (REPO / "scripts" / "bench_population.py").exists():
        pytest.skip("scripts/bench_population.py is not in this checkout (gpu_check.sh skips it too)")
    _, _, invocations = _checked_invocations("bench_population")
    assert invocations  # the script does run it


def test_helper_subcommands_and_options_exist() -> None:
    helper = _script("gpu_check_util")
    for words in _invocations("scripts/gpu_check_util.py"):
        own = words[: words.index("--")] if "--" in words else words  # record's step command follows "--"
        help_text = _help(helper, [own[0]])
        for option in re.findall(r"--[a-z][a-z0-9-]*", " ".join(own)):  # also inside ${var:+--opt ...}
            assert option in help_text, f"gpu_check_util.py {own[0]} has no {option}"


def test_training_overrides_compose() -> None:
    """Each `optrepro.train` line composes (a renamed key or config file fails here); each value of a
    sweep is tried as the first would be."""
    runs = _invocations("optrepro.train")
    assert len(runs) == 2  # the CIFAR epoch and the population
    for words in runs:
        overrides = [w.replace("$TMP", "/tmp/gpu_check_tmp") for w in words if w != "-m"]
        sweeps = {k: v.split(",") for k, v in (o.split("=", 1) for o in overrides) if "," in v}
        for i in range(max((len(v) for v in sweeps.values()), default=1)):
            chosen = []
            for override in overrides:
                key, value = override.split("=", 1)
                chosen.append(f"{key}={sweeps[key][i % len(sweeps[key])]}" if key in sweeps else override)
            cfg, choices = compose(chosen)
            assert cfg.device == "cuda" and cfg.wandb.mode == "disabled" and cfg.progress is False
            assert cfg.results_dir.startswith("/tmp/gpu_check_tmp/")  # the script's temp folder, never results/
    cifar = next(w for w in runs if "task=cifar10_resnet18" in w)
    assert {"task.epochs=1", "task.data.root=$TMP/cifar", "task.data.download=false"} <= set(cifar)
    population = next(w for w in runs if "task=digits_cnn" in w)
    assert "hydra/launcher=population" in population


def test_bench_train_precision_option(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    record = _script("bench_train").main(["--quick", "--only", "cifar", "--precision", "bf16", "--out", str(out)])
    assert record["benches"]["cifar"]["precision"] == "bf16"
    assert json.loads(out.read_text())["benches"]["cifar"]["precision"] == "bf16"


def test_record_keeps_every_step_and_fails_on_any(tmp_path: Path) -> None:
    helper = _script("gpu_check_util")
    record = tmp_path / "gpu_check.json"
    assert helper.main(["start", str(record)]) == 0
    for name, rc in (("a", 0), ("b", 124)):
        argv = ["record", str(record), "--name", name, "--rc", str(rc), "--wall", "1.5", "--limit", "10"]
        assert helper.main([*argv, "--", "python", "x.py", "--out", "o.json"]) == 0
    assert helper.main(["skip", str(record), "c", "no script"]) == 0
    assert helper.main(["finish", str(record)]) == 1
    data = json.loads(record.read_text())
    assert [(s["name"], s["ok"], s["timed_out"]) for s in data["steps"]] == [("a", True, False), ("b", False, True)]
    assert data["steps"][0]["command"] == ["python", "x.py", "--out", "o.json"]
    assert data["failed"] == ["b"] and data["ok"] is False and data["skipped"] == [{"name": "c", "reason": "no script"}]


def test_runs_collects_summaries_and_checks_the_count(tmp_path: Path) -> None:
    helper = _script("gpu_check_util")
    for name, status in (("r0", "completed"), ("r1", "diverged")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps({"status": status}))
        (tmp_path / "runs" / name / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    out = tmp_path / "runs.json"
    assert helper.main(["runs", str(tmp_path / "runs"), str(out), "--expect", "2"]) == 1  # one diverged
    data = json.loads(out.read_text())
    assert data["statuses"] == ["completed", "diverged"] and data["runs"][0]["metrics"] == [{"step": 1}, {"step": 2}]
    (tmp_path / "runs" / "r1" / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert helper.main(["runs", str(tmp_path / "runs"), str(out), "--expect", "2"]) == 0
    assert helper.main(["runs", str(tmp_path / "runs"), str(out), "--expect", "3"]) == 1
