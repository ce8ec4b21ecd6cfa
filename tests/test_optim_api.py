"""The optimizers as the rest of the project uses them: configs, registry, describe, state_dict
round trips, low-precision params, error messages."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from optrepro.optim import (
    MSVAG,
    REGISTRY,
    AdaBelief,
    AdaBound,
    AdamFamily,
    EAdam,
    Fromage,
    Yogi,
    build_optimizer,
    describe,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
EXPECTED_CONFIGS = {
    "adam", "adamw", "sgd", "radam", "rmsprop", "eadam", "adabelief", "adabelief_v005", "adabelief_v010",
    "adabound", "yogi", "msvag", "fromage",
    "ablation_adam", "ablation_eadam", "ablation_belief_outside", "ablation_belief_inside",
}  # fmt: skip
CORNERS = ["ablation_adam", "ablation_eadam", "ablation_belief_outside", "ablation_belief_inside"]


def load(name: str, *overrides: str) -> Any:
    """A config as Hydra would hand it over: the yaml merged with command-line style overrides."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    cfg.pop("defaults")  # the recipe-key marker (adds no keys when Hydra composes)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def tiny_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g).to(next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


# ----------------------------------------------------------------------------------------------
# configs, registry, build_optimizer, describe
# ----------------------------------------------------------------------------------------------


def test_registry_maps_names_to_classes() -> None:
    import optrepro.optim as optim

    assert set(REGISTRY) == {
        "adam", "adamw", "sgd", "radam", "rmsprop", "eadam", "adabelief", "adabound", "yogi", "msvag",
        "fromage", "ablation",
    }  # fmt: skip
    for name in ("Adam", "AdamW", "SGD", "RAdam", "RMSprop"):  # torch's own classes, re-exported
        assert getattr(optim, name) is getattr(torch.optim, name) is REGISTRY[name.lower()]
    assert REGISTRY["ablation"] is AdamFamily
    assert all(issubclass(cls, torch.optim.Optimizer) for cls in REGISTRY.values())


def test_every_expected_config_exists() -> None:
    assert set(CONFIGS) >= EXPECTED_CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_build_from_each_yaml_and_step(name: str) -> None:
    cfg = load(name)
    assert cfg.name in REGISTRY
    assert cfg.config_name == name  # the yaml records its own name: nothing adds it later
    assert "lr" in cfg
    model = tiny_model()
    opt = build_optimizer(model.parameters(), cfg)
    assert isinstance(opt, REGISTRY[cfg.name])
    assert opt.defaults["lr"] == cfg.lr
    before = flat(model)
    train(model, opt, 3)
    assert torch.isfinite(flat(model)).all() and not torch.equal(flat(model), before)
    info = describe(cfg)
    assert set(info) == {"family", "second_moment", "eps_placement", "eps", "effective_floor"}


ADAPTIVE = [n for n in CONFIGS if n not in ("sgd", "fromage")]


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_configs_expose_eps_betas_weight_decay_and_eps_override_works(name: str) -> None:
    cfg = load(name)
    for key in ("eps", "weight_decay"):
        assert key in cfg, f"{name}.yaml must expose {key} at the top level"
    if name != "rmsprop":  # RMSprop has alpha, not betas
        assert "betas" in cfg
    opt = build_optimizer(tiny_model().parameters(), load(name, "eps=1e-16"))
    assert all(group["eps"] == 1e-16 for group in opt.param_groups)
    if "betas" in cfg:
        assert isinstance(opt.param_groups[0]["betas"], tuple)
    assert describe(load(name, "eps=1e-16"))["eps"] == 1e-16 or describe(cfg)["eps"] is None


def test_build_ignores_bookkeeping_keys() -> None:
    cfg = OmegaConf.merge(load("adabelief"), {"config_name": "adabelief", "_comment": "x", "_target_note": 1})
    opt = build_optimizer(tiny_model().parameters(), cfg)
    assert isinstance(opt, AdaBelief)
    build_optimizer(tiny_model().parameters(), {"name": "adam", "lr": 1e-3, "betas": [0.5, 0.9]})


