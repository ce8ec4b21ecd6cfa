"""EAdam (Yuan & Gao, 2020): Adam with eps accumulated into the second moment in place.

Official rule::

    v = b2 v + (1 - b2) g^2;  v += eps            # in place, every step
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / sqrt(v)

with coupled L2 weight decay. The amsgrad branch of the official code is plain (old torch.optim)
AMSGrad: no in-place eps, ``u = max(u, v)``, denominator ``sqrt(u) + eps`` before bias correction.

Summing the in-place additions gives exactly ``v_hat + eps / (1 - b2)`` after bias correction, so
EAdam(eps) == AdamFamily(eps=0, eps_root=eps / (1 - b2)) at every step (tested).

``eps_outside=True`` is the rule the paper's CIFAR runs executed: the repo's compiled
``cifar-classification/optimizations/__pycache__/EAdam.cpython-37.pyc`` (compiled before the paper)
computes ``denom = v.add_(eps).sqrt().add_(eps)`` at its source line 101, i.e. eps in the state AND
the same eps outside the root, before bias correction (old torch Adam form), whereas every ``EAdam.py``
in the repo has ``denom = v.add_(eps).sqrt()`` (EAdam.py:100). The difference is tiny (eps next to
sqrt(v) >= sqrt(eps)) but it is what ran. Ignored with amsgrad (both forms are plain AMSGrad there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._common import check_betas, check_bool, check_nonnegative
from ._kernels import CoreHyper, CoreSpec
from .adam_family import AdamFamilyOptimizer


class EAdam(AdamFamilyOptimizer):
    """Drop-in for the official EAdam class (same keywords, defaults and state keys); ``eps_outside``
    adds the compiled version's outer eps (module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        eps_outside: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        check_nonnegative("lr", lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_bool("amsgrad", amsgrad)
        check_bool("eps_outside", eps_outside)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        eps_outside=eps_outside)
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _core(self, group: dict[str, Any]) -> tuple[CoreSpec, CoreHyper]:
        amsgrad = group["amsgrad"]
        spec = CoreSpec(
            second_moment="grad_sq",
            weight_decay_mode="coupled",
            amsgrad=amsgrad,
            eps_before_correction=True,
        )
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        hyper = CoreHyper(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=eps if amsgrad or group.get("eps_outside", False) else 0.0,
            eps_state=0.0 if amsgrad else eps,
            weight_decay=group["weight_decay"],
        )
        return spec, hyper
