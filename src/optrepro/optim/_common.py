"""Small helpers shared by the optimizers: argument checks with messages that name the config key."""

from __future__ import annotations

from collections.abc import Sequence

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_nonnegative(name: str, value: float) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value >= 0`` (NaN is rejected too)."""
    if not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"optimizer.{name} must be >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """Raise a ValueError naming ``optimizer.<name>`` unless ``value > 0``."""
    if not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"optimizer.{name} must be > 0, got {value!r}")


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
