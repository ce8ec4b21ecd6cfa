"""Where an Adam-family step's size comes from: the eps floor or the second moment (belief vs g^2).

On a fixed random sample of coordinates (``sample`` in all, over every param group, uniform over
coordinates, seeded; part of the optimizer's state_dict) two *shadow* second moments are kept beside
the optimizer's own state, both free of eps and updated every step from the gradient ``g`` the kernel
used (coupled L2 included) and the optimizer's first moment ``m`` after its update::

    v = b2 v + (1 - b2) g^2            s = b2 s + (1 - b2) (g - m)^2

with the same bias correction as the optimizer, ``v_hat = v / (1 - b2^t)``, ``s_hat = s / (1 - b2^t)``.
They are computed beside the kernel (gathers at the sampled indices), so any kernel -- single-tensor,
foreach, fused, or a step traced by torch.compile -- gives the same numbers, and the update is never
touched. ``q_hat`` is the eps-free second moment that drives the step: ``s_hat`` for a belief preset,
``v_hat`` for g^2, and with amsgrad the running max of that shadow (when the denominator reads the max).

The effective eps floor ``F`` is the bias-corrected denominator at ``q_hat = 0``, i.e. everything eps
contributes to it. With ``bc2 = 1 - b2^t``::

    F = sqrt(E + eps_root) + eps_out
    E = eps_state / (1 - b2)                 (in-place accumulation: sum of eps_state b2^k over t steps
                                              is eps_state (1 - b2^t) / (1 - b2); divided by bc2)
    eps_out = eps                            (outside the sqrt, after bias correction)
            = eps / sqrt(bc2)                (added before the correction: EAdam amsgrad, RAdam steps)

With amsgrad the state's eps part is not that closed form (the max and the in-place additions do not
commute, and adabelief <= 0.1.0 adds eps to the max itself), so there ``E = (u - q_max) / bc2``: the
optimizer's max minus the eps-free shadow max, measured per coordinate (clamped at 0).

Metrics (``metrics()``; train.py adds them to the eval row):

- ``opt/floor_share``: share of sampled coordinates with ``F > sqrt(q_hat)`` -- the floor dominates
  and the step is SGD with momentum at lr / F.
- ``opt/step_ratio_q10|q50|q90``: quantiles of ``(sqrt(v_hat) + F) / (sqrt(s_hat) + F)``: how many
  times larger a belief step is than a g^2 step at the same state and the same floor.
- ``opt/case3_share``: share with step ratio >= 2 (the paper's case 3: belief at least doubles it).
- ``opt/eff_lr_q50``: median of the per-coordinate step size actually applied,
  ``|alpha| / d`` with the kernel's ``alpha = -lr rect sqrt(bc2) / (1 - b1^t)`` and denominator
  ``d = sqrt(src + eps_root bc2) + eps_add`` from the optimizer's real state (``|alpha|`` for an SGD
  fallback step of a rectified optimizer, 0 for a skipped one).
- per kind of weight, when the task names them (its ``param_kinds``): each of the above as
  ``opt/<metric>/<kind>`` (``TaskProbe``), e.g. ``opt/floor_share/embedding``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import _kernels

if TYPE_CHECKING:
    from ._kernels import CoreHyper
    from .adam_family import AdamFamilyOptimizer

DEFAULT_SAMPLE = 65_536
CASE3_RATIO = 2.0
KEYS = (
    "opt/floor_share",
    "opt/step_ratio_q10",
    "opt/step_ratio_q50",
    "opt/step_ratio_q90",
    "opt/case3_share",
    "opt/eff_lr_q50",
)


@dataclass
class _Entry:
    """The sampled coordinates of one parameter (flat indices into its real view) and their shadows."""

    index: Tensor  # int64, sorted, on the param's device
    unravel: tuple[Tensor, ...]  # the same indices per dimension (for non-contiguous tensors)
    v: Tensor  # shadow EMA of g^2 (eps-free)
    s: Tensor  # shadow EMA of (g - m)^2 (eps-free)
    q_max: Tensor  # running max of the driving shadow (v or s), for amsgrad
    g: Tensor | None = None  # the gathered gradient of the step in progress


def sample_indices(numel: int, k: int, generator: torch.Generator) -> Tensor:
    """``min(k, numel)`` distinct indices of range(numel), uniform, sorted; O(k) memory for numel >> k."""
    if k >= numel:
        return torch.arange(numel)
    if numel <= 4 * k:
        return torch.randperm(numel, generator=generator)[:k].sort().values
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:  # with replacement, deduplicated: a uniform random subset of its size
        draw = torch.randint(numel, (2 * (k - chosen.numel()),), generator=generator)
        chosen = torch.cat([chosen, draw]).unique()
    keep = torch.randperm(chosen.numel(), generator=generator)[:k]
    return chosen[keep].sort().values


def _real_view(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _gather(t: Tensor, entry: _Entry) -> Tensor:
    if t.is_contiguous():
        return t.view(-1).index_select(0, entry.index)
    return t[entry.unravel]


class Diagnostics:
    """Shadow statistics of one Adam-family optimizer (see the module docstring)."""

    def __init__(self, optimizer: AdamFamilyOptimizer, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample <= 0:
            raise ValueError(f"diagnostics.sample must be a positive integer, got {sample!r}")
        self.optimizer = optimizer
        self.sample = sample
        params = [p for group in optimizer.param_groups for p in group["params"]]
        numels = [_real_view(p).numel() for p in params]
        generator = torch.Generator().manual_seed(int(seed))
        flat = sample_indices(sum(numels), sample, generator)
        offsets = torch.tensor([0, *numels]).cumsum(0)
        #: per param group, per position in the group: the entry, or None when nothing was sampled
        self.entries: list[list[_Entry | None]] = []
        flat_id = 0
        for group in optimizer.param_groups:
            row: list[_Entry | None] = []
            for p in group["params"]:
                lo, hi = int(offsets[flat_id]), int(offsets[flat_id + 1])
                local = flat[(flat >= lo) & (flat < hi)] - lo
                row.append(self._entry(p, local) if local.numel() else None)
                flat_id += 1
            self.entries.append(row)

    @staticmethod
    def _entry(p: Tensor, index: Tensor) -> _Entry:
        real = _real_view(p)
        dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
        index = index.to(real.device)
        zeros = torch.zeros(index.numel(), dtype=dtype, device=real.device)
        unravel = torch.unravel_index(index, real.shape) if real.dim() else (index,)
        return _Entry(index, tuple(unravel), zeros.clone(), zeros.clone(), zeros.clone())

    # -- the per-step hook (called by AdamFamilyOptimizer.step) --------------------------------------

    def before_step(self, group_index: int, positions: list[int], params: list[Tensor], hyper: CoreHyper) -> None:
        """With coupled L2 the kernel's gradient is g + wd p with p before the step: keep that p."""
        wd = self._coupled_wd(group_index, hyper)
        if wd == 0.0:
            return
        row = self.entries[group_index]
        for j, position in enumerate(positions):
            entry = row[position]
            if entry is not None:
                entry.g = _gather(params[j], entry).to(entry.v.dtype)

    def _coupled_wd(self, group_index: int, hyper: CoreHyper) -> float:
        spec = self.optimizer._core(self.optimizer.param_groups[group_index])[0]
        return float(hyper.weight_decay) if spec.weight_decay_mode == "coupled" else 0.0

    def after_step(
        self, group_index: int, positions: list[int], grads: list[Tensor], exp_avgs: list[Tensor], hyper: CoreHyper
    ) -> None:
        """Update the shadows from the gradient and the first moment the kernel just wrote (the
        gradient is never modified by a step, so it is read here too)."""
        group = self.optimizer.param_groups[group_index]
        spec = self.optimizer._core(group)[0]
        wd = self._coupled_wd(group_index, hyper)
        row = self.entries[group_index]
        entries, gs, ms = [], [], []
        for j, position in enumerate(positions):
            entry = row[position]
            if entry is None:
                continue
            entries.append(entry)
            gs.append(grads[j])
            ms.append(exp_avgs[j])
        if not entries:
            return
        _update_shadows(entries, gs, ms, float(hyper.beta2), wd, spec.amsgrad, spec.second_moment == "belief")
        for e in entries:
            e.g = None

    # -- the numbers -------------------------------------------------------------------------------

    def coordinates(self) -> dict[str, Tensor]:
        """Per sampled coordinate (float64, CPU): ``floor``, ``root_q`` (sqrt(q_hat)), ``step_ratio``,
        ``eff_lr``. Coordinates of params that have not stepped yet are left out."""
        return _concat([values for _, values in self._per_param()])

    def coordinates_by_kind(self, kind_of: Mapping[int, str]) -> dict[str, dict[str, Tensor]]:
        """``coordinates`` split by the kind of their parameter (``kind_of``: id(param) -> kind, e.g. from
        :func:`optrepro.models.param_kinds.parameter_kinds`); params without a kind are left out."""
        grouped: dict[str, list[dict[str, Tensor]]] = {}
        for p, values in self._per_param():
            kind = kind_of.get(id(p))
            if kind is not None:
                grouped.setdefault(kind, []).append(values)
        return {kind: _concat(parts) for kind, parts in grouped.items()}

    def _per_param(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        opt = self.optimizer
        for group, row in zip(opt.param_groups, self.entries, strict=True):
            spec, hyper = opt._core(group)
            hyper = _host(hyper)
            for p, entry in zip(group["params"], row, strict=True):
                state = opt.state.get(p, {})
                if entry is None or "step" not in state:
                    continue
                step = int(float(state["step"]))
                flags, scalars = _kernels.make_plan(spec, hyper, step)
                bc2 = 1.0 - hyper.beta2**step
                v_hat = entry.v.double() / bc2
                s_hat = entry.s.double() / bc2
                q_hat = s_hat if spec.second_moment == "belief" else v_hat
                src_key = opt.max_exp_avg_sq_key if flags.denom_from_max else opt.exp_avg_sq_key
                src = _gather(_real_view(state[src_key]), entry).double()
                if flags.denom_from_max:
                    q_hat = entry.q_max.double() / bc2
                    eps_in = (src / bc2 - q_hat).clamp_min(0.0)
                else:
                    eps_in = torch.full_like(q_hat, hyper.eps_state / (1.0 - hyper.beta2))
                floor = torch.sqrt(eps_in + hyper.eps_root) + scalars.eps_add / math.sqrt(bc2)
                ratio = (v_hat.sqrt() + floor) / (s_hat.sqrt() + floor)
                if flags.action == "adam":
                    eff = abs(scalars.alpha) / (torch.sqrt(src + scalars.root_add) + scalars.eps_add)
                else:
                    eff = torch.full_like(q_hat, abs(scalars.alpha))
                yield p, {"floor": floor.cpu(), "root_q": q_hat.sqrt().cpu(), "step_ratio": ratio.cpu(),
                          "eff_lr": eff.cpu()}

    def metrics(self) -> dict[str, float]:
        """The ``opt/*`` numbers now (empty before the first step)."""
        return summarize([self.coordinates()])

    # -- checkpoint ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Sample and shadows, keyed like torch's state_dict (params numbered across groups)."""
        out: dict[int, dict[str, Tensor]] = {}
        flat_id = 0
        for row in self.entries:
            for entry in row:
                if entry is not None:
                    out[flat_id] = {"index": entry.index, "v": entry.v, "s": entry.s, "q_max": entry.q_max}
                flat_id += 1
        return {"sample": self.sample, "entries": out}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore sample and shadows exactly (indices stay int64 whatever the param dtype)."""
        if state is None:
            raise ValueError("diagnostics are on but the optimizer state_dict has none (saved without them)")
        saved = state["entries"]
        flat_id = 0
        for g_idx, group in enumerate(self.optimizer.param_groups):
            for position, p in enumerate(group["params"]):
                item = saved.get(flat_id)
                if item is None:
                    self.entries[g_idx][position] = None
                else:
                    entry = self._entry(p, item["index"].to(torch.int64))
                    for key in ("v", "s", "q_max"):
                        getattr(entry, key).copy_(item[key])
                    self.entries[g_idx][position] = entry
                flat_id += 1
        self.sample = int(state["sample"])


def effective_floor(hyper: CoreHyper) -> float:
    """The floor F late in training (b2^t -> 0): ``sqrt(eps_root + eps_state / (1 - b2)) + eps``."""
    return math.sqrt(hyper.eps_root + hyper.eps_state / (1.0 - hyper.beta2)) + float(hyper.eps)


def _update_shadows(
    entries: list[_Entry], grads: list[Tensor], exp_avgs: list[Tensor], beta2: float, wd: float, amsgrad: bool,
    belief: bool
) -> None:
    """v, s (and the driving max) of the sampled coordinates: two gathers per sampled parameter, then
    a few foreach ops for all of them (the per-parameter gathers are the probe's whole cost)."""
    gs = [_gather(g, e).to(e.v.dtype) for g, e in zip(grads, entries, strict=True)]
    ms = [_gather(m, e).to(e.v.dtype) for m, e in zip(exp_avgs, entries, strict=True)]
    if wd != 0.0:
        gs = torch._foreach_add(gs, [e.g for e in entries], alpha=wd)  # e.g: p before the step
    vs, ss = [e.v for e in entries], [e.s for e in entries]
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, gs, gs, value=1.0 - beta2)
    rs = torch._foreach_sub(gs, ms)
    torch._foreach_mul_(ss, beta2)
    torch._foreach_addcmul_(ss, rs, rs, value=1.0 - beta2)
    if amsgrad:
        torch._foreach_maximum_([e.q_max for e in entries], ss if belief else vs)


COORDINATE_KEYS = ("floor", "root_q", "step_ratio", "eff_lr")


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.cat([p[key] for p in parts]) if parts else torch.empty(0, dtype=torch.float64)
            for key in COORDINATE_KEYS}


def _host(hyper: CoreHyper) -> CoreHyper:
    import dataclasses

    return dataclasses.replace(hyper, lr=float(hyper.lr))


def summarize(coordinate_sets: list[dict[str, Tensor]]) -> dict[str, float]:
    """Pool the coordinates of one or more optimizers (a GAN's two) into the ``opt/*`` metrics."""
    keys = ("floor", "root_q", "step_ratio", "eff_lr")
    pooled = {key: torch.cat([torch.empty(0, dtype=torch.float64)] + [c[key] for c in coordinate_sets]) for key in keys}
    if pooled["floor"].numel() == 0:
        return {}
    ratio = pooled["step_ratio"]
    finite = ratio[torch.isfinite(ratio)]  # 0/0 only where the floor is 0 and both moments are 0
    q10, q50, q90 = (
        torch.quantile(finite, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        if finite.numel()
        else [math.nan] * 3
    )
    return {
        "opt/floor_share": float((pooled["floor"] > pooled["root_q"]).double().mean()),
        "opt/step_ratio_q10": q10,
        "opt/step_ratio_q50": q50,
        "opt/step_ratio_q90": q90,
        "opt/case3_share": float((finite >= CASE3_RATIO).double().mean()) if finite.numel() else math.nan,
        "opt/eff_lr_q50": float(pooled["eff_lr"].median()),
    }


# ---------------------------------------------------------------------------------------------
# the training loop's side: turn them on for a task's optimizers, read one row
# ---------------------------------------------------------------------------------------------


class TaskProbe:
    """The diagnostics of every Adam-family optimizer a task owns, pooled into one metrics row.

    With ``kinds`` (id(param) -> kind; a task's ``param_kinds`` attribute, from
    :func:`optrepro.models.param_kinds.parameter_kinds`) every ``opt/<metric>`` is also reported per kind
    of weight as ``opt/<metric>/<kind>`` (embedding, attention, mlp, head, norm_bias): the floor's share
    is expected to differ most between them (sparse embedding gradients, tiny norm/bias gradients)."""

    def __init__(self, probes: list[Diagnostics], kinds: Mapping[int, str] | None = None) -> None:
        self.probes = probes
        self.kinds = dict(kinds or {})

    def row(self) -> dict[str, float]:
        """The ``opt/*`` keys for the eval row; empty (no keys, not zeros) outside the family."""
        if not self.probes:
            return {}
        out = summarize([p.coordinates() for p in self.probes])
        if self.kinds:
            split = [p.coordinates_by_kind(self.kinds) for p in self.probes]
            for kind in sorted({k for by_kind in split for k in by_kind}):
                per_kind = summarize([by_kind[kind] for by_kind in split if kind in by_kind])
                out.update({f"{key}/{kind}": value for key, value in per_kind.items()})
        return out


def attach(task: Any, settings: Any, seed: int) -> TaskProbe:
    """Turn diagnostics on for the task's Adam-family optimizers when ``settings.enabled`` (the
    top-level ``diagnostics`` config block). Call before loading a checkpoint: the checkpointed
    optimizer state then restores the sample and the shadows exactly."""
    import hashlib

    from optrepro.errors import UserError, require_positive_int

    from .adam_family import AdamFamilyOptimizer

    settings = settings or {}
    enabled = settings.get("enabled", False)
    if not isinstance(enabled, bool):
        raise UserError(f"diagnostics.enabled must be true or false, got {enabled!r}")
    if not enabled:
        return TaskProbe([])
    sample = require_positive_int("diagnostics.sample", settings.get("sample", DEFAULT_SAMPLE))
    probes = []
    for name, value in sorted(vars(task).items()):
        if isinstance(value, AdamFamilyOptimizer):
            digest = hashlib.sha256(f"diagnostics/{seed}/{name}".encode()).digest()
            probes.append(value.enable_diagnostics(sample, int.from_bytes(digest[:8], "little") >> 1))
    return TaskProbe(probes, getattr(task, "param_kinds", None))
