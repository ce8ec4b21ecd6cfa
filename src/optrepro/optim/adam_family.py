"""The Adam-family core as a torch.optim.Optimizer, and ``AdamFamily``, its generic ablation entry.

Named optimizers (``AdaBelief``, ``EAdam``) are thin presets: they keep their reference's
constructor and param-group keys, and only translate a param group into the core's factors
(``_core``). Everything else -- state, grouping, the three kernels -- lives here once.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from . import _kernels
from ._common import (
    LOW_PRECISION,
    check_betas,
    check_bool,
    check_choice,
    check_nonnegative,
    reject_sparse,
    state_dtype,
)
from ._kernels import (
    AMSGRAD_EPS,
    RECTIFY_MODES,
    SECOND_MOMENTS,
    WEIGHT_DECAY_MODES,
    CoreHyper,
    CoreSpec,
)
from .diagnostics import DEFAULT_SAMPLE, Diagnostics

# A foreach chunk holds at most max(largest param, this many elements): the workspace that receives
# the temporaries has that size, so a step never needs more than about one parameter of extra memory.
MIN_CHUNK_NUMEL = 1 << 20

_Bucket = tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]
TRACED_FIELDS = (*_kernels.SCALAR_FIELDS, "use_denom", "from_max")


class AdamFamilyOptimizer(torch.optim.Optimizer):
    """Base class: state layout, grouping by (device, dtype, step) and dispatch to a kernel.

    Subclasses set the state key names and implement ``_core(group) -> (CoreSpec, CoreHyper)``.
    State per parameter: ``step`` (int) and two tensors, three with amsgrad.
    """

    exp_avg_key = "exp_avg"
    exp_avg_sq_key = "exp_avg_sq"
    max_exp_avg_sq_key = "max_exp_avg_sq"

    def __init__(self, params: Any, defaults: dict[str, Any], foreach: bool | None, fused: bool) -> None:
        if fused and foreach:
            raise ValueError("optimizer.fused and optimizer.foreach cannot both be true")
        defaults = {**defaults, "foreach": foreach, "fused": bool(fused)}
        super().__init__(params, defaults)
        self._workspaces: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._diagnostics: Diagnostics | None = None

    # -- diagnostics --------------------------------------------------------------------------------

    def enable_diagnostics(self, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> Diagnostics:
        """Keep shadow second moments on a fixed random sample of ``sample`` coordinates (in all,
        over every param group) and report where the step size comes from; see
        :mod:`optrepro.optim.diagnostics`. Call before the first step; never changes the update."""
        if any("step" in state for state in self.state.values()):
            raise RuntimeError("enable_diagnostics() must be called before the first step")
        self._diagnostics = Diagnostics(self, sample, seed)
        return self._diagnostics

    @property
    def diagnostics(self) -> Diagnostics | None:
        """The diagnostics probe, or None when they are off."""
        return self._diagnostics

    # -- to be provided by presets ---------------------------------------------------------------

    def _core(self, group: dict[str, Any]) -> tuple[CoreSpec, CoreHyper]:
        raise NotImplementedError

    # -- step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss (as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        traced = torch.compiler.is_compiling()
        for index, group in enumerate(self.param_groups):
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            steps: list[Tensor] = []
            positions: list[int] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, positions)
            if not params:
                continue
            spec, hyper = self._core(group)
            torch._foreach_add_(steps, 1)
            probe = self._diagnostics
            if probe is not None:
                probe.before_step(index, positions, params, hyper)
            if traced:
                self._traced_update(spec, hyper, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
            else:
                buckets: dict[tuple, _Bucket] = defaultdict(lambda: ([], [], [], [], []))
                for i, p in enumerate(params):
                    bucket = buckets[(p.device, p.dtype, int(steps[i].item()))]
                    for lst, value in zip(bucket, (p, grads[i], exp_avgs[i], exp_avg_sqs[i]), strict=False):
                        lst.append(value)
                    if spec.amsgrad:
                        bucket[4].append(max_exp_avg_sqs[i])
                host = dataclasses.replace(hyper, lr=float(hyper.lr))
                for (_device, dtype, step), bucket in buckets.items():
                    flags, scalars = _kernels.make_plan(spec, host, step)
                    self._run(group, dtype, flags, scalars, bucket)
            if probe is not None:
                probe.after_step(index, positions, grads, exp_avgs, hyper)
        return loss

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
        positions: list[int],
    ) -> bool:
        """Initialise state lazily and list the tensors of the params with a gradient.

        Named and shaped like torch.optim's ``_init_group`` on purpose: torch.compile runs a method of
        that name eagerly instead of tracing it, so a compiled step sees initialised state and does
        not recompile once it exists. Complex tensors are listed as real views (``view_as_real``), as
        torch.optim.Adam does: the real and imaginary parts are separate coordinates.
        """
        amsgrad = self._core(group)[0].amsgrad
        m_key, v_key, u_key = self.exp_avg_key, self.exp_avg_sq_key, self.max_exp_avg_sq_key
        has_complex = False
        for position, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            reject_sparse(grad, type(self).__name__)
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state[m_key] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
                state[v_key] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
            if amsgrad and u_key not in state:
                state[u_key] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
            tensors = [p, grad, state[m_key], state[v_key]] + ([state[u_key]] if amsgrad else [])
            if torch.is_complex(p):
                has_complex = True
                tensors = [torch.view_as_real(t) for t in tensors]
            params.append(tensors[0])
            grads.append(tensors[1])
            exp_avgs.append(tensors[2])
            exp_avg_sqs.append(tensors[3])
            if amsgrad:
                max_exp_avg_sqs.append(tensors[4])
            steps.append(state["step"])
            positions.append(position)
        return has_complex

    def _traced_update(
        self,
        spec: CoreSpec,
        hyper: CoreHyper,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
    ) -> None:
        """The step inside the caller's torch.compile: step counters stay tensors (no Python number
        derived from them, so no guard on their value), and the fused kernel's body is traced."""
        flags = _kernels.kernel_flags(spec, hyper)
        for i, p in enumerate(params):
            values = _kernels.plan_values(spec, hyper, steps[i].to(p.device))
            scalars = torch.stack([torch.as_tensor(values[name], dtype=torch.float64, device=p.device)
                                   for name in TRACED_FIELDS])
            u = max_exp_avg_sqs[i] if spec.amsgrad else None
            _kernels.traced_step(flags, p, grads[i], exp_avgs[i], exp_avg_sqs[i], u, scalars)

    def _run(
        self,
        group: dict[str, Any],
        dtype: torch.dtype,
        flags: _kernels.KernelFlags,
        scalars: _kernels.StepScalars,
        bucket: _Bucket,
    ) -> None:
        if group["fused"] and _kernels.fused_available() and _kernels.fused_step(flags, scalars, *bucket):
            return
        foreach = group["foreach"] is not False  # None means the default: multi-tensor
        if not foreach or dtype in LOW_PRECISION:
            # Low-precision params are stepped on fp32 copies, one tensor at a time (fused does it in-kernel).
            _kernels.single_tensor_step(flags, scalars, *bucket)
            return
        params = bucket[0]
        numels = [p.numel() for p in params]
        cap = min(sum(numels), max(max(numels), MIN_CHUNK_NUMEL))
        workspace = self._workspace(params[0].device, dtype, cap)
        start = 0
        while start < len(params):
            stop, total = start, 0
            while stop < len(params) and total + numels[stop] <= cap:
                total += numels[stop]
                stop += 1
            scratch, offset = [], 0
            for p in params[start:stop]:
                scratch.append(_view_like(workspace, offset, p))
                offset += p.numel()
            _kernels.multi_tensor_step(
                flags,
                scalars,
                *(lst[start:stop] for lst in bucket),
                scratch=scratch,
            )
            start = stop

    def _workspace(self, device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
        """A flat buffer reused across steps for the foreach temporaries (not part of the state)."""
        key = (device, dtype)
        buffer = self._workspaces.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._workspaces[key] = buffer
        return buffer

    # -- state_dict ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict, plus the diagnostics' sample and shadow state when they are on."""
        out = super().state_dict()
        if self._diagnostics is not None:
            out["diagnostics"] = self._diagnostics.state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's loader, plus: keep fp32 state for half/bf16 params (torch would cast it to the
        param dtype and lose the bits), fill group keys an older or foreign state_dict lacks, accept
        integer step counters (as the reference codes save them), and restore the diagnostics."""
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        id_to_param = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
                strict=False,
            )
        )
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "diagnostics"})
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for param_id, saved in saved_state.items():
            param = id_to_param.get(param_id)
            if param is None:
                continue
            state = self.state[param]
            if "step" in state:
                state["step"] = torch.tensor(float(state["step"]))
            if param.dtype in LOW_PRECISION:
                for key, value in saved.items():
                    if isinstance(value, Tensor) and key != "step" and value.is_floating_point():
                        state[key] = value.to(device=param.device, dtype=torch.float32, copy=True)
        if self._diagnostics is not None:
            self._diagnostics.load_state_dict(state_dict.get("diagnostics"))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_workspaces", {})
        self.__dict__.setdefault("_diagnostics", None)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", False)


def _view_like(workspace: Tensor, offset: int, like: Tensor) -> Tensor:
    """A view of ``workspace[offset:offset + like.numel()]`` with the layout of ``like``."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return workspace.as_strided(like.shape, like.stride(), offset)
    return workspace[offset : offset + like.numel()].view(like.shape)


