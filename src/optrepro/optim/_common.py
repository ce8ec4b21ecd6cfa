"""Small helpers shared by the optimizers: argument checks with messages that name the config key."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _real(name: str, value: Any) -> float:
    """``value`` as a float: any real number (Python, numpy) or, as torch.optim accepts for lr, a
    1-element tensor; anything else is a ValueError naming ``optimizer.<name>``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"optimizer.{name} as a tensor must hold one real number, got shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, numbers.Real):
        return float(value)
    raise ValueError(f"optimizer.{name} must be a number, got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value >= 0`` (NaN is rejected too)."""
    number = _real(name, value)
    if not number >= 0:
        raise ValueError(f"optimizer.{name} must be >= 0, got {number!r}")


def check_positive(name: str, value: Any) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value > 0``."""
    number = _real(name, value)
    if not (number > 0 and not math.isnan(number)):
        raise ValueError(f"optimizer.{name} must be > 0, got {number!r}")


def check_bool(name: str, value: Any) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value`` is True or False (a string
    such as "yes" would otherwise be truthy and silently switch the option on)."""
    if not isinstance(value, bool):
        raise ValueError(f"optimizer.{name} must be true or false, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``0 <= value < 1``."""
    if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
        raise ValueError(f"optimizer.{name} must be in [0, 1), got {value!r}")


def check_betas(betas: Sequence[float], name: str = "betas") -> tuple[float, float]:
    """Check a pair of EMA coefficients and return them as a tuple (configs give lists)."""
    if len(betas) != 2:
        raise ValueError(f"optimizer.{name} must have two entries, got {list(betas)!r}")
    for i, beta in enumerate(betas):
        check_unit_interval(f"{name}[{i}]", beta)
    return float(betas[0]), float(betas[1])


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"optimizer.{name} must be one of {list(choices)}, got {value!r}")


def reject_sparse(grad: torch.Tensor, owner: str) -> None:
    """Sparse gradients would silently densify (or crash deep in a kernel): refuse them up front."""
    if grad.is_sparse:
        raise RuntimeError(
            f"{owner} does not support sparse gradients (got a sparse grad of shape {tuple(grad.shape)}); "
            "use torch.optim.SparseAdam or make the embedding dense (sparse=False)"
        )


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """Optimizer state dtype: fp32 for half/bf16 params (they are stepped in fp32), else the param's."""
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def radam_rho(beta2: float, step: int) -> tuple[float, float]:
    """(rho_inf, rho_t): length of the approximated SMA of RAdam (Liu et al., 2020, eq. 5)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2**step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    return rho_inf, rho_t
