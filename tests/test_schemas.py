"""Each task kind's typed schema (optrepro/tasks/schemas.py) is the one validator of ``cfg.task``.

For every kind: an unknown key, a wrong type and an out-of-range value each give one ``error:`` line
naming the key, through ``optrepro.config.validate_config`` (what the CLI's preflight calls); every
shipped task config passes; the task's constructor receives the typed copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from optrepro.config import CONFIG_DIR, group_options, resolve_interpolations, validate_config
from optrepro.errors import DataMissingError, UserError
from optrepro.tasks import TASK_KINDS
from optrepro.tasks.schemas import SCHEMAS, Toy2DSchema, validate

#: kind -> (a task of that kind, a wrong-type override, an out-of-range override)
CASES: dict[str, tuple[str, tuple[str, Any], tuple[str, Any]]] = {
    "toy2d": ("toy2d", ("steps", "abc"), ("eval_every", -1)),
    "image_classification": ("digits_cnn", ("batch_size", "abc"), ("data.num_workers", -1)),
    "language_model": ("textlm_lstm1", ("bptt", "long"), ("model.dropout", 1.5)),
    "lm_pretrain": ("lm_pretrain_tiny", ("seq_len", "long"), ("min_lr_ratio", 1.5)),
    "translation": ("synthetic_mt", ("beam", "wide"), ("label_smoothing", 1.0)),
    "gan": ("cifar10_dcgan", ("nz", "x"), ("gp_lambda", -1.0)),
    "ring_gan": ("ring_gan", ("modes", [1, 2]), ("modes", 2)),
    "detection": ("synthetic_det", ("epochs", "x"), ("flip_prob", 2.0)),
    "finetune_glue": ("glue_rte", ("batch_size", "x"), ("warmup_ratio", 1.0)),
}


@pytest.fixture(scope="module")
def composed() -> Iterator[Any]:
    def _compose(task: str, profile: str = "smoke") -> DictConfig:
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None)
        return resolve_interpolations(compose(config_name="train", overrides=[f"task={task}", f"profile={profile}"]))

    GlobalHydra.instance().clear()
    yield _compose
    GlobalHydra.instance().clear()


def _error_line(cfg: DictConfig) -> str:
    with pytest.raises(UserError) as info:
        validate_config(cfg)
    line = f"error: {info.value}"
    assert "\n" not in line
    return line


def test_every_kind_has_a_schema() -> None:
    assert set(SCHEMAS) == set(TASK_KINDS)
    assert {task for task, _, _ in CASES.values()} <= set(group_options("task")) and set(CASES) == set(TASK_KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_task_values_are_one_line_naming_the_key(composed: Any, kind: str) -> None:
    task, (wrong_key, wrong_value), (range_key, range_value) = CASES[kind]
    base = composed(task)
    assert base.task.kind == kind
    with contextlib.suppress(DataMissingError):  # a weights file not on this machine is checked last
        validate_config(base)

    cfg = base.copy()
    OmegaConf.update(cfg, "task.no_such_key", 1, force_add=True)
    assert "unknown config key 'task.no_such_key'" in _error_line(cfg)

    cfg = base.copy()
    OmegaConf.update(cfg, f"task.{wrong_key}", wrong_value)
    line = _error_line(cfg)
    assert f"task.{wrong_key} must be an integer" in line, line

    cfg = base.copy()
    OmegaConf.update(cfg, f"task.{range_key}", range_value)
    line = _error_line(cfg)
    assert f"task.{range_key} must be" in line and str(range_value) in line, line


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_every_shipped_task_config_validates(composed: Any, profile: str) -> None:
    for task in group_options("task"):
        cfg = composed(task, profile)
        with contextlib.suppress(DataMissingError):
            typed = validate(cfg.task)
            assert OmegaConf.get_type(typed) is SCHEMAS[str(cfg.task.kind)][0]
            # the typed copy holds the composed values; only keys the yaml leaves out get defaults
            assert _within(OmegaConf.to_container(cfg.task), OmegaConf.to_container(typed)), task


def _within(composed: Any, typed: Any) -> bool:
    """Every composed value is in the typed copy, equal (an int may read as a float there)."""
    if isinstance(composed, dict):
        return all(k in typed and _within(v, typed[k]) for k, v in composed.items())
    return composed == typed and isinstance(composed, bool) == isinstance(typed, bool)


def test_the_task_receives_the_typed_config(composed: Any) -> None:
    import torch

    from optrepro.tasks import RunContext, build_task

    cfg = composed("toy2d")
    task = build_task(cfg.task, RunContext(cfg, torch.device("cpu"), "fp32", 0))
    assert OmegaConf.get_type(task.cfg) is Toy2DSchema
    assert OmegaConf.is_readonly(task.cfg)
    # the schema's defaults are in the task's copy only: the composed config (saved, hashed) is untouched
    assert task.cfg.fault is None and "fault" not in cfg.task


def test_wrong_type_inside_a_list_names_the_element(composed: Any) -> None:
    cfg = composed("digits_cnn")
    OmegaConf.update(cfg, "task.lr_milestones", [1.5])
    assert _error_line(cfg) == "error: task.lr_milestones[0] must be an integer, got 1.5"
