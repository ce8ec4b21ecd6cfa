"""Data parallel for every task kind: the kinds that train data-parallel give, with 2 gloo processes
launched by torchrun, what 1 process gives; the others refuse WORLD_SIZE > 1 with one line.

Image classification has its own test (tests/test_vision_ddp.py); the whole loop under torchrun
(one run folder, written once) is tests/test_train.py's torchrun test, the one multi-process test
of the default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_folders, run_inprocess

# one worker for every kind: the loop's set-up (distributed.setup -> RunContext.dist), a few steps
# (at most until the task is done), one evaluation, the parameters
WORKER = textwrap.dedent(
    """
    import sys, torch
    from omegaconf import OmegaConf
    from optrepro import distributed
    from optrepro.tasks import RunContext, build_task
    from optrepro.tasks.base import seed_everything

    torch.set_num_threads(1)
    cfg = OmegaConf.load(sys.argv[1])
    dist, device = distributed.setup(torch.device("cpu"))
    seed_everything(0)
    task = build_task(cfg.task, RunContext(cfg, device, "fp32", seed=0, dist=dist))
    losses = []
    while len(losses) < int(sys.argv[3]) and not task.done():
        losses.append(float(task.train_step()["loss"]))
    metrics = task.evaluate()
    out = {"losses": losses, "metrics": metrics, "world": dist.world,
           "params": {k: v.clone() for k, v in task.model.state_dict().items()}}
    torch.save(out, f"{sys.argv[2]}.rank{dist.rank}.pt")
    distributed.teardown()
    """
)


def _config(tmp_path: Path, task: str, overrides: dict[str, Any],
            optimizer: dict[str, Any] | None = None) -> Path:
    from conftest import composed_task

    task_cfg = OmegaConf.merge(composed_task(task), overrides)
    path = tmp_path / "run.yaml"
    OmegaConf.save(OmegaConf.create({"optimizer": optimizer or {"name": "adam", "lr": 1e-3}, "task": task_cfg}), path)
    return path


def _single_and_two_ranks(tmp_path: Path, cfg_path: Path, steps: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single_env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, str(script), str(cfg_path), str(tmp_path / "single"), str(steps)],
                          env=single_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(cfg_path), str(tmp_path / "ddp"), str(steps)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(tmp_path / "single.rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"ddp.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert single["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    return single, ranks


def _assert_same_training(single: dict[str, Any], ranks: list[dict[str, Any]], metric_keys: list[str]) -> None:
    for r in ranks:
        for name, value in single["params"].items():
            assert torch.allclose(r["params"][name].float(), value.float(), atol=1e-5, rtol=1e-4), name
        assert r["losses"] == ranks[0]["losses"]  # every rank reports the global loss
        for a, b in zip(r["losses"], single["losses"], strict=True):
            assert abs(a - b) < 1e-4 * max(1.0, abs(b))
        for key in metric_keys:
            assert r["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow  # three fresh Python processes (13-26 s on the 2-core build machine)
def test_language_model_two_gloo_processes_match_one(tmp_path: Path) -> None:
    no_dropout = {k: 0.0 for k in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")}
    cfg_path = _config(tmp_path, "textlm_lstm1", {
        "data": {"root": str(tmp_path / "pydoc"), "train_tokens": 4000, "eval_tokens": 1000},
        "model": {"emsize": 32, "nhid": 32, **no_dropout}, "epochs": 1,
    })
    single, ranks = _single_and_two_ranks(tmp_path, cfg_path, steps=50)
    # batch 20 = 2 x 10 columns of the stream per rank; the run reaches its one epoch end, where the
    # training loss is all-reduced (train_ppl) and evaluation runs whole on each rank
    assert 3 <= len(single["losses"]) < 50
    _assert_same_training(single, ranks, ["valid_loss", "test_loss", "train_ppl", "test_ppl_at_best_valid"])


@pytest.mark.slow  # three fresh Python processes (~15-40 s on the 2-core build machine)
def test_translation_two_gloo_processes_match_one(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "synthetic_mt", {
        "data": {"train_size": 300, "valid_size": 16, "test_size": 16},
        "model": {"dropout": 0.0}, "max_tokens": 512, "warmup_updates": 2, "valid_bleu_subset": 8,
        "beam": 2, "epochs": 1,
    }, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    # SGD, not Adam: the attention key bias has a zero gradient up to rounding, which Adam's
    # normalization would blow up into lr-sized steps that differ between the two runs
    single, ranks = _single_and_two_ranks(tmp_path, cfg_path, steps=4)
    # each rank trains on its rows of the token-count batch; the loss is normalized by the global tokens
    _assert_same_training(single, ranks, ["valid_loss", "valid_nll_loss"])


@pytest.mark.parametrize("task", ["toy2d", "ring_gan", "synthetic_det"])
def test_kinds_that_are_not_data_parallel_refuse_torchrun(task: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What each rank of a torchrun launch sees: one error line, before any process group or run folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    outcome = run_inprocess([f"task={task}", "profile=smoke", "device=cpu"], tmp_path)
    assert outcome.status == "error"
    assert "does not train data-parallel" in outcome.reason and "WORLD_SIZE=2" in outcome.reason
    assert "\n" not in outcome.reason
    assert run_folders(tmp_path) == []
    assert not torch.distributed.is_initialized()


@pytest.mark.slow  # torchrun and two fresh processes (~10 s)
def test_torchrun_refusal_is_one_error_line(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "optrepro.train",
                           "task=toy2d", "profile=smoke", "device=cpu", f"results_dir={tmp_path}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "task.kind=toy2d does not train data-parallel" in errors[0]
    assert run_folders(tmp_path) == []
