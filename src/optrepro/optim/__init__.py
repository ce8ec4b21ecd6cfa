"""Optimizers of the AdaBelief / EAdam / Adam study.

One Adam-family core with the factors named apart (second moment g^2 or (g - m)^2; eps outside the
sqrt, ``eps_root`` inside it, ``eps_state`` accumulated into the state; weight decay mode; amsgrad;
rectification), named presets over it that reproduce their reference codes step by step, and the
other baselines of the AdaBelief paper. Build one from a config with ``build_optimizer``.
"""

from torch.optim import SGD, Adam, AdamW, RAdam, RMSprop

from .adabelief import VERSION_DEFAULTS, VERSIONS, AdaBelief
from .adam_family import AdamFamily, AdamFamilyOptimizer
from .baselines import MSVAG, AdaBound, Fromage, Yogi
from .eadam import EAdam
from .registry import REGISTRY, build_optimizer, describe, optimizer_kwargs

__all__ = [
    "MSVAG",
    "REGISTRY",
    "SGD",
    "VERSIONS",
    "VERSION_DEFAULTS",
    "AdaBelief",
    "AdaBound",
    "Adam",
    "AdamFamily",
    "AdamFamilyOptimizer",
    "AdamW",
    "EAdam",
    "Fromage",
    "RAdam",
    "RMSprop",
    "Yogi",
    "build_optimizer",
    "describe",
    "optimizer_kwargs",
]
