"""What a drop-in user hit (issue 15, items 6-10): complex params, pickling AdaBound, a compiled
training step, numpy / tensor lr, silently accepted bad arguments, describe() of EAdam amsgrad."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch

from optrepro.optim import MSVAG, AdaBelief, AdaBound, AdamFamily, EAdam, Yogi, describe


def complex_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex128, generator=gen)),
            torch.nn.Parameter(torch.randn(4, dtype=torch.complex128, generator=gen))]


def complex_grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for step in range(steps):
        for p, g in zip(params, complex_grads(params, step), strict=True):
            p.grad = g
        opt.step()


# ---------------------------------------------------------------------------------------------
# 6. complex parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_complex_params_match_torch_adam(foreach: bool, amsgrad: bool) -> None:
    ours, ref = complex_params(), complex_params()
    run(AdamFamily(ours, lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad, foreach=foreach), ours, 30)
    run(torch.optim.Adam(ref, lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad, foreach=foreach), ref, 30)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_purely_imaginary_gradient_leaves_the_real_part_alone() -> None:
    for cls in (AdamFamily, AdaBelief, EAdam):
        p = torch.nn.Parameter(torch.tensor([1.0 + 2.0j, -3.0 + 0.5j]))
        opt = cls([p], lr=1e-2)
        for _ in range(5):
            p.grad = torch.tensor([1.0j, -2.0j])
            opt.step()
        assert torch.equal(p.detach().real, torch.tensor([1.0, -3.0])), cls.__name__
        state = opt.state[p]
        v_key = "exp_avg_var" if cls is AdaBelief else "exp_avg_sq"
        assert (torch.view_as_real(state[v_key]) >= 0).all(), cls.__name__  # a second moment is never negative


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: AdaBelief(ps, lr=1e-2),
        lambda ps: AdaBelief(ps, lr=1e-2, fused=True),
        lambda ps: AdaBound(ps, lr=1e-2),
        lambda ps: Yogi(ps, lr=1e-2),
        lambda ps: MSVAG(ps, lr=1e-2),
    ],
    ids=["adabelief", "adabelief_fused", "adabound", "yogi", "msvag"],
)
def test_complex_is_the_real_view(make: Any) -> None:
    """A complex param steps exactly as its real view would as a real param (torch.optim's convention)."""
    ours = complex_params()
    real = [torch.nn.Parameter(torch.view_as_real(p.detach().clone())) for p in complex_params()]
    opt_c, opt_r = make(ours), make(real)
    for step in range(20):
        grads = complex_grads(ours, step)
        for p, q, g in zip(ours, real, grads, strict=True):
            p.grad, q.grad = g, torch.view_as_real(g).clone()
        opt_c.step()
        opt_r.step()
    for p, q in zip(ours, real, strict=True):
        torch.testing.assert_close(torch.view_as_real(p.detach()), q.detach(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# 7. deepcopy / pickle of AdaBound
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x))], ids=["deepcopy", "pickle"])
def test_adabound_survives_copy_and_steps(clone: Any) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdaBound([p], lr=1e-3, final_lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    twin = clone({"p": p, "opt": opt})
    for o, q in ((opt, p), (twin["opt"], twin["p"])):
        for group in o.param_groups:
            group["lr"] = 1e-4  # a schedule moved lr: final_lr follows lr / initial lr
        q.grad = torch.tensor([0.5, 0.5, -1.0])
        o.step()
    assert twin["opt"].base_lrs == [1e-3]
    torch.testing.assert_close(twin["p"].detach(), p.detach(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 8. a torch.compile'd step compiles once
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: AdaBelief(ps, lr=1e-2),  # rectified (0.2.0 default): leaves its SGD warm-up at step 5
        lambda ps: AdamFamily(ps, lr=1e-2, amsgrad=True, eps_placement="inside", weight_decay=1e-2),
    ],
    ids=["adabelief_rectified", "ablation_amsgrad"],
)
def test_compiled_step_compiles_once_and_matches_eager(make: Any) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [make(net.parameters()) for net in nets]
    x = torch.randn(8, 4)

    @torch.compile(backend="eager")
    def compiled_step() -> None:
        opts[1].step()

    for _ in range(12):
        for net in nets:
            net.zero_grad()
            net(x).pow(2).mean().backward()
        opts[0].step()
        compiled_step()
    assert counters["stats"]["unique_graphs"] == 1
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 9. numpy / tensor lr; arguments that were accepted silently
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [np.float32(1e-3), np.float64(1e-3), torch.tensor(1e-3), torch.tensor([1e-3])],
                         ids=["np32", "np64", "tensor", "tensor1"])
@pytest.mark.parametrize("cls", [AdamFamily, AdaBelief, EAdam, AdaBound, Yogi, MSVAG])
def test_numpy_and_tensor_lr_are_accepted(cls: type, lr: Any) -> None:
    ps, qs = [torch.nn.Parameter(torch.ones(3))], [torch.nn.Parameter(torch.ones(3))]
    opt_a, opt_b = cls(ps, lr=lr), cls(qs, lr=float(lr))
    for opt, params in ((opt_a, ps), (opt_b, qs)):
        for step in range(5):
            params[0].grad = torch.tensor([1.0, -2.0, 0.5]) * (step + 1)
            opt.step()
    assert torch.equal(ps[0], qs[0])


def test_bad_lr_and_flags_are_rejected_naming_the_argument() -> None:
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match=r"optimizer\.lr as a tensor must hold one real number"):
        AdamFamily(p, lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match=r"optimizer\.lr must be >= 0, got -0.001"):
        AdaBelief(p, lr=np.float64(-1e-3))
    with pytest.raises(ValueError, match=r"optimizer\.lr must be a number, got '1e-3'"):
        EAdam(p, lr="1e-3")
    with pytest.raises(ValueError, match=r"optimizer\.initial_accumulator must be >= 0, got -1.0"):
        Yogi(p, initial_accumulator=-1)
    with pytest.raises(ValueError, match=r"optimizer\.rectify must be true or false, got 'yes'"):
        AdaBelief(p, rectify="yes")
    with pytest.raises(ValueError, match=r"optimizer\.amsgrad must be true or false"):
        EAdam(p, amsgrad="false")
    Yogi(p, initial_accumulator=0.0)  # zero is a valid start (v = 0)


# ---------------------------------------------------------------------------------------------
# 10. describe() reads the resolved core
# ---------------------------------------------------------------------------------------------


def test_describe_eadam_amsgrad_is_outside() -> None:
    plain = describe({"name": "eadam", "eps": 1e-8})
    ams = describe({"name": "eadam", "eps": 1e-8, "amsgrad": True})
    assert plain["eps_placement"] == "inside" and plain["effective_floor"] == pytest.approx(math.sqrt(1e-8 / 1e-3))
    assert ams["eps_placement"] == "outside" and ams["effective_floor"] == pytest.approx(1e-8)
    belief = describe({"name": "adabelief", "version": "0.0.5", "betas": [0.9, 0.99]})
    assert belief["eps_placement"] == "both"
    assert belief["effective_floor"] == pytest.approx(math.sqrt(1e-8 / 0.01) + 1e-8)