def test_build_errors_name_the_key() -> None:
    params = list(tiny_model().parameters())
    with pytest.raises(ValueError, match=r"optimizer\.name must be one of .*adabelief.*got 'adamm'"):
        build_optimizer(params, {"name": "adamm"})
    with pytest.raises(ValueError, match=r"optimizer\.epss is not an argument of AdaBelief"):
        build_optimizer(params, {"name": "adabelief", "epss": 1e-8})
    with pytest.raises(ValueError, match=r"optimizer\.eps must be >= 0, got -1e-08"):
        build_optimizer(params, load("adam", "eps=-1e-8"))  # a torch.optim class: checked by the builder
    with pytest.raises(ValueError, match=r"optimizer\.betas\[1\] must be in \[0, 1\), got 1.0"):
        build_optimizer(params, load("radam", "betas=[0.9,1.0]"))
    with pytest.raises(ValueError, match=r"optimizer\.lr must be >= 0, got -0.1"):
        build_optimizer(params, load("sgd", "lr=-0.1"))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AdaBelief, {"lr": -1.0}, r"optimizer\.lr must be >= 0, got -1.0"),
        (AdaBelief, {"eps": -1e-8}, r"optimizer\.eps must be >= 0, got -1e-08"),
        (AdaBelief, {"betas": (0.9, 1.0)}, r"optimizer\.betas\[1\] must be in \[0, 1\), got 1.0"),
        (AdaBelief, {"betas": (-0.1, 0.999)}, r"optimizer\.betas\[0\] must be in \[0, 1\), got -0.1"),
        (AdaBelief, {"version": "0.3.0"}, r"optimizer\.version must be one of"),
        (EAdam, {"eps": -1e-8}, r"optimizer\.eps must be >= 0, got -1e-08"),
        (EAdam, {"weight_decay": -1.0}, r"optimizer\.weight_decay must be >= 0"),
        (AdamFamily, {"eps_root": -1.0}, r"optimizer\.eps_root must be >= 0"),
        (AdamFamily, {"eps_state": float("nan")}, r"optimizer\.eps_state must be >= 0, got nan"),
        (AdamFamily, {"second_moment": "g2"}, r"optimizer\.second_moment must be one of"),
        (AdamFamily, {"weight_decay_mode": "l2"}, r"optimizer\.weight_decay_mode must be one of"),
        (AdamFamily, {"rectify": "yes"}, r"optimizer\.rectify must be one of"),
        (AdamFamily, {"eps_placement": "both"}, r"optimizer\.eps_placement must be one of"),
        (AdamFamily, {"eps_placement": "inside", "eps_state": 1e-8}, r"leave optimizer\.eps_root"),
        (AdamFamily, {"foreach": True, "fused": True}, r"cannot both be true"),
        (AdaBound, {"lr": 0.0}, r"optimizer\.lr must be > 0"),
        (AdaBound, {"gamma": 1.0}, r"optimizer\.gamma must be in \[0, 1\)"),
        (Yogi, {"eps": -1.0}, r"optimizer\.eps must be >= 0"),
        (MSVAG, {"variant": "tf"}, r"optimizer\.variant must be one of"),
        (Fromage, {"lr": -1.0}, r"optimizer\.lr must be >= 0"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(
    cls: type, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(tiny_model().parameters(), **kwargs)


def test_describe_contract() -> None:
    assert describe(load("adam")) == {
        "family": "adam_family", "second_moment": "grad_sq", "eps_placement": "outside",
        "eps": 1e-8, "effective_floor": 1e-8,
    }  # fmt: skip
    for name in ("adamw", "radam"):
        info = describe(load(name))
        assert (info["second_moment"], info["eps_placement"]) == ("grad_sq", "outside")
    eadam = describe(load("eadam"))
    assert (eadam["second_moment"], eadam["eps_placement"]) == ("grad_sq", "inside")
    assert eadam["effective_floor"] == pytest.approx(math.sqrt(1e-8 / 1e-3))
    for name, eps in (("adabelief", 1e-16), ("adabelief_v010", 1e-16), ("adabelief_v005", 1e-8)):
        info = describe(load(name))
        assert (info["family"], info["second_moment"], info["eps_placement"]) == (
            "adam_family",
            "belief",
            "both",
        )
        assert info["eps"] == eps and info["effective_floor"] == pytest.approx(math.sqrt(eps / 1e-3) + eps)
    assert describe({"name": "adabelief", "version": "0.0.5"})["eps"] == 1e-8  # version default
    assert describe(load("adabelief", "eps=1e-12", "betas=[0.9,0.99]"))["effective_floor"] == pytest.approx(1e-5)
    assert describe(load("sgd"))["family"] == "sgd"
    assert describe(load("fromage"))["family"] == "other"
    assert describe({"name": "ablation", "eps": 1e-4, "eps_root": 1e-6, "eps_placement": None}) == {
        "family": "adam_family", "second_moment": "grad_sq", "eps_placement": "both",
        "eps": 1e-6, "effective_floor": pytest.approx(1e-3 + 1e-4),  # everything eps adds: inside + outside
    }  # fmt: skip


def test_ablation_corners_differ_in_one_factor_at_a_time() -> None:
    cfgs = {name: OmegaConf.to_container(load(name)) for name in CORNERS}
    factors = {name: (cfg["second_moment"], cfg["eps_placement"]) for name, cfg in cfgs.items()}
    assert factors == {
        "ablation_adam": ("grad_sq", "outside"),
        "ablation_eadam": ("grad_sq", "inside"),
        "ablation_belief_outside": ("belief", "outside"),
        "ablation_belief_inside": ("belief", "inside"),
    }
    for a in CORNERS:
        for b in CORNERS:
            differing = {k for k in cfgs[a] if cfgs[a][k] != cfgs[b][k]} - {"config_name"}
            assert len(differing) == sum(x != y for x, y in zip(factors[a], factors[b], strict=True))
            assert differing <= {"second_moment", "eps_placement"}
        assert cfgs[a]["name"] == "ablation" and cfgs[a]["weight_decay_mode"] == "coupled"
    inside = describe(cfgs["ablation_eadam"])
    assert inside["effective_floor"] == pytest.approx(math.sqrt(1e-8 / (1 - 0.999)))


def test_ablation_eadam_config_is_eadam_bitwise() -> None:
    runs = []
    for cfg in (load("ablation_eadam", "eps=1e-6"), load("eadam", "eps=1e-6")):
        model = tiny_model(torch.float64)
        train(model, build_optimizer(model.parameters(), cfg), 50)
        runs.append(flat(model))
    assert torch.equal(*runs)


# ----------------------------------------------------------------------------------------------
# state_dict, dtypes, sparse
# ----------------------------------------------------------------------------------------------

RESUMABLE = {
    "adabelief_amsgrad": lambda ps: AdaBelief(ps, amsgrad=True, weight_decay=1e-2),
    "adabelief_v005": lambda ps: AdaBelief(ps, version="0.0.5", rectify=True),
    "eadam": lambda ps: EAdam(ps, weight_decay=1e-3),
    "ablation_belief_inside": lambda ps: AdamFamily(ps, second_moment="belief", eps_placement="inside"),
    "adabound": lambda ps: AdaBound(ps),
    "yogi": lambda ps: Yogi(ps),
    "msvag": lambda ps: MSVAG(ps, lr=0.05),
    "fromage": lambda ps: Fromage(ps, p_bound=2.0),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_state_dict_round_trip_continues_the_same_trajectory(name: str) -> None:
    make = RESUMABLE[name]
    model = tiny_model()
    opt = make(model.parameters())
    train(model, opt, 40)

    reference = tiny_model()
    reference.load_state_dict(model.state_dict())
    ref_opt = make(reference.parameters())
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # in memory (state_dict holds references)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = make(resumed.parameters())
    resumed_opt.load_state_dict(saved["opt"])

    train(model, opt, 40, start=40)
    train(resumed, resumed_opt, 40, start=40)
    train(reference, ref_opt, 40, start=40)
    assert torch.equal(flat(model), flat(resumed))
    assert torch.equal(flat(model), flat(reference))


def test_state_layout_two_tensors_per_param_three_with_amsgrad() -> None:
    model = tiny_model()
    for opt, keys in (
        (AdaBelief(model.parameters()), {"step", "exp_avg", "exp_avg_var"}),
        (AdaBelief(model.parameters(), amsgrad=True), {"step", "exp_avg", "exp_avg_var", "max_exp_avg_var"}),
        (EAdam(model.parameters()), {"step", "exp_avg", "exp_avg_sq"}),
        (AdamFamily(model.parameters(), amsgrad=True), {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    ):
        train(model, opt, 2)
        for state in opt.state.values():
            assert set(state) == keys and state["step"] == 2


def test_loads_integer_steps_of_the_reference_codes() -> None:
    """Steps are 0-dim float tensors, as torch.optim.Adam keeps them (so torch.compile does not guard
    on their value); the integer steps of adabelief-pytorch / EAdam state_dicts load too."""
    model = tiny_model()
    opt = AdamFamily(model.parameters())
    train(model, opt, 3)
    assert all(torch.is_tensor(s["step"]) and s["step"].dtype == torch.float32 for s in opt.state.values())
    sd = copy.deepcopy(opt.state_dict())
    for state in sd["state"].values():
        state["step"] = int(state["step"])
    del sd["param_groups"][0]["eps_before_correction"]  # an older state_dict without a newer key
    opt2 = AdamFamily(tiny_model().parameters())
    opt2.load_state_dict(sd)
    assert all(torch.is_tensor(s["step"]) and float(s["step"]) == 3 for s in opt2.state.values())
    assert opt2.param_groups[0]["eps_before_correction"] is False


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [AdaBelief, EAdam, AdamFamily], ids=["adabelief", "eadam", "core"])
def test_half_precision_params_are_stepped_in_fp32(dtype: torch.dtype, make: type) -> None:
    """Each step equals the fp32 step of the same (upcast) param, grad and state, rounded once."""
    low = tiny_model(dtype)
    high = tiny_model(torch.float32)
    opt_low = make(low.parameters(), lr=1e-2)
    opt_high = make(high.parameters(), lr=1e-2)
    for step in range(10):
        with torch.no_grad():
            for p, q in zip(low.parameters(), high.parameters(), strict=True):
                q.copy_(p.float())
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step)).to(dtype)
        opt_low.zero_grad()
        low(x).float().pow(2).mean().backward()
        for p, q in zip(low.parameters(), high.parameters(), strict=True):
            q.grad = p.grad.float()
        opt_low.step()
        opt_high.step()
        for p, q in zip(low.parameters(), high.parameters(), strict=True):
            assert p.dtype == dtype
            assert torch.equal(p, q.to(dtype))
    for p in low.parameters():
        assert all(v.dtype == torch.float32 for k, v in opt_low.state[p].items() if k != "step")
    # a round trip keeps the fp32 state (torch.optim's loader would cast it to the param dtype)
    opt2 = make(low.parameters(), lr=1e-2)
    opt2.load_state_dict(opt_low.state_dict())
    for p in low.parameters():
        for key, value in opt_low.state[p].items():
            if key != "step":
                assert opt2.state[p][key].dtype == torch.float32 and torch.equal(opt2.state[p][key], value)


def test_fp16_matches_adabelief_pytorch_021() -> None:
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    runs = []
    for make in (
        lambda ps: AdaBelief(ps, version="0.2.1"),
        lambda ps: adabelief_pytorch.AdaBelief(ps, print_change_log=False),
    ):
        model = tiny_model(torch.float16)
        with contextlib.redirect_stdout(io.StringIO()):
            opt = make(list(model.parameters()))
            train(model, opt, 30)
        runs.append(flat(model))
    # both step an fp32 copy and round to fp16; the fp32 math differs in the last bits only
    torch.testing.assert_close(runs[0], runs[1], rtol=2e-3, atol=1e-4)


def test_sparse_gradients_get_a_clear_error() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for make in (AdaBelief, EAdam, AdamFamily, AdaBound, Yogi, MSVAG, Fromage):
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            make(emb.parameters()).step()


def test_closure_and_params_without_grad() -> None:
    model = tiny_model()
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = AdaBelief([*model.parameters(), frozen])
    x = torch.randn(8, 4)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert torch.equal(frozen.detach(), torch.ones(3)) and frozen not in opt.state


def test_fused_falls_back_with_a_warning_when_compile_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from optrepro.optim import _kernels

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_kernels, "_compiled", broken)
    monkeypatch.setattr(_kernels, "_compile_error", None)
    model, reference = tiny_model(), tiny_model()
    with pytest.warns(RuntimeWarning, match="falling back to the multi-tensor"):
        train(model, AdaBelief(model.parameters(), fused=True), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(reference, AdaBelief(reference.parameters()), 5)
    assert torch.equal(flat(model), flat(reference))
