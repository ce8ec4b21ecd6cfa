"""One batched Adam-family step for a population: K member optimizers stepped as one.

Each member keeps its own :class:`~optrepro.optim.adam_family.AdamFamilyOptimizer` (its preset,
param groups, diagnostics and ``state_dict`` are those of a run trained alone), but its parameters
and state tensors become views into stacked ``[K, *shape]`` tensors, so one kernel call updates all
members. Every factor the core names becomes a per-member coefficient of that call:

* the continuous ones (lr, betas, eps outside, eps_root, eps_state, weight decay, the rectification
  and bias-correction terms) are the member's own host scalars from ``_kernels.plan_values``;
* the discrete 2x2 of the ablation is a coefficient too: ``r = g - c m`` with c = 1 for the belief
  second moment and c = 0 for g^2, and eps placement is simply which eps term is nonzero;
* the three actions of a rectified step (adam, SGD fallback, skip) are a per-member denominator of 1
  and an ``alpha`` of 0; the SGD fallback's ``p + alpha m`` is rounded once by ``add(alpha=)`` (a fused
  multiply-add) and no batched op with a per-member alpha rounds so, so a member in its SGD warm-up
  takes that update on its own slice (a few steps of a rectified run).

A neutral coefficient is an exact identity in IEEE arithmetic (``p * 1``, ``g + 0 * p``, ``v + 0``),
and an op whose coefficient is neutral for every member is not run, so a member's update is the
same sequence of roundings as :func:`optrepro.optim._kernels.single_tensor_step` (tests check this
bitwise in float64). Only amsgrad (and where its eps goes) changes which tensors exist, so it must
agree within a population. A frozen member (diverged, failed or finished) keeps its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _kernels
from ._common import state_dtype
from .adam_family import AdamFamilyOptimizer

#: the per-member scalars of one step, in the order of the stacked coefficient tensor
FIELDS = (*_kernels.SCALAR_FIELDS, "use_denom", "from_max", "belief")
ALPHA, USE_DENOM = FIELDS.index("alpha"), FIELDS.index("use_denom")
#: the value of each field that makes its op the identity (None: the op always runs)
NEUTRAL = {"decay": 1.0, "weight_decay": 0.0, "eps_state": 0.0, "root_add": 0.0, "eps_add": 0.0,
           "use_denom": 1.0, "from_max": 0.0, "belief": 0.0}


def structure_key(optimizer: AdamFamilyOptimizer) -> tuple[Any, ...]:
    """What must agree between members of one population (everything else is a coefficient)."""
    keys = []
    for group in optimizer.param_groups:
        spec = optimizer._core(group)[0]
        keys.append((spec.amsgrad, spec.amsgrad_eps if spec.amsgrad else None,
                     tuple((tuple(p.shape), p.dtype) for p in group["params"])))
    return tuple(keys)


@dataclass
class _Slot:
    """One parameter position of one param group, stacked over members."""

    group: int
    position: int
    param: Tensor  # [K, *shape], a leaf that receives the population's gradient
    exp_avg: Tensor
    exp_avg_sq: Tensor
    max_exp_avg_sq: Tensor | None
    steps: Tensor  # [K] float32: member k's ``state["step"]`` is ``steps[k]``
    eps_on_max: bool = False  # amsgrad_eps == "max": eps_state goes on the running max


class PopulationAdam:
    """Stack K structurally equal Adam-family optimizers and step them together."""

    def __init__(self, optimizers: list[AdamFamilyOptimizer]) -> None:
        if not optimizers:
            raise ValueError("a population needs at least one member")
        for k, opt in enumerate(optimizers):
            if not isinstance(opt, AdamFamilyOptimizer):
                raise TypeError(f"member {k}: {type(opt).__name__} is not an Adam-family optimizer")
        first = structure_key(optimizers[0])
        for k, opt in enumerate(optimizers):
            if structure_key(opt) != first:
                raise ValueError(f"member {k} differs in amsgrad or parameter shapes from member 0")
        self.members = optimizers
        self.size = len(optimizers)
        self.slots: list[_Slot] = []
        for g, group in enumerate(optimizers[0].param_groups):
            for position in range(len(group["params"])):
                self.slots.append(self._stack(g, position))
        self._plans: dict[tuple[Any, ...], tuple[float, ...]] = {}

    def _stack(self, g: int, position: int) -> _Slot:
        """Copy every member's parameter and state into stacked tensors, then make the members' own
        tensors views of them (so their modules, state_dicts and diagnostics see the population's values)."""
        opts = self.members
        params = [opt.param_groups[g]["params"][position] for opt in opts]
        spec = opts[0]._core(opts[0].param_groups[g])[0]
        amsgrad = spec.amsgrad
        def keys(opt: AdamFamilyOptimizer) -> tuple[str, str, str]:  # presets name their state differently
            return opt.exp_avg_key, opt.exp_avg_sq_key, opt.max_exp_avg_sq_key

        def stacked(which: int) -> Tensor:
            parts = []
            for opt, p in zip(opts, params, strict=True):
                value = opt.state.get(p, {}).get(keys(opt)[which])
                parts.append(value.detach() if value is not None else torch.zeros_like(p, dtype=state_dtype(p)))
            return torch.stack(parts)

        stacked_param = torch.stack([p.detach() for p in params]).requires_grad_(True)
        steps = torch.tensor([float(opt.state.get(p, {}).get("step", 0.0))
                              for opt, p in zip(opts, params, strict=True)])
        slot = _Slot(g, position, stacked_param, stacked(0), stacked(1), stacked(2) if amsgrad else None, steps,
                     eps_on_max=amsgrad and spec.amsgrad_eps == "max")
        for k, (opt, p) in enumerate(zip(opts, params, strict=True)):
            m_key, v_key, u_key = keys(opt)
            p.data = stacked_param.detach()[k]
            state = opt.state[p]
            state["step"] = slot.steps[k]
            state[m_key] = slot.exp_avg[k]
            state[v_key] = slot.exp_avg_sq[k]
            if slot.max_exp_avg_sq is not None:
                state[u_key] = slot.max_exp_avg_sq[k]
        return slot

    @property
    def parameters(self) -> list[Tensor]:
        """The stacked leaves, in member-optimizer order: what the batched forward differentiates."""
        return [slot.param for slot in self.slots]

    def grad_norms(self) -> Tensor:
        """[K] the 2-norm of each member's whole gradient (as ``torch.nn.utils.get_total_norm``)."""
        squares = [slot.param.grad.flatten(1).double().pow(2).sum(1) for slot in self.slots]
        return torch.stack(squares).sum(0).sqrt().to(self.slots[0].exp_avg.dtype)

    def clip_member_grads(self, max_norm: float) -> Tensor:
        """Scale each member's whole gradient to 2-norm at most ``max_norm`` (``clip_grad_norm_``'s rule,
        ``max_norm / (norm + 1e-6)`` capped at 1, member by member); returns the norms before clipping."""
        norms = self.grad_norms()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for slot in self.slots:
            grad = slot.param.grad
            grad.mul_(scale.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))))
        return norms

    def zero_grad(self) -> None:
        for slot in self.slots:
            slot.param.grad = None

    def _scalars(self, g: int, steps: list[int], dtype: torch.dtype,
                 device: torch.device) -> tuple[Tensor, frozenset[str], list[tuple[int, float]]]:
        """[len(FIELDS), K] per-member coefficients of param group ``g`` at the members' next steps, the
        names of the fields that are not neutral for some member (the ops that must run), and the
        (member, alpha) of the members taking an SGD-fallback step (their batched alpha is 0)."""
        rows = []
        for opt, step in zip(self.members, steps, strict=True):
            spec, hyper = opt._core(opt.param_groups[g])
            key = (spec, *(float(getattr(hyper, f)) for f in ("lr", "beta1", "beta2", "eps", "eps_root",
                                                                "eps_state", "weight_decay")), step)
            plan = self._plans.get(key)
            if plan is None:
                host = type(hyper)(*key[1:-1])
                values = _kernels.plan_values(spec, host, step)
                if not spec.degenerated_to_sgd and not values["use_denom"]:
                    values["alpha"] = 0.0  # the skip action
                values["belief"] = float(spec.second_moment == "belief")
                plan = tuple(float(values[f]) for f in FIELDS)
                if len(self._plans) > 100_000:
                    self._plans.clear()
                self._plans[key] = plan
            rows.append(plan)
        sgd = [(k, row[ALPHA]) for k, row in enumerate(rows) if row[USE_DENOM] == 0.0 and row[ALPHA] != 0.0]
        for k, _alpha in sgd:
            rows[k] = tuple(0.0 if i == ALPHA else value for i, value in enumerate(rows[k]))
        used = frozenset(name for i, name in enumerate(FIELDS)
                         if name in NEUTRAL and any(row[i] != NEUTRAL[name] for row in rows))
        if "belief" in used and all(row[FIELDS.index("belief")] == 1.0 for row in rows):
            used |= {"all_belief"}
        return torch.tensor(rows, dtype=torch.float64).T.to(device=device, dtype=dtype), used, sgd

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        """One step of every member with ``active[k]`` true; the others keep every value they had.

        Members must have gradients in every slot (the batched backward writes them all).
        """
        active = active.to(torch.bool).cpu()
        frozen = (~active).nonzero().flatten()
        steps_now = {slot.group: slot.steps for slot in self.slots}
        scalars = {g: self._scalars(g, [int(s) + 1 for s in steps.tolist()], self.slots[0].exp_avg.dtype,
                                    self.slots[0].param.device)
                   for g, steps in steps_now.items()}
        for slot in self.slots:
            kept = None
            if frozen.numel():
                kept = [t[frozen].clone() for t in self._tensors(slot)]
            coefficients, used, sgd = scalars[slot.group]
            _batched_update(slot, coefficients.to(slot.exp_avg.dtype), used)
            for k, alpha in sgd:  # as single_tensor_step's SGD action: p.add_(m, alpha=alpha)
                slot.param.detach()[k].add_(slot.exp_avg[k], alpha=alpha)
            if kept is not None:
                for t, old in zip(self._tensors(slot), kept, strict=True):
                    t[frozen] = old
            slot.steps.add_(active.to(slot.steps.dtype))

    @staticmethod
    def _tensors(slot: _Slot) -> list[Tensor]:
        tensors = [slot.param.detach(), slot.exp_avg, slot.exp_avg_sq]
        return tensors + ([slot.max_exp_avg_sq] if slot.max_exp_avg_sq is not None else [])

    def before_member_steps(self, active: Tensor) -> None:
        """Diagnostics: let each active member's probe read what it needs before the update (coupled L2)."""
        for g, _k, positions, params, hyper, probe in self._probe_calls(active):
            probe.before_step(g, positions, params, hyper)

    def after_member_steps(self, active: Tensor) -> None:
        """Diagnostics: update each active member's shadows from its gradient and new first moment."""
        for g, k, positions, _params, hyper, probe in self._probe_calls(active):
            slots = [s for s in self.slots if s.group == g]
            grads = [s.param.grad[k] for s in slots]
            exp_avgs = [s.exp_avg[k] for s in slots]
            probe.after_step(g, positions, grads, exp_avgs, hyper)

    def _probe_calls(self, active: Tensor) -> list[tuple[int, int, list[int], list[Tensor], Any, Any]]:
        calls = []
        for k, opt in enumerate(self.members):
            probe = opt.diagnostics
            if probe is None or not bool(active[k]):
                continue
            for g, group in enumerate(opt.param_groups):
                positions = list(range(len(group["params"])))
                calls.append((g, k, positions, list(group["params"]), opt._core(group)[1], probe))
        return calls


