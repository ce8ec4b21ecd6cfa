"""One definition of run identity (optrepro.identity) for the run hash and the analysis settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from optrepro.analysis.load import load_runs, settings_of
from optrepro.config import resolve_precision
from optrepro.errors import UserError
from optrepro.identity import CONFIG_LAYOUT
from optrepro.runs import config_hash

BASE: dict[str, Any] = {
    "config_layout": CONFIG_LAYOUT, "seed": 0, "precision": "fp32", "results_dir": "results/runs", "device": "cpu",
    "progress": True, "wandb": {"mode": "disabled"}, "checkpoint": {"every_steps": 0}, "sweep": {"jobs_per_gpu": 1},
    "profile": {"name": "default"},
    "optimizer": {"name": "adam", "config_name": "adam", "lr": 1e-3},
    "task": {"name": "ptb_lstm1", "kind": "language_model", "epochs": 200,
             "data": {"name": "ptb", "root": "data/ptb", "download": False, "num_workers": 0, "train_subset": None}},
}  # fmt: skip


def _changed(path: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[leaf] = value
    return cfg


@pytest.mark.parametrize(("path", "value"), [
    ("results_dir", "/elsewhere"), ("device", "cuda"), ("progress", False), ("wandb.mode", "online"),
    ("wandb.verbose", True),
    ("checkpoint.every_steps", 10), ("sweep.jobs_per_gpu", 4), ("task.data.root", "/mnt/ptb"),
    ("task.data.download", True), ("task.data.num_workers", 8),
])  # fmt: skip
def test_location_keys_change_neither_hash_nor_setting(path: str, value: Any) -> None:
    other = _changed(path, value)
    assert config_hash(other) == config_hash(BASE)
    assert settings_of(other) == settings_of(BASE)


@pytest.mark.parametrize(("path", "value"), [
    ("seed", 1), ("precision", "bf16"), ("optimizer.lr", 1e-2), ("task.epochs", 1), ("task.data.train_subset", 10),
    ("profile.name", "smoke"), ("config_layout", 1),
])  # fmt: skip
def test_computing_keys_change_the_hash(path: str, value: Any) -> None:
    other = _changed(path, value)
    assert config_hash(other) != config_hash(BASE)
    if path not in ("seed", "config_layout"):  # seeds are repeats of one setting
        assert settings_of(other) != settings_of(BASE)


def test_old_layout_run_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "toy2d_l1_adam_s0_0123456789"
    folder.mkdir(parents=True)
    old = {k: v for k, v in BASE.items() if k != "config_layout"}
    (folder / "config.yaml").write_text(yaml.safe_dump(old))
    (folder / "summary.json").write_text('{"status": "completed"}')
    data = load_runs(tmp_path / "runs")  # listed with the reason, never counted, never fatal
    assert data.runs.empty
    [state] = data.incomplete.state.tolist()
    assert state.startswith("refused: run folder") and "config layout 1, this code reads layout 2" in state


def test_precision_is_explicit() -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="precision must be one of fp32, bf16, fp16, got 'auto'"):
        resolve_precision("auto", torch.device("cpu"))


@pytest.mark.gpu
def test_fp32_turns_tf32_off_on_gpus() -> None:
    resolve_precision("fp32", torch.device("cuda"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    resolve_precision("bf16", torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    resolve_precision("fp32", torch.device("cuda"))
