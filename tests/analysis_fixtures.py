"""Hand-written run folders in the exact format train.py writes, for the analysis tests."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml

ABLATION_CORNERS = {
    "ablation_adam": ("grad_sq", "outside"),
    "ablation_eadam": ("grad_sq", "inside"),
    "ablation_belief_outside": ("belief", "outside"),
    "ablation_belief_inside": ("belief", "inside"),
}


def _floor(eps: float, placement: str | None, beta2: float = 0.999) -> float | None:
    if placement is None:
        return None
    return eps if placement == "outside" else math.sqrt(eps / (1 - beta2))


def write_run(
    root: Path,
    *,
    task: str = "fake_task",
    optimizer: str = "adam",
    opt_class: str | None = None,
    seed: int = 0,
    eps: float = 1e-8,
    lr: float = 1e-3,
    metric: str = "test_acc",
    mode: str = "max",
    curve: list[float] | None = None,
    status: str = "completed",
    reason: str | None = None,
    second_moment: str | None = "grad_sq",
    placement: str | None = "outside",
    complete: bool = True,
    extra_summary: dict[str, Any] | None = None,
    git_sha: str = "abc123def4567890",
    name: str | None = None,
) -> Path:
    """One run folder; ``curve`` is the primary metric at each eval point (epochs 1..len)."""
    curve = [0.5, 0.7, 0.8] if curve is None else curve
    opt_class = opt_class or optimizer.split("_")[0]
    if optimizer in ABLATION_CORNERS:
        second_moment, placement = ABLATION_CORNERS[optimizer]
        opt_class = "ablation"
    digest = hashlib.md5(repr((task, optimizer, seed, eps, lr)).encode()).hexdigest()[:10]
    folder = root / (name or f"{task}_{optimizer}_s{seed}_{digest}")
    folder.mkdir(parents=True)
    cfg = {
        "task": {"name": task, "kind": "fake", "epochs": 3},
        "optimizer": {
            "name": opt_class,
            "config_name": optimizer,
            "lr": lr,
            "eps": eps,
            "betas": [0.9, 0.999],
            "weight_decay": 0.0,
        },
        "profile": {"name": "smoke"},
        "config_layout": 2,
        "seed": seed,
        "results_dir": str(root),
        "device": "cpu",
        "precision": "auto",
        "wandb": {"mode": "disabled"},
        "checkpoint": {"every_steps": 0},
        "progress": False,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        "git_sha": git_sha,
        "torch": "2.x",
        "cuda": None,
        "device": "cpu",
        "device_name": "x86_64",
        "hostname": "test",
    }
    (folder / "env.json").write_text(json.dumps(env))
    rows = []
    for i, value in enumerate(curve):
        rows.append(
            {
                "step": 10 * (i + 1),
                "epoch": i + 1,
                "wall_time": 0.5 * (i + 1),
                "train_loss": 1.0 / (i + 1),
                "lr": lr,
                metric: value,
                "test_loss": 2.0 - i * 0.1,
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not complete:
        return folder
    finite = [(v, i) for i, v in enumerate(curve) if isinstance(v, float) and math.isfinite(v)]
    best = None
    if finite:
        value, i = (max if mode == "max" else min)(finite)
        best = {"value": value, "step": 10 * (i + 1), "epoch": i + 1}
    summary = {
        "status": status,
        "reason": reason,
        "run": folder.name,
        "task": task,
        "optimizer": optimizer,
        "seed": seed,
        "metric": metric,
        "mode": mode,
        "final": rows[-1] if rows else {},
        "best": best,
        "steps": 10 * len(curve),
        "epochs": len(curve),
        "wall_time": 0.5 * len(curve),
        "diverged_step": 7 if status == "diverged" else None,
        "factors": {
            "family": "adam_family" if opt_class != "sgd" else "sgd",
            "second_moment": second_moment,
            "eps_placement": placement,
            "eps": eps if placement else None,
            "effective_floor": _floor(eps, placement),
        },
        "device": "cpu",
        "precision": "fp32",
        **(extra_summary or {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder
