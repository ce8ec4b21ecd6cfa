"""AdaBelief (Zhuang et al., NeurIPS 2020) as released in adabelief-pytorch 0.0.5, 0.1.0 and 0.2.x.

All releases share the reference core (eps twice: in place in the state, and outside the sqrt)::

    m = b1 m + (1 - b1) g
    s = b2 s + (1 - b2) (g - m)^2 + eps
    p -= lr / (1 - b1^t) * m / (sqrt(s) / sqrt(1 - b2^t) + eps)

and differ in what ``version`` selects here:

=========  ============================================================================================
version    behaviour
=========  ============================================================================================
0.0.5      defaults eps 1e-8, weight_decouple False, rectify False. amsgrad: max first, then eps is
           added to the max in place. rectify: rho_t > 4, rectified step keeps the Adam denominator,
           fallback is ``p -= lr * m`` (no bias correction).
0.1.0      defaults eps 1e-16, weight_decouple True, rectify True, degenerated_to_sgd True. Coupled
           weight decay is applied to the gradient *after* the moments are updated, so it has no effect
           (a known bug; reproduced). amsgrad as 0.0.5. rectify: RAdam's formulas (rho_t >= 5, eps added
           to sqrt(s) before bias correction, fallback SGD on the bias-corrected m); the rectified
           step recomputes the denominator from s, ignoring the amsgrad max.
0.2.0      as 0.1.0, with coupled weight decay applied before the moments again, and amsgrad adding
           eps to s in place *before* taking the max.
0.2.1      0.2.0 with fp16 params stepped in fp32. Here every version steps half/bf16 params in fp32
           with fp32 state, so 0.2.0 and 0.2.1 behave identically.
=========  ============================================================================================

Not reproduced on purpose: the references write coupled weight decay into ``p.grad`` in place (we
never modify gradients), print banners, and keep a per-group RAdam cache (``buffer``) in the state.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from ._common import check_betas, check_bool, check_choice, check_nonnegative
from ._kernels import CoreHyper, CoreSpec
from .adam_family import AdamFamilyOptimizer

VERSIONS = ("0.0.5", "0.1.0", "0.2.0", "0.2.1")


class _VersionDefault:
    """Sentinel for arguments whose default depends on ``version``."""

    def __repr__(self) -> str:
        return "<version default>"

    def __reduce__(self) -> str:
        return "VERSION_DEFAULT"


VERSION_DEFAULT: Any = _VersionDefault()

_OLD_DEFAULTS = dict(eps=1e-8, weight_decouple=False, rectify=False, degenerated_to_sgd=True)
_NEW_DEFAULTS = dict(eps=1e-16, weight_decouple=True, rectify=True, degenerated_to_sgd=True)
VERSION_DEFAULTS: dict[str, dict[str, Any]] = {
    "0.0.5": _OLD_DEFAULTS,
    "0.1.0": _NEW_DEFAULTS,
    "0.2.0": _NEW_DEFAULTS,
    "0.2.1": _NEW_DEFAULTS,
}


def resolve_version_defaults(version: str, **given: Any) -> dict[str, Any]:
    """Fill ``eps``, ``weight_decouple``, ``rectify``, ``degenerated_to_sgd`` left unset (sentinel or
    None) with the defaults of that adabelief-pytorch release."""
    check_choice("version", version, VERSIONS)
    defaults = VERSION_DEFAULTS[version]
    return {
        key: defaults[key] if given.get(key, VERSION_DEFAULT) in (VERSION_DEFAULT, None) else given[key]
        for key in defaults
    }


class AdaBelief(AdamFamilyOptimizer):
    """Drop-in for ``adabelief_pytorch.AdaBelief`` (the release chosen by ``version``).

    Arguments left at their default take that release's default (see the module docstring), so
    ``AdaBelief(params, version="0.0.5")`` is adabelief-pytorch 0.0.5 out of the box.
    ``print_change_log`` is accepted for compatibility and ignored (nothing is printed).
    """

    exp_avg_key = "exp_avg"
    exp_avg_sq_key = "exp_avg_var"
    max_exp_avg_sq_key = "max_exp_avg_var"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = VERSION_DEFAULT,
        weight_decay: float = 0,
        amsgrad: bool = False,
        weight_decouple: bool = VERSION_DEFAULT,
        fixed_decay: bool = False,
        rectify: bool = VERSION_DEFAULT,
        degenerated_to_sgd: bool = VERSION_DEFAULT,
        print_change_log: bool = True,
        version: str = "0.2.0",
        *,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        resolved = resolve_version_defaults(
            version,
            eps=eps,
            weight_decouple=weight_decouple,
            rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
        )
        check_nonnegative("lr", lr)
        betas = check_betas(betas)
        check_nonnegative("eps", resolved["eps"])
        for key in ("weight_decouple", "rectify", "degenerated_to_sgd"):
            check_bool(key, resolved[key])
        check_bool("amsgrad", amsgrad)
        check_bool("fixed_decay", fixed_decay)
        check_nonnegative("weight_decay", weight_decay)
        if version == "0.1.0" and not resolved["weight_decouple"] and weight_decay != 0:
            warnings.warn(
                "AdaBelief version 0.1.0 adds coupled weight decay to the gradient after the update is "
                "computed, so weight_decay has no effect (reproducing that release's bug)",
                UserWarning,
                stacklevel=2,
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=resolved["eps"],
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            weight_decouple=resolved["weight_decouple"],
            fixed_decay=fixed_decay,
            rectify=resolved["rectify"],
            degenerated_to_sgd=resolved["degenerated_to_sgd"],
            version=version,
        )
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _core(self, group: dict[str, Any]) -> tuple[CoreSpec, CoreHyper]:
        version = group["version"]
        old = version in ("0.0.5", "0.1.0")
        if group["weight_decouple"]:
            mode = "decoupled_fixed" if group["fixed_decay"] else "decoupled"
        else:
            mode = "none" if version == "0.1.0" else "coupled"
        rectify = "none"
        if group["rectify"]:
            rectify = "adabelief_v005" if version == "0.0.5" else "adabelief"
        spec = CoreSpec(
            second_moment="belief",
            weight_decay_mode=mode,
            amsgrad=group["amsgrad"],
            amsgrad_eps="max" if old else "state",
            rectify=rectify,
            degenerated_to_sgd=group["degenerated_to_sgd"],
        )
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        hyper = CoreHyper(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            eps_state=eps,
            weight_decay=group["weight_decay"],
        )
        return spec, hyper
