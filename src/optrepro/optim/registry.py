"""Config -> optimizer: the registry, ``build_optimizer`` and ``describe``.

A config is one ``configs/optimizer/*.yaml`` after overrides: ``name`` (a REGISTRY key), constructor
keyword arguments at the top level, and keys the builder ignores (``name``,
``config_name``, anything starting with ``_``). Any other key must be a
constructor argument: a typo is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ._common import check_betas, check_nonnegative
from .adabelief import AdaBelief
from .adam_family import AdamFamily, AdamFamilyOptimizer
from .baselines import MSVAG, AdaBound, Fromage, Yogi
from .diagnostics import effective_floor
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
    ``eps_placement`` (outside | inside | both | None), ``eps`` (the nominal value: the inside one
    when eps sits inside) and ``effective_floor``: the bias-corrected denominator at a zero
    second moment late in training, ``sqrt(eps_root + eps_state / (1 - b2)) + eps``
    (:func:`optrepro.optim.diagnostics.effective_floor`).

    For our Adam-family classes all of it is read off the preset's own resolved core (the optimizer
    built on a throwaway parameter), so it cannot disagree with what the code computes (EAdam with
    amsgrad puts eps outside; AdaBelief puts it both inside and outside).
    """
    cfg = _plain(cfg)
    name, cls = _lookup(cfg)
    if name == "sgd":
        return _description("sgd", None, None, None, None)
    if name in ("msvag", "fromage"):
        return _description("other", None, None, None, None)
    if issubclass(cls, AdamFamilyOptimizer):
        return describe_core(build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg))
    eps = float(cfg.get("eps") if cfg.get("eps") is not None else _signature_default(cls, "eps"))
    family = "adam_family" if name in ADAM_FAMILY else "other"
    return _description(family, "grad_sq", "outside", eps, eps)


def describe_core(opt: AdamFamilyOptimizer) -> dict[str, Any]:
    """``describe`` of a built Adam-family optimizer, from its first param group's resolved core."""
    spec, hyper = opt._core(opt.param_groups[0])
    inside = hyper.eps_root + hyper.eps_state / (1.0 - hyper.beta2)
    if inside > 0.0:
        placement = "both" if hyper.eps > 0.0 else "inside"
        nominal = hyper.eps_state if hyper.eps_root == 0.0 else (hyper.eps_root if hyper.eps_state == 0.0 else inside)
    else:
        placement, nominal = "outside", hyper.eps
    return _description("adam_family", spec.second_moment, placement, nominal, effective_floor(hyper))


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
