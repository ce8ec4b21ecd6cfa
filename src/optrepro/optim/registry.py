"""Config -> optimizer: the registry, ``build_optimizer`` and ``describe``.

A config is one ``configs/optimizer/*.yaml`` after overrides: ``name`` (a REGISTRY key), constructor
keyword arguments at the top level, and keys the builder ignores (``name``,
``config_name``, anything starting with ``_``). Any other key must be a
constructor argument: a typo is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ._common import check_betas, check_nonnegative
from .adabelief import AdaBelief, resolve_version_defaults
from .adam_family import AdamFamily, resolve_eps_placement
from .baselines import MSVAG, AdaBound, Fromage, Yogi
from .eadam import EAdam

REGISTRY: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
    "eadam": EAdam,
    "adabelief": AdaBelief,
    "adabound": AdaBound,
    "yogi": Yogi,
    "msvag": MSVAG,
    "fromage": Fromage,
    "ablation": AdamFamily,
}

IGNORED_KEYS = ("name", "config_name")
ADAM_FAMILY = ("adam", "adamw", "radam", "eadam", "adabelief", "ablation")


def _plain(cfg: Any) -> dict[str, Any]:
    """A plain dict from a DictConfig (resolved) or any mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"optimizer config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _lookup(cfg: Mapping[str, Any]) -> tuple[str, type[torch.optim.Optimizer]]:
    name = cfg.get("name")
    if name not in REGISTRY:
        raise ValueError(f"optimizer.name must be one of {sorted(REGISTRY)}, got {name!r}")
    return name, REGISTRY[name]


def optimizer_kwargs(cfg: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and the constructor kwargs a config describes, validated with messages naming keys."""
    cfg = _plain(cfg)
    _name, cls = _lookup(cfg)
    kwargs = {k: v for k, v in cfg.items() if k not in IGNORED_KEYS and not str(k).startswith("_")}
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        allowed = sorted(k for k in accepted if k not in ("self", "params"))
        raise ValueError(f"optimizer.{unknown[0]} is not an argument of {cls.__name__} (allowed: {', '.join(allowed)})")
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = check_betas(list(kwargs["betas"]))
    for key in ("lr", "eps", "weight_decay"):
        if kwargs.get(key) is not None:
            check_nonnegative(key, kwargs[key])
    return cls, kwargs


def build_optimizer(params: Iterable[Any], cfg: Any) -> torch.optim.Optimizer:
    """Build the optimizer an optimizer config describes (see the module docstring)."""
    cls, kwargs = optimizer_kwargs(cfg)
    return cls(params, **kwargs)


def _signature_default(cls: type, key: str) -> Any:
    parameter = inspect.signature(cls.__init__).parameters.get(key)
    return None if parameter is None else parameter.default


def describe(cfg: Any) -> dict[str, Any]:
    """How a config places eps, for grouping runs in tables, plots and wandb.

    Returns ``family`` (adam_family | sgd | other), ``second_moment`` (grad_sq | belief | None),
    ``eps_placement`` (outside | inside | both | None), ``eps`` and ``effective_floor``: the size of
    the denominator floor, eps for outside and sqrt(eps / (1 - b2)) for inside (the inside one when
    both are present, as in AdaBelief, where it dominates).
    """
    cfg = _plain(cfg)
    name, cls = _lookup(cfg)

    def get(key: str) -> Any:
        value = cfg.get(key)
        return _signature_default(cls, key) if value is None else value

    if name == "sgd":
        return _description("sgd", None, None, None, None)
    if name in ("msvag", "fromage"):
        return _description("other", None, None, None, None)

    beta2 = float(list(get("betas") or (0.9, 0.999))[1]) if name in ADAM_FAMILY else 0.0
    if name == "adabelief":
        eps = resolve_version_defaults(get("version"), eps=cfg.get("eps"))["eps"]
        return _description("adam_family", "belief", "both", eps, _inside_floor(eps, beta2))
    if name == "eadam":
        eps = float(get("eps"))
        return _description("adam_family", "grad_sq", "inside", eps, _inside_floor(eps, beta2))
    if name == "ablation":
        eps, eps_root, eps_state = resolve_eps_placement(
            cfg.get("eps_placement"), float(get("eps")), float(get("eps_root")), float(get("eps_state"))
        )
        inside = eps_root + eps_state / (1.0 - beta2)
        if inside > 0.0:
            placement = "both" if eps > 0.0 else "inside"
            floor = math.sqrt(inside)
            nominal = eps_state if eps_root == 0.0 else (eps_root if eps_state == 0.0 else inside)
        else:
            placement, floor, nominal = "outside", eps, eps
        return _description("adam_family", get("second_moment"), placement, nominal, floor)
    eps = float(get("eps"))
    family = "adam_family" if name in ADAM_FAMILY else "other"
    return _description(family, "grad_sq", "outside", eps, eps)


def _inside_floor(eps: float, beta2: float) -> float:
    return math.sqrt(eps / (1.0 - beta2))


def _description(
    family: str, second_moment: str | None, placement: str | None, eps: float | None, floor: float | None
) -> dict[str, Any]:
    return {
        "family": family,
        "second_moment": second_moment,
        "eps_placement": placement,
        "eps": None if eps is None else float(eps),
        "effective_floor": None if floor is None else float(floor),
    }