def resolve_eps_placement(
    placement: str | None, eps: float, eps_root: float, eps_state: float
) -> tuple[float, float, float]:
    """Map the ablation's ``eps_placement`` onto (eps, eps_root, eps_state).

    outside: ``sqrt(v_hat) + eps`` (Adam).  inside: ``eps`` accumulated into v in place every step,
    exactly EAdam's form, equal to ``sqrt(v_hat + eps / (1 - b2))``.  None: use the three as given.
    """
    if placement is None:
        return eps, eps_root, eps_state
    check_choice("eps_placement", placement, ("outside", "inside"))
    if eps_root != 0.0 or eps_state != 0.0:
        raise ValueError(
            "optimizer.eps_placement sets eps_root/eps_state itself; leave optimizer.eps_root and "
            f"optimizer.eps_state at 0 (got {eps_root!r}, {eps_state!r})"
        )
    return (eps, 0.0, 0.0) if placement == "outside" else (0.0, 0.0, eps)


class AdamFamily(AdamFamilyOptimizer):
    """The Adam family with every factor named apart -- the ablation entry.

    Args:
        second_moment: ``grad_sq`` (Adam: v tracks g^2) or ``belief`` (AdaBelief: v tracks (g - m)^2).
        eps: added outside the sqrt, after bias correction: ``sqrt(v_hat) + eps``.
        eps_root: added inside the sqrt, to the bias-corrected second moment: ``sqrt(v_hat + eps_root)``.
        eps_state: added to the second-moment state in place every step (what the AdaBelief and EAdam
            codes do); after bias correction it equals ``eps_root = eps_state / (1 - b2)`` at every step.
        eps_placement: ``outside`` | ``inside`` | None. Shorthand for the 2x2 ablation: put ``eps``
            either outside (eps) or inside (eps_state, EAdam's form), never both.
        weight_decay_mode: ``none`` | ``coupled`` (L2 added to g) | ``decoupled`` (p *= 1 - lr wd, AdamW)
            | ``decoupled_fixed`` (p *= 1 - wd).
        amsgrad: normalise by the running max of v.  ``amsgrad_eps``: ``state`` adds eps_state to v
            before the max (adabelief 0.2.x), ``max`` adds it to the max (adabelief 0.0.5/0.1.0).
        rectify: False/``none`` | True/``radam`` | ``adabelief`` | ``adabelief_v005`` (per-version formulas).
        degenerated_to_sgd: with rectify, take an SGD-with-momentum step while rho_t is too small.
        eps_before_correction: add eps to sqrt(v) before dividing by sqrt(1 - b2^t) (old torch Adam form).
        foreach: multi-tensor kernels (default); False for the single-tensor reference loop.
        fused: one compiled kernel per step via torch.compile (falls back to foreach with a warning).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        second_moment: str = "grad_sq",
        eps: float = 1e-8,
        eps_root: float = 0.0,
        eps_state: float = 0.0,
        weight_decay: float = 0.0,
        weight_decay_mode: str = "coupled",
        amsgrad: bool = False,
        rectify: bool | str = False,
        degenerated_to_sgd: bool = True,
        eps_placement: str | None = None,
        *,
        amsgrad_eps: str = "state",
        eps_before_correction: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        check_nonnegative("lr", lr)
        betas = check_betas(betas)
        for name, value in (("eps", eps), ("eps_root", eps_root), ("eps_state", eps_state)):
            check_nonnegative(name, value)
        check_nonnegative("weight_decay", weight_decay)
        check_choice("second_moment", second_moment, SECOND_MOMENTS)
        check_choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
        check_choice("amsgrad_eps", amsgrad_eps, AMSGRAD_EPS)
        for key, flag in (("amsgrad", amsgrad), ("degenerated_to_sgd", degenerated_to_sgd),
                          ("eps_before_correction", eps_before_correction)):
            check_bool(key, flag)
        rectify = _rectify_mode(rectify)
        resolve_eps_placement(eps_placement, eps, eps_root, eps_state)  # validate early
        defaults = dict(
            lr=lr,
            betas=betas,
            second_moment=second_moment,
            eps=eps,
            eps_root=eps_root,
            eps_state=eps_state,
            eps_placement=eps_placement,
            weight_decay=weight_decay,
            weight_decay_mode=weight_decay_mode,
            amsgrad=amsgrad,
            amsgrad_eps=amsgrad_eps,
            rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
            eps_before_correction=eps_before_correction,
        )
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _core(self, group: dict[str, Any]) -> tuple[CoreSpec, CoreHyper]:
        eps, eps_root, eps_state = resolve_eps_placement(
            group["eps_placement"], group["eps"], group["eps_root"], group["eps_state"]
        )
        spec = CoreSpec(
            second_moment=group["second_moment"],
            weight_decay_mode=group["weight_decay_mode"],
            amsgrad=group["amsgrad"],
            amsgrad_eps=group["amsgrad_eps"],
            rectify=_rectify_mode(group["rectify"]),
            degenerated_to_sgd=group["degenerated_to_sgd"],
            eps_before_correction=group["eps_before_correction"],
        )
        beta1, beta2 = group["betas"]
        hyper = CoreHyper(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            eps_root=eps_root,
            eps_state=eps_state,
            weight_decay=group["weight_decay"],
        )
        return spec, hyper


def _rectify_mode(rectify: bool | str) -> str:
    if rectify is True:
        return "radam"
    if rectify is False or rectify is None:
        return "none"
    check_choice("rectify", rectify, RECTIFY_MODES)
    return str(rectify)
