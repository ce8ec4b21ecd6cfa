"""The Adam-family update as three interchangeable kernels: single-tensor, multi-tensor, fused.

One step of the core, for a parameter p with gradient g, first moment m, second moment v
(and the running max u when amsgrad is on), with c = sqrt(1 - b2^t):

    p *= decay                                   # decoupled weight decay (AdamW or fixed)
    g  = g + wd * p                              # coupled L2 (never written back into p.grad)
    m  = lerp(m, g, 1 - b1)                      # = b1 m + (1 - b1) g
    r  = g - m  (belief)  |  g  (grad_sq)
    v  = b2 v + (1 - b2) r^2
    v += eps_state                               # the in-place accumulation of the reference codes
    u  = max(u, v)                               # amsgrad (eps_state may go on u instead: old AdaBelief)
    d  = sqrt(v_or_u + eps_root * (1 - b2^t)) + eps_add
    p += alpha * m / d                           # alpha = -lr * rect * c / (1 - b1^t)

which is the textbook m_hat / (sqrt(v_hat + eps_root) + eps) with the bias corrections folded into
two host scalars (eps_add = eps * c, or eps when eps is added before the correction as in RAdam and
EAdam's amsgrad branch). Folding saves one full pass over the state per step. A rectified step that
falls back to SGD runs ``p += alpha * m`` instead; a skipped one only updates the moments.

The three kernels run the same sequence of tensor ops (single-tensor and multi-tensor agree
bitwise); the fused one is that sequence compiled by torch.compile into one loop per tensor.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._common import radam_rho

WEIGHT_DECAY_MODES = ("none", "coupled", "decoupled", "decoupled_fixed")
SECOND_MOMENTS = ("grad_sq", "belief")
RECTIFY_MODES = ("none", "radam", "adabelief", "adabelief_v005")
AMSGRAD_EPS = ("state", "max")


@dataclass(frozen=True)
class CoreSpec:
    """The discrete factors of one param group (which ops exist), resolved from a preset."""

    #: grad_sq: v tracks g^2; belief: v tracks (g - m)^2
    second_moment: str = "grad_sq"
    #: none | coupled (L2 in g) | decoupled (p *= 1 - lr wd) | decoupled_fixed (p *= 1 - wd)
    weight_decay_mode: str = "coupled"
    amsgrad: bool = False
    #: state: v += eps_state, then u = max(u, v) | max: u = max(u, v), then u += eps_state
    amsgrad_eps: str = "state"
    #: none | radam | adabelief (the rectified step reads v, not u) | adabelief_v005
    rectify: str = "none"
    #: with rectify: take an SGD-with-momentum step while the variance is intractable
    degenerated_to_sgd: bool = True
    #: eps added to sqrt(v) before dividing by sqrt(1 - b2^t) (old torch Adam, RAdam)
    eps_before_correction: bool = False


@dataclass(frozen=True)
class CoreHyper:
    """The continuous hyperparameters of one param group."""

    lr: float
    beta1: float
    beta2: float
    eps: float = 0.0  # outside the sqrt
    eps_root: float = 0.0  # inside the sqrt, on the bias-corrected second moment
    eps_state: float = 0.0  # added to the second-moment state in place every step
    weight_decay: float = 0.0


@dataclass(frozen=True)
class KernelFlags:
    """Which ops run in one step. Compile-time constants of the fused kernel (a change recompiles)."""

    belief: bool
    decoupled: bool
    coupled: bool
    eps_state: bool
    amsgrad: bool
    eps_on_max: bool
    denom_from_max: bool
    root: bool
    eps_add: bool
    action: str  # adam | sgd | skip


@dataclass(frozen=True)
class StepScalars:
    """Host-side numbers of one step (one tensor for the fused kernel, so lr changes never recompile)."""

    decay: float
    weight_decay: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps_state: float
    root_add: float
    eps_add: float
    alpha: float


SCALAR_FIELDS = tuple(f.name for f in dataclasses.fields(StepScalars))


def make_plan(spec: CoreSpec, hp: CoreHyper, step: int) -> tuple[KernelFlags, StepScalars]:
    """Resolve one step (1-based ``step``) of a param group into kernel flags and host scalars."""
    values = plan_values(spec, hp, step)
    use_denom, from_max = values.pop("use_denom"), values.pop("from_max")
    action = "adam" if use_denom else ("sgd" if spec.degenerated_to_sgd else "skip")
    scalars = StepScalars(**values)
    flags = dataclasses.replace(
        kernel_flags(spec, hp), action=action, denom_from_max=bool(from_max)
    )
    return flags, scalars


def kernel_flags(spec: CoreSpec, hp: CoreHyper) -> KernelFlags:
    """The flags that do not depend on the step (``action="any"``: decided by runtime scalars)."""
    mode, wd = spec.weight_decay_mode, hp.weight_decay
    return KernelFlags(
        belief=spec.second_moment == "belief",
        decoupled=mode in ("decoupled", "decoupled_fixed") and wd != 0.0,
        coupled=mode == "coupled" and wd != 0.0,
        eps_state=hp.eps_state != 0.0,
        amsgrad=spec.amsgrad,
        eps_on_max=spec.amsgrad and spec.amsgrad_eps == "max",
        denom_from_max=False,
        root=hp.eps_root != 0.0,
        eps_add=hp.eps != 0.0,
        action="any",
    )


def plan_values(spec: CoreSpec, hp: CoreHyper, step: int | Tensor) -> dict[str, Any]:
    """The step's scalars (StepScalars' fields, plus ``use_denom`` and ``from_max`` as 0/1).

    One definition for both callers: host floats for an int ``step`` and float lr (the eager
    kernels), 0-dim float64 tensors for a tensor ``step`` or lr (a step traced by torch.compile,
    where a Python number derived from the step counter would be a guard, i.e. a recompile per step).
    Branches are selections (``_where``), so both forms take the same path through this code.
    """
    traced = isinstance(step, Tensor) or isinstance(hp.lr, Tensor)
    if traced:
        device = step.device if isinstance(step, Tensor) else hp.lr.device  # type: ignore[union-attr]

        def num(x: Any) -> Any:
            return torch.as_tensor(x, dtype=torch.float64, device=device)

        def sqrt(x: Any) -> Any:
            return torch.sqrt(torch.clamp_min(num(x), 0.0))

        def where(cond: Any, a: Any, b: Any) -> Any:
            return torch.where(num(cond) > 0, num(a), num(b))

        def div(a: Any, b: Any) -> Any:
            return num(a) / num(b)

        t = num(step)
    else:

        def num(x: Any) -> Any:
            return float(x)

        def sqrt(x: Any) -> Any:
            return math.sqrt(max(x, 0.0))

        def where(cond: Any, a: Any, b: Any) -> Any:
            return a if cond else b

        def div(a: Any, b: Any) -> Any:
            return a / b if b != 0 else math.inf

        t = step
    lr, b1, b2 = num(hp.lr), hp.beta1, hp.beta2
    bias_correction1 = 1.0 - b1**t
    bias_correction2 = 1.0 - b2**t
    sqrt_bc2 = sqrt(bias_correction2)

    use_denom, rect, eps_raw, from_max = 1.0, 1.0, float(spec.eps_before_correction), float(spec.amsgrad)
    sgd_alpha: Any = 0.0
    if spec.rectify != "none":
        rho_inf, rho_t = radam_rho(b2, t)
        if spec.rectify == "adabelief_v005":
            # adabelief-pytorch 0.0.5: threshold 4, rectified Adam step keeps the usual denominator,
            # and the fallback is plain SGD with momentum (no bias correction of m).
            use_denom = rho_t > 4.0
            ratio = div(div(div((rho_t - 4.0) * (rho_t - 2.0) * rho_inf, rho_inf - 4.0), rho_inf - 2.0), rho_t)
            rect = where(use_denom, sqrt(ratio), 1.0)
            sgd_alpha = -lr
        else:
            # RAdam (Liu et al.) as forked into adabelief-pytorch >= 0.1.0: threshold 5, eps added to
            # sqrt(v) before the bias correction, fallback SGD on the bias-corrected m.
            use_denom = rho_t >= 5.0
            ratio = div(div(div(rho_t - 4.0, rho_inf - 4.0) * (rho_t - 2.0), rho_t) * rho_inf, rho_inf - 2.0)
            rect = where(use_denom, sqrt(ratio), 1.0)
            eps_raw = where(use_denom, 1.0, eps_raw)
            if spec.rectify == "adabelief":
                from_max = where(use_denom, 0.0, from_max)  # the reference recomputes the denominator from v
            sgd_alpha = -lr / bias_correction1
        if not spec.degenerated_to_sgd:
            sgd_alpha = 0.0
    alpha = where(use_denom, -lr * rect * sqrt_bc2 / bias_correction1, sgd_alpha)
    eps_add = where(eps_raw, hp.eps, hp.eps * sqrt_bc2)

    mode, wd = spec.weight_decay_mode, hp.weight_decay
    decoupled = mode in ("decoupled", "decoupled_fixed") and wd != 0.0
    decay = (1.0 - wd if mode == "decoupled_fixed" else 1.0 - lr * wd) if decoupled else 1.0
    coupled = mode == "coupled" and wd != 0.0
    return {
        "decay": decay,
        "weight_decay": wd if coupled else 0.0,
        "one_minus_beta1": 1.0 - b1,
        "beta2": b2,
        "one_minus_beta2": 1.0 - b2,
        "eps_state": hp.eps_state,
        "root_add": hp.eps_root * bias_correction2,
        "eps_add": eps_add,
        "alpha": alpha,
        "use_denom": where(use_denom, 1.0, 0.0),
        "from_max": from_max,
    }


# ----------------------------------------------------------------------------------------------
# single tensor: the readable reference
# ----------------------------------------------------------------------------------------------


def single_tensor_step(
    f: KernelFlags,
    s: StepScalars,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
) -> None:
    """Update one tensor at a time. Half/bf16 params are stepped on an fp32 copy (state is fp32)."""
    for i, param in enumerate(params):
        m, v = exp_avgs[i], exp_avg_sqs[i]
        u = max_exp_avg_sqs[i] if f.amsgrad else None
        p = param if param.dtype == m.dtype else param.to(m.dtype)
        g = grads[i] if grads[i].dtype == m.dtype else grads[i].to(m.dtype)

        if f.decoupled:
            p.mul_(s.decay)
        if f.coupled:
            g = g.add(p, alpha=s.weight_decay)
        m.lerp_(g, s.one_minus_beta1)
        r = g.sub(m) if f.belief else g
        v.mul_(s.beta2).addcmul_(r, r, value=s.one_minus_beta2)
        if f.eps_state and not f.eps_on_max:
            v.add_(s.eps_state)
        if u is not None:
            torch.maximum(u, v, out=u)
            if f.eps_state and f.eps_on_max:
                u.add_(s.eps_state)

        if f.action == "adam":
            src = u if f.denom_from_max else v
            denom = src.add(s.root_add) if f.root else src
            denom = denom.sqrt()
            if f.eps_add:
                denom.add_(s.eps_add)
            p.addcdiv_(m, denom, value=s.alpha)
        elif f.action == "sgd":
            p.add_(m, alpha=s.alpha)

        if p is not param:
            param.copy_(p)


# ----------------------------------------------------------------------------------------------
# multi tensor: torch._foreach_* over a chunk, temporaries in a preallocated workspace
# ----------------------------------------------------------------------------------------------


def multi_tensor_step(
    f: KernelFlags,
    s: StepScalars,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    scratch: list[Tensor],
) -> None:
    """Same ops as ``single_tensor_step`` on lists of same-dtype tensors.

    ``scratch`` holds one tensor per param (views into a reused workspace) and receives every
    temporary, so a step allocates nothing: freshly allocated buffers are the slowest part of a
    foreach step on CPU (page faults), and they would cost a full copy of the model in memory.
    """
    if f.decoupled:
        torch._foreach_mul_(params, s.decay)
    g = grads
    if f.coupled:
        torch._foreach_copy_(scratch, grads)
        torch._foreach_add_(scratch, params, alpha=s.weight_decay)
        g = scratch
    torch._foreach_lerp_(exp_avgs, g, s.one_minus_beta1)
    r = g
    if f.belief:
        if g is not scratch:
            torch._foreach_copy_(scratch, g)
        torch._foreach_sub_(scratch, exp_avgs)
        r = scratch
    torch._foreach_mul_(exp_avg_sqs, s.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, r, r, value=s.one_minus_beta2)
    if f.eps_state and not f.eps_on_max:
        torch._foreach_add_(exp_avg_sqs, s.eps_state)
    if f.amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        if f.eps_state and f.eps_on_max:
            torch._foreach_add_(max_exp_avg_sqs, s.eps_state)

    if f.action == "adam":
        torch._foreach_copy_(scratch, max_exp_avg_sqs if f.denom_from_max else exp_avg_sqs)
        if f.root:
            torch._foreach_add_(scratch, s.root_add)
        torch._foreach_sqrt_(scratch)
        if f.eps_add:
            torch._foreach_add_(scratch, s.eps_add)
        torch._foreach_addcdiv_(params, exp_avgs, scratch, value=s.alpha)
    elif f.action == "sgd":
        torch._foreach_add_(params, exp_avgs, alpha=s.alpha)


# ----------------------------------------------------------------------------------------------
# fused: the same math compiled (torch.compile / inductor) into one kernel per step
# ----------------------------------------------------------------------------------------------


def _fused_impl(
    f: KernelFlags,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    scalars: Tensor,
) -> None:
    for i in range(len(params)):
        u = max_exp_avg_sqs[i] if f.amsgrad else None
        traced_step(f, params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], u, scalars)


def traced_step(
    f: KernelFlags, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, u: Tensor | None, scalars: Tensor
) -> None:
    """One tensor's update with every step-dependent number in ``scalars`` (SCALAR_FIELDS, then
    use_denom and from_max): the body of the fused kernel, and what a step traced by the caller's
    torch.compile runs. The action (adam / sgd / skip) and the denominator's source are runtime
    scalars, not flags, so nothing recompiles when a rectified optimizer leaves its SGD warm-up."""
    decay, wd, w1, beta2, w2, eps_state, root_add, eps_add, alpha, use_denom, from_max = scalars.unbind(0)
    p = param.to(m.dtype)
    g = grad.to(m.dtype)
    if f.decoupled:
        p = p * decay
    if f.coupled:
        g = g + wd * p
    m_new = torch.lerp(m, g, w1.to(m.dtype))
    r = g - m_new if f.belief else g
    v_new = v * beta2 + w2 * r * r
    if f.eps_state and not f.eps_on_max:
        v_new = v_new + eps_state
    src = v_new
    if u is not None:
        u_new = torch.maximum(u, v_new)
        if f.eps_state and f.eps_on_max:
            u_new = u_new + eps_state
        u.copy_(u_new)
        src = torch.where(from_max > 0, u_new, v_new)
    denom = torch.where(use_denom > 0, torch.sqrt(src + root_add) + eps_add, 1.0)
    param.copy_(p + alpha * m_new / denom)
    m.copy_(m_new)
    v.copy_(v_new)


_compiled: Callable[..., None] | None = None
_compile_error: str | None = None


def fused_available() -> bool:
    """False once compilation has failed in this process (every fused optimizer then uses foreach)."""
    return _compile_error is None


def fused_step(
    f: KernelFlags,
    s: StepScalars,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
) -> bool:
    """Run the compiled kernel; return False (after one warning) if torch.compile cannot work here."""
    global _compiled, _compile_error
    if _compile_error is not None:
        return False
    if _compiled is None:
        _compiled = torch.compile(_fused_impl, fullgraph=True)
    values = [getattr(s, name) for name in SCALAR_FIELDS]
    values += [float(f.action == "adam"), float(f.denom_from_max)]  # action "skip" has alpha == 0
    scalars = torch.tensor(values, dtype=torch.float64, device=params[0].device)
    flags = dataclasses.replace(f, action="any", denom_from_max=False)
    try:
        # Every optimizer (and every param-list shape) is a guard variant of the same code object;
        # lift dynamo's per-function recompile cap so a GAN's two optimizers or a test suite's many
        # configs keep the compiled path instead of silently dropping to eager.
        with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=512):
            _compiled(flags, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars)
    except Exception as exc:  # compilation failed: no compiler, unsupported backend, ...
        _compile_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        warnings.warn(
            f"fused=True needs torch.compile, which failed here ({_compile_error}); "
            "falling back to the multi-tensor (foreach) implementation",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True
