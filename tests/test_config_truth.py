"""The composed config is the config that runs: ``--cfg job``, the saved config.yaml and the hash agree.

Recipes (configs/recipe/<family>/<recipe_key>.yaml), profiles (configs/profile/<profile>/<family>.yaml)
and experiments are Hydra configs; nothing rewrites the composed config afterwards. These tests compose
every task x optimizer x profile in-process, run real smoke runs for a subset and compare what they save,
and read `--cfg job` from the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import REPO, cli, run_folders, run_inprocess
from optrepro.config import group_options, resolve_interpolations, validate_config
from optrepro.errors import DataMissingError
from optrepro.runs import config_hash

TASKS, OPTIMIZERS, PROFILES = group_options("task"), group_options("optimizer"), group_options("profile")
EXPERIMENTS = group_options("experiment")
#: keys the marker configs would add if they were not empty
MARKERS = ("family", "recipe_key", "recipe")


@pytest.fixture(scope="module")
def composer() -> Iterator[Any]:
    """``compose(overrides)`` -> the resolved composed config; Hydra initialised once (again if a run cleared it)."""

    def _compose(overrides: list[str]) -> dict[str, Any]:
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None)
        cfg = compose(config_name="train", overrides=overrides)
        return OmegaConf.to_container(resolve_interpolations(cfg))  # type: ignore[return-value]

    GlobalHydra.instance().clear()
    yield _compose
    GlobalHydra.instance().clear()


def _check_composed(cfg: dict[str, Any], optimizer: str, profile: str) -> None:
    assert cfg["optimizer"]["config_name"] == optimizer  # recorded by the optimizer yaml itself
    assert cfg["profile"]["name"] == profile
    assert not set(MARKERS) & set(cfg["task"]) and not set(MARKERS) & set(cfg["optimizer"])
    assert "profiles" not in cfg["task"]
    # paper tasks run in fp32 unless precision=bf16 is asked for; experiment=transformer_scale asks for it
    # (the pretraining recipe's bf16 autocast with fp32 weights and optimizer state)
    assert cfg["precision"] == "fp32" or cfg["task"]["kind"] == "lm_pretrain"
    # the optimizer builds, the task's checks pass; a file not on this machine (Inception weights) is checked last
    with contextlib.suppress(DataMissingError):
        validate_config(OmegaConf.create(cfg))


def _grid(full: bool) -> list[tuple[str, str, str]]:
    if full:
        return [(t, o, p) for t in TASKS for o in OPTIMIZERS for p in PROFILES]
    # every task with every profile, every optimizer on one task
    grid = {(t, "adabelief", p) for t in TASKS for p in PROFILES}
    grid |= {("cifar10_resnet18", o, "default") for o in OPTIMIZERS}
    return sorted(grid)


def test_compose_tasks_optimizers_profiles(composer: Any) -> None:
    for task, optimizer, profile in _grid(full=False):
        _check_composed(composer([f"task={task}", f"optimizer={optimizer}", f"profile={profile}"]), optimizer, profile)


@pytest.mark.slow
def test_compose_every_task_optimizer_profile(composer: Any) -> None:
    for task, optimizer, profile in _grid(full=True):
        _check_composed(composer([f"task={task}", f"optimizer={optimizer}", f"profile={profile}"]), optimizer, profile)


def test_profiles_are_real_configs(composer: Any) -> None:
    """Every task has a smoke patch, and it changes the task (a profile is not only a name)."""
    for task in TASKS:
        default = composer([f"task={task}"])["task"]
        smoke = composer([f"task={task}", "profile=smoke"])["task"]
        assert smoke != default, task
        assert (REPO / "configs" / "profile" / "smoke").is_dir()


def test_recipe_precedence(composer: Any) -> None:
    """optimizer yaml < recipe < profile < experiment < command line."""
    cfg = composer(["task=cifar10_resnet18", "optimizer=adabelief"])["optimizer"]
    # the yaml says eps 1e-16, wd 0, decoupled, rectified; the CIFAR recipe says otherwise
    assert (cfg["eps"], cfg["weight_decay"], cfg["weight_decouple"], cfg["rectify"]) == (1e-8, 5e-4, False, False)
    assert cfg["amsgrad"] is False and cfg["lr"] == 1e-3  # untouched yaml value, the adaptive recipe
    cli_wins = composer(["task=cifar10_resnet18", "optimizer=adabelief", "optimizer.eps=1e-16"])["optimizer"]
    assert cli_wins["eps"] == 1e-16 and cli_wins["weight_decay"] == 5e-4
    smoke = composer(["task=cifar10_resnet18", "profile=smoke", "task.epochs=3"])["task"]
    assert smoke["epochs"] == 3 and smoke["data"]["train_subset"] == 128  # CLI beats profile; the rest of it applies
    preset = composer(["experiment=eadam_table3", "task=ptb_lstm2", "optimizer=eadam"])
    assert preset["task"]["name"] == "ptb_lstm2" and preset["optimizer"]["eps"] == 1e-16  # EAdam README, Table 3
    assert preset["optimizer"]["lr"] == 1e-2 and preset["optimizer"]["weight_decay"] == 1.2e-6


SMOKE_RUNS = [
    ("toy2d", "adam"), ("toy2d", "sgd"), ("toy2d", "adabelief_v005"),
    ("digits_cnn", "adabelief"), ("digits_cnn", "sgd"),
    ("textlm_lstm1", "adabelief"), ("textlm_lstm1", "eadam"),
    ("synthetic_mt", "adam"), ("synthetic_mt", "adabelief"),
    ("ring_gan", "adabelief"), ("ring_gan", "sgd"),
    ("synthetic_det", "eadam"), ("synthetic_det", "sgd"),
]  # fmt: skip


def _smoke_overrides(task: str, optimizer: str, tmp_path: Path) -> list[str]:
    ov = [f"task={task}", f"optimizer={optimizer}", "profile=smoke"]
    if task == "textlm_lstm1":
        ov.append(f"task.data.root={tmp_path / 'pydoc'}")
    if task == "synthetic_mt":
        ov.append("task.epochs=1")
    return ov


@pytest.mark.parametrize(("task", "optimizer"), SMOKE_RUNS)
def test_saved_config_is_the_composed_config(task: str, optimizer: str, tmp_path: Path, composer: Any) -> None:
    overrides = _smoke_overrides(task, optimizer, tmp_path)
    results = tmp_path / "runs"
    run_overrides = [*overrides, f"results_dir={results}", "wandb.mode=disabled", "progress=false"]
    composed = composer(run_overrides)
    outcome = run_inprocess(overrides, results)
    assert outcome.status == "completed", outcome
    (folder,) = run_folders(results)
    saved = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    assert saved == composed
    assert folder.name.endswith(config_hash(composed))


def _cfg_job(args: list[str]) -> dict[str, Any]:
    proc = cli([*args, "wandb.mode=disabled", "--cfg", "job", "--resolve"], check=True)
    return yaml.safe_load(proc.stdout)


def test_cfg_job_shows_the_recipe(composer: Any) -> None:
    shown = _cfg_job(["task=cifar10_resnet18", "optimizer=adabelief"])
    o = shown["optimizer"]
    assert (o["eps"], o["weight_decay"], o["weight_decouple"], o["rectify"]) == (1e-8, 5e-4, False, False)
    assert shown == composer(["task=cifar10_resnet18", "optimizer=adabelief", "wandb.mode=disabled"])
    assert shown["precision"] == "fp32"


@pytest.mark.parametrize("experiment", ["eadam_table3"])
def test_cfg_job_shows_the_experiment(experiment: str, composer: Any) -> None:
    args = [f"experiment={experiment}", "task=ptb_lstm2", "optimizer=eadam"]
    assert _cfg_job(args) == composer([*args, "wandb.mode=disabled"])


def _experiment_grid(experiment: str) -> list[list[str]]:
    preset = OmegaConf.load(REPO / "configs" / "experiment" / f"{experiment}.yaml")
    params = preset.hydra.sweeper.params
    tasks = str(params.get("task", "")).split(",") if "task" in params else [""]
    optimizers = str(params.optimizer).split(",")
    return [[f"experiment={experiment}", *([f"task={t}"] if t else []), f"optimizer={o}"]
            for t in tasks for o in optimizers]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_grid_composes(experiment: str, composer: Any) -> None:
    for overrides in _experiment_grid(experiment):
        cfg = composer(overrides)
        optimizer = overrides[-1].split("=", 1)[1]
        _check_composed(cfg, optimizer, "default")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cfg_job_of_every_experiment(experiment: str, composer: Any) -> None:
    args = _experiment_grid(experiment)[0]
    assert _cfg_job(args) == composer([*args, "wandb.mode=disabled"])
