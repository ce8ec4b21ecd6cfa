"""Baselines of the AdaBelief paper that torch.optim lacks: AdaBound, Yogi, MSVAG, Fromage.

Plain single-tensor loops (they are baselines, not the object of study); each follows its
published rule and the reference named in its docstring, to 1e-10 over hundreds of steps (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._common import (
    check_betas,
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    reject_sparse,
)


class _LoopOptimizer(torch.optim.Optimizer):
    """Shared step skeleton: closure, params with grads, sparse check."""

    def _params_with_grad(self, group: dict[str, Any]) -> Iterable[tuple[Tensor, Tensor, dict[str, Any]]]:
        """(param, grad, state) of the params with a gradient; complex ones as real views
        (``view_as_real``, as torch.optim does), so their state is real and each part a coordinate."""
        for p in group["params"]:
            if p.grad is None:
                continue
            reject_sparse(p.grad, type(self).__name__)
            if torch.is_complex(p):
                yield torch.view_as_real(p), torch.view_as_real(p.grad), self.state[p]
            else:
                yield p, p.grad, self.state[p]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss (as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._step_group(index, group)
        return loss

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        raise NotImplementedError


class AdaBound(_LoopOptimizer):
    """AdaBound (Luo et al., ICLR 2019), matching torch-optimizer 0.3.0 ``AdaBound``.

    Adam whose per-coordinate step ``lr * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps)`` is clipped
    to ``[final_lr (1 - 1/(gamma t + 1)), final_lr (1 + 1/(gamma t))]``; ``final_lr`` follows the
    current lr (scaled by lr / initial lr, so schedules move the bounds too). Coupled L2 decay.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsbound: bool = False,
    ) -> None:
        check_positive("lr", lr)
        check_bool("amsbound", amsbound)
        betas = check_betas(betas)
        check_nonnegative("final_lr", final_lr)
        check_unit_interval("gamma", gamma)
        check_nonnegative("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            final_lr=final_lr,
            gamma=gamma,
            eps=eps,
            weight_decay=weight_decay,
            amsbound=amsbound,
        )
        super().__init__(params, defaults)
        self.base_lrs = [float(group["lr"]) for group in self.param_groups]

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim pickles only defaults, state and param_groups; the initial lrs scale final_lr
        return {**super().__getstate__(), "base_lrs": self.base_lrs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("base_lrs", [float(group["lr"]) for group in self.param_groups])

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        base_lr = self.base_lrs[index] if index < len(self.base_lrs) else lr
        for p, grad, state in self._params_with_grad(group):
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsbound"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if group["amsbound"]:
                u = state["max_exp_avg_sq"]
                torch.maximum(u, v, out=u)
                denom = u.sqrt().add_(group["eps"])
            else:
                denom = v.sqrt().add_(group["eps"])
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            final_lr = group["final_lr"] * lr / base_lr
            lower = final_lr * (1 - 1 / (group["gamma"] * step + 1))
            upper = final_lr * (1 + 1 / (group["gamma"] * step))
            update = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper).mul_(m)
            p.sub_(update)


