"""Task registry: a task config's ``kind`` names the class that builds and trains it.

Classes are imported lazily so that a toy run does not pay for torchvision or text libraries.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from optrepro.errors import UserError
from optrepro.tasks.base import RunContext, Task

#: task kind -> "module:Class"
TASK_KINDS: dict[str, str] = {
    "toy2d": "optrepro.tasks.toy2d:Toy2DTask",
    "image_classification": "optrepro.tasks.vision:ImageClassificationTask",
    "language_model": "optrepro.tasks.language_model:LanguageModelTask",
    "lm_pretrain": "optrepro.tasks.lm_pretrain:LMPretrainTask",
    "gan": "optrepro.tasks.gan:GANTask",
    "ring_gan": "optrepro.tasks.ring_gan:RingGANTask",
    "translation": "optrepro.tasks.translation:TranslationTask",
    "detection": "optrepro.tasks.detection:DetectionTask",
    "finetune_glue": "optrepro.tasks.finetune:GlueFinetuneTask",
}


def task_class(kind: str) -> type[Task]:
    if kind not in TASK_KINDS:
        raise UserError(f"unknown task.kind '{kind}'; choose one of: {', '.join(sorted(TASK_KINDS))}")
    module_name, class_name = TASK_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_task(cfg_task: DictConfig, ctx: RunContext) -> Task:
    return task_class(str(cfg_task.kind))(cfg_task, ctx)


__all__ = ["TASK_KINDS", "RunContext", "Task", "build_task", "task_class"]
