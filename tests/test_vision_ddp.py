"""Data-parallel training inside the task: 2 CPU processes (gloo, launched by torchrun) equal 1 process.

The loop's rank-0-only writing lives in train.py and is not covered here; this checks the task's
part, given the process group that optrepro.distributed.setup joins: global batch split across
ranks, gradient averaging (DDP), all-reduced evaluation sums and loss. The other data-parallel
task kinds are in tests/test_distributed.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent(
    """
    import sys, torch
    from omegaconf import OmegaConf
    from optrepro import distributed
    from optrepro.tasks.base import RunContext, seed_everything
    from optrepro.tasks.vision import ImageClassificationTask

    torch.set_num_threads(1)
    task_cfg = OmegaConf.load(sys.argv[1])
    cfg = OmegaConf.create({"optimizer": {"name": "adam", "lr": 1e-3}, "task": task_cfg})
    dist, device = distributed.setup(torch.device("cpu"))  # what the training loop does
    seed_everything(0)
    task = ImageClassificationTask(cfg.task, RunContext(cfg, device, "fp32", seed=0, dist=dist))
    losses = [float(task.train_step()["loss"]) for _ in range(4)]
    metrics = task.evaluate()
    out = {"losses": losses, "metrics": metrics, "world": task.dist.world, "rank": task.dist.rank,
           "params": {k: v.clone() for k, v in task.model.state_dict().items()}}
    torch.save(out, f"{sys.argv[2]}.rank{task.dist.rank}.pt")
    """
)


def _task_cfg(path: Path) -> Path:
    from omegaconf import OmegaConf

    from conftest import composed_task

    cfg = composed_task("digits_cnn")
    cfg.update({"batch_size": 64, "epochs": 1})
    cfg.data.update({"train_subset": 256, "test_subset": 101})  # 101: uneven shards
    OmegaConf.save(cfg, path)
    return path


@pytest.mark.slow  # three fresh Python processes (~30-40 s on the 2-core build machine)
def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    cfg_path = _task_cfg(tmp_path / "task.yaml")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single_env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    subprocess.run(
        [sys.executable, str(script), str(cfg_path), str(tmp_path / "single")],
        env=single_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(cfg_path),
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(tmp_path / "single.rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"ddp.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert single["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    for r in ranks:
        # the same global batches, gradients averaged over ranks: the single-process parameters
        for name, value in single["params"].items():
            assert torch.allclose(r["params"][name], value, atol=1e-5, rtol=1e-4), name
        # the loss each rank reports is the all-reduced global-batch loss
        assert r["losses"] == ranks[0]["losses"]
        for a, b in zip(r["losses"], single["losses"], strict=True):
            assert abs(a - b) < 1e-4
        # evaluation sums over both shards (51 + 50 images) give the single-process metrics
        assert r["metrics"]["test_acc"] == single["metrics"]["test_acc"]
        assert abs(r["metrics"]["test_loss"] - single["metrics"]["test_loss"]) < 1e-4
        assert r["metrics"]["train_acc"] == single["metrics"]["train_acc"]