class Yogi(_LoopOptimizer):
    """Yogi (Zaheer et al., NeurIPS 2018), matching torch-optimizer 0.3.0 ``Yogi``.

    ``v -= (1 - b2) sign(v - g^2) g^2`` (additive, so v changes slowly when g^2 jumps). As in the
    reference, both m and v start at ``initial_accumulator`` while bias correction assumes zero.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0,
    ) -> None:
        check_positive("lr", lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps)
        check_nonnegative("initial_accumulator", initial_accumulator)  # v < 0 would make sqrt(v) NaN
        check_nonnegative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            initial_accumulator=initial_accumulator,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for p, grad, state in self._params_with_grad(group):
            if len(state) == 0:
                state["step"] = 0
                init = group["initial_accumulator"]
                state["exp_avg"] = torch.full_like(p, init, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.full_like(p, init, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            grad_sq = grad * grad
            v.addcmul_(torch.sign(v - grad_sq), grad_sq, value=-(1 - beta2))
            denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
            p.addcdiv_(m, denom, value=-float(group["lr"]) / (1 - beta1**step))


MSVAG_VARIANTS = ("paper", "adabelief_repo", "adabelief_repo_2020")


class MSVAG(_LoopOptimizer):
    """M-SVAG (Balles & Hennig, ICML 2018): momentum SGD damped per coordinate by its estimated SNR.

    ``variant="paper"`` is the published rule (the authors' TensorFlow code): one beta
    (``betas[0]``) for both moving averages and both bias corrections,
    ``rho = (1-b)(1+b^t) / ((1+b)(1-b^t))`` capped at 0.9999, ``s = (v_hat - m_hat^2) / (1 - rho)``,
    ``gamma = m_hat^2 / (m_hat^2 + rho s)`` clipped to [0, 1] (NaN -> 0), ``p -= lr * gamma * m_hat``.

    ``variant="adabelief_repo"`` is the baseline as the AdaBelief repo ran it: v averaged with
    beta1 but bias-corrected with ``1 - beta2^t``, no rho cap, no clipping (NaN -> 0 kept).
    ``variant="adabelief_repo_2020"`` is that baseline as it was when the paper's curves were made
    (AdaBelief repo code of 2020-10; the beta2 correction came in on 2021-02-16): v bias-corrected
    with ``1 - beta1^t``, no rho cap, no clipping. Early steps are far larger than with beta2's
    correction (``1 - 0.999^t`` is ~1000x smaller than ``1 - 0.5^t`` at first).
    Keywords match that class (``eps`` is accepted and unused there too); coupled L2 decay.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        variant: str = "paper",
    ) -> None:
        check_nonnegative("lr", lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_choice("variant", variant, MSVAG_VARIANTS)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, variant=variant)
        super().__init__(params, defaults)

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        paper = group["variant"] == "paper"
        correct_with_beta1 = group["variant"] in ("paper", "adabelief_repo_2020")
        for p, grad, state in self._params_with_grad(group):
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta1).addcmul_(grad, grad, value=1 - beta1)
            beta1_t = beta1**step
            m_hat = m / (1 - beta1_t)
            v_hat = v / (1 - (beta1_t if correct_with_beta1 else beta2**step))
            rho = (1 - beta1) / (1 + beta1) * (1 + beta1_t) / (1 - beta1_t)
            if paper:
                rho = min(rho, 0.9999)
            m_hat_sq = m_hat * m_hat
            s = (v_hat - m_hat_sq) / (1 - rho)
            factor = m_hat_sq / (m_hat_sq + rho * s)
            if paper:
                factor.clamp_(0.0, 1.0)
            factor.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
            p.sub_(float(group["lr"]) * m_hat * factor)


class Fromage(_LoopOptimizer):
    """Fromage (Bernstein et al., NeurIPS 2020), as in the authors' code and the AdaBelief baseline.

    ``p <- (p - lr * |p| / |g| * g) / sqrt(1 + lr^2)`` per tensor (plain ``p - lr g`` when either norm is
    zero). ``p_bound`` (authors' code; None in the AdaBelief baseline) caps each tensor's norm at
    ``p_bound`` times its norm at the first step.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, p_bound: float | None = None) -> None:
        check_nonnegative("lr", lr)
        if p_bound is not None:
            check_positive("p_bound", p_bound)
        super().__init__(params, dict(lr=lr, p_bound=p_bound))

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        lr, p_bound = float(group["lr"]), group["p_bound"]
        for p, grad, state in self._params_with_grad(group):
            if p_bound is not None and "max" not in state:
                state["max"] = p_bound * p.norm().item()
            grad_norm = grad.norm()
            p_norm = p.norm()
            if p_norm > 0.0 and grad_norm > 0.0:
                p.add_(grad * (p_norm / grad_norm), alpha=-lr)
            else:
                p.add_(grad, alpha=-lr)
            p.div_(math.sqrt(1 + lr**2))
            if p_bound is not None:
                norm = p.norm().item()
                if norm > state["max"]:
                    p.mul_(state["max"] / norm)