def _batched_update(slot: _Slot, c: Tensor, used: frozenset[str]) -> None:
    """The core's update on stacked tensors, each coefficient a [K, 1, ...] tensor (see module doc)."""
    p, g = slot.param.detach(), slot.param.grad
    if g is None:
        raise RuntimeError("population step without gradients (run the batched backward first)")
    m, v, u = slot.exp_avg, slot.exp_avg_sq, slot.max_exp_avg_sq
    shape = (c.shape[1],) + (1,) * (p.dim() - 1)
    coef = {name: c[i].view(shape) for i, name in enumerate(FIELDS)}

    if "decay" in used:
        p.mul_(coef["decay"])
    if "weight_decay" in used:
        g = g.addcmul(p, coef["weight_decay"])
    m.lerp_(g, coef["one_minus_beta1"])
    r = g  # grad_sq; belief: g - c m (exactly g - m when every member is belief)
    if "belief" in used:
        r = g.sub(m) if "all_belief" in used else g.addcmul(m, -coef["belief"])
    v.mul_(coef["beta2"]).addcmul_(r.mul(coef["one_minus_beta2"]), r)
    eps_on_max = slot.eps_on_max
    if "eps_state" in used and not eps_on_max:
        v.add_(coef["eps_state"])
    if u is not None:
        torch.maximum(u, v, out=u)
        if "eps_state" in used and eps_on_max:
            u.add_(coef["eps_state"])
    src = v if u is None else torch.where(coef["from_max"] > 0, u, v)
    denom = src.add(coef["root_add"]) if "root_add" in used else src
    denom = denom.sqrt()
    if "eps_add" in used:
        denom.add_(coef["eps_add"])
    if "use_denom" in used:
        denom = torch.where(coef["use_denom"] > 0, denom, 1.0)
    p.addcdiv_(m.mul(coef["alpha"]), denom)  # = p + alpha * m / denom, rounded as addcdiv(value=alpha) rounds
