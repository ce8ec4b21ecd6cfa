"""Optimizer diagnostics (optrepro.optim.diagnostics): known answers, kernel independence, sampling,
checkpoint exactness, and the training loop's eval rows."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import metrics, run_folders, run_inprocess
from optrepro.optim import AdaBelief, AdamFamily, EAdam
from optrepro.optim.diagnostics import KEYS, Diagnostics, sample_indices, summarize

CORNERS = {
    "ablation_adam": dict(second_moment="grad_sq", eps_placement="outside"),
    "ablation_eadam": dict(second_moment="grad_sq", eps_placement="inside"),
    "ablation_belief_outside": dict(second_moment="belief", eps_placement="outside"),
    "ablation_belief_inside": dict(second_moment="belief", eps_placement="inside"),
}


def model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(32, 6, generator=g).to(next(net.parameters()).dtype)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def noise_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, mean: float = 0.0) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = mean + torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


# ---------------------------------------------------------------------------------------------
# known answers
# ---------------------------------------------------------------------------------------------


def test_constant_gradient_is_case3_for_belief(tmp_path: Path) -> None:
    """toy2d l1_scaled at a small lr: the gradient (sign(x)/10, sign(y)) never changes, so (g - m)^2 -> 0
    and the belief denominator shrinks to the floor: every coordinate is case 3, the step ratio huge.

    "Small" is lr 1e-6 here, not the 1e-4 the issue suggested: a belief step at the floor is
    lr |g| / F with F = sqrt(1e-8 / (1 - 0.3)) = 1.2e-4, i.e. ~0.08 per step at lr 1e-4, which reaches
    the kink at y = 0 within ~20 steps and flips the gradient (measured: step ratio 2.5 at step 200)."""
    overrides = ["task=toy2d_l1_scaled", "task.steps=100", "task.eval_every=50", "optimizer.lr=1e-6",
                 "diagnostics.enabled=true", "seed=0"]
    ratios = {}
    for corner in ("ablation_belief_inside", "ablation_adam"):
        out = tmp_path / corner
        assert run_inprocess([*overrides, f"optimizer={corner}"], out).status == "completed"
        (folder,) = run_folders(out)
        rows = metrics(folder)
        assert [r["step"] for r in rows] == [50, 100]
        assert all(r["distance"] > 0.5 for r in rows)  # nowhere near the kink: g stayed constant
        assert set(KEYS) <= set(rows[-1])
        ratios[corner] = rows[-1]
    belief = ratios["ablation_belief_inside"]
    assert belief["opt/case3_share"] == 1.0
    assert belief["opt/step_ratio_q10"] > 5 and belief["opt/step_ratio_q50"] > 5
    assert belief["opt/floor_share"] == 1.0  # s_hat ~ 0: the floor is the denominator
    # the same statistic on the g^2 corner: same state, so the same ratio, but its step uses v
    assert ratios["ablation_adam"]["opt/floor_share"] == 0.0
    assert ratios["ablation_adam"]["opt/step_ratio_q50"] > 5


def test_huge_inside_eps_is_all_floor(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    overrides = ["task=toy2d", "profile=smoke", "optimizer=ablation_eadam", "optimizer.eps=10",
                 "diagnostics.enabled=true"]
    assert run_inprocess(overrides, out).status == "completed"
    (folder,) = run_folders(out)
    row = metrics(folder)[-1]
    assert row["opt/floor_share"] == 1.0
    # the step is SGD with lr / floor: eff_lr = lr / sqrt(eps / (1 - b2)) (EAdam's bias corrections ~ 1)
    assert row["opt/eff_lr_q50"] == pytest.approx(row["lr"] / math.sqrt(10 / (1 - 0.999)), rel=0.05)


def test_zero_mean_noise_gives_step_ratio_one() -> None:
    """g ~ N(0, 1): E g^2 = 1 and E (g - m)^2 = 1 + Var m ~ 1, so the two denominators agree."""
    params = [torch.nn.Parameter(torch.zeros(4000))]
    opt = AdamFamily(params, second_moment="belief", betas=(0.9, 0.999))
    probe = opt.enable_diagnostics(sample=2000, seed=0)
    noise_steps(opt, params, 3000)
    row = probe.metrics()
    assert 0.9 < row["opt/step_ratio_q50"] < 1.1
    assert row["opt/case3_share"] == 0.0
    assert row["opt/floor_share"] == 0.0


def test_sample_agrees_with_all_coordinates() -> None:
    """The default-style subsample and the whole model give the same statistics (within sampling error)."""
    results = []
    for sample in (10**9, 2000):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 256), torch.nn.Tanh(), torch.nn.Linear(256, 32), torch.nn.Tanh(),
                                  torch.nn.Linear(32, 3))
        opt = AdaBelief(net.parameters(), lr=1e-2)
        probe = opt.enable_diagnostics(sample=sample, seed=3)
        train(net, opt, 60)
        results.append(probe.coordinates())
    full, sub = results
    assert full["floor"].numel() == 6 * 256 + 256 + 256 * 32 + 32 + 32 * 3 + 3 and sub["floor"].numel() == 2000
    for key in ("step_ratio", "eff_lr"):
        for q in (0.25, 0.5, 0.75):
            a, b = torch.quantile(full[key], q).item(), torch.quantile(sub[key], q).item()
            assert b == pytest.approx(a, rel=0.1), (key, q)


# ---------------------------------------------------------------------------------------------
# the shadows are right, and independent of the kernel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_shadow_plus_floor_reproduces_the_real_state(corner: str) -> None:
    """Without amsgrad the real state is the eps-free shadow plus eps_state (1 - b2^t) / (1 - b2)."""
    net = model(dtype=torch.float64)
    opt = AdamFamily(net.parameters(), eps=1e-6, weight_decay=1e-2, **CORNERS[corner])
    probe = opt.enable_diagnostics(sample=10**9)
    train(net, opt, 25)
    b2 = 0.999
    for p, entry in zip(net.parameters(), probe.entries[0], strict=True):
        state = opt.state[p]
        shadow = entry.s if CORNERS[corner]["second_moment"] == "belief" else entry.v
        eps_state = 1e-6 if CORNERS[corner]["eps_placement"] == "inside" else 0.0
        expected = shadow + eps_state * (1 - b2**25) / (1 - b2)
        torch.testing.assert_close(state["exp_avg_sq"].reshape(-1)[entry.index], expected, rtol=1e-10, atol=1e-18)


def build(kind: str, params: Any, kernel: str) -> torch.optim.Optimizer:
    kw = {"foreach": kernel == "foreach"} if kernel != "fused" else {"fused": True}
    if kind == "adabelief_amsgrad":
        return AdaBelief(params, lr=1e-2, amsgrad=True, version="0.1.0", **kw)
    if kind == "eadam_amsgrad":
        return EAdam(params, lr=1e-2, amsgrad=True, **kw)
    return AdaBelief(params, lr=1e-2, **kw)


@pytest.mark.parametrize("kind", ["adabelief", "adabelief_amsgrad", "eadam_amsgrad"])
def test_same_numbers_from_every_kernel(kind: str) -> None:
    kernels = ["single", "foreach"] + (["fused"] if kind == "adabelief" else [])  # fused: one compile
    rows = []
    for kernel in kernels:
        net = model()
        opt = build(kind, net.parameters(), kernel)
        probe = opt.enable_diagnostics(sample=100, seed=5)
        train(net, opt, 30)
        rows.append(probe.metrics())
    for row in rows[1:]:
        assert row.keys() == rows[0].keys() == set(KEYS)
        for key in KEYS:
            assert row[key] == pytest.approx(rows[0][key], rel=1e-4), key


def test_diagnostics_never_change_the_update() -> None:
    nets = [model(), model()]
    opts = [AdaBelief(n.parameters(), lr=1e-2) for n in nets]
    opts[1].enable_diagnostics(sample=50)
    for net, opt in zip(nets, opts, strict=True):
        train(net, opt, 20)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_amsgrad_floor_is_measured_from_the_max() -> None:
    """adabelief 0.1.0 adds eps to the max every step: the floor grows like sqrt(t eps), not sqrt(eps/(1-b2))."""
    params = [torch.nn.Parameter(torch.zeros(50))]
    opt = AdaBelief(params, eps=1e-4, amsgrad=True, rectify=False, version="0.1.0")
    probe = opt.enable_diagnostics(sample=50)
    for _ in range(200):
        params[0].grad = torch.zeros(50)  # eps-free moments stay 0: the max is all eps
        opt.step()
    floor = probe.coordinates()["floor"]
    bc2 = 1 - 0.999**200
    torch.testing.assert_close(floor, torch.full_like(floor, math.sqrt(200 * 1e-4 / bc2) + 1e-4), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# sampling and checkpoints
# ---------------------------------------------------------------------------------------------


def test_sample_indices_distinct_uniform_and_seeded() -> None:
    for numel, k in ((10, 100), (1000, 300), (10**8, 5000)):
        idx = sample_indices(numel, k, torch.Generator().manual_seed(0))
        assert idx.numel() == min(numel, k) and idx.unique().numel() == idx.numel()
        assert int(idx.min()) >= 0 and int(idx.max()) < numel and torch.equal(idx, idx.sort().values)
        again = sample_indices(numel, k, torch.Generator().manual_seed(0))
        assert torch.equal(idx, again)
    big = sample_indices(10**8, 20000, torch.Generator().manual_seed(1)).double()
    assert big.mean().item() / 1e8 == pytest.approx(0.5, abs=0.01)


def test_sample_is_split_over_params_by_size() -> None:
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (90_000, 10_000, 3)]
    opt = AdamFamily(params)
    probe = opt.enable_diagnostics(sample=1000)
    counts = [0 if e is None else e.index.numel() for e in probe.entries[0]]
    assert sum(counts) == 1000 and 850 < counts[0] < 950 and counts[2] <= 3


def test_state_dict_round_trip_resumes_exactly() -> None:
    net_a = model(dtype=torch.float64)
    opt_a = AdaBelief(net_a.parameters(), lr=1e-2)
    probe_a = opt_a.enable_diagnostics(sample=64, seed=7)
    train(net_a, opt_a, 10)
    saved = copy.deepcopy(opt_a.state_dict())
    nets = copy.deepcopy(net_a.state_dict())
    train(net_a, opt_a, 10, start=10)

    net_b = model(dtype=torch.float64)
    net_b.load_state_dict(nets)
    opt_b = AdaBelief(net_b.parameters(), lr=1e-2)
    probe_b = opt_b.enable_diagnostics(sample=64, seed=999)  # another seed: the saved sample wins
    opt_b.load_state_dict(saved)
    train(net_b, opt_b, 10, start=10)
    assert probe_b.metrics() == probe_a.metrics()
    for ea, eb in zip(probe_a.entries[0], probe_b.entries[0], strict=True):
        assert (ea is None) == (eb is None)
        if ea is not None:
            assert torch.equal(ea.index, eb.index) and eb.index.dtype == torch.int64 and torch.equal(ea.s, eb.s)


def test_enable_after_the_first_step_is_refused() -> None:
    net = model()
    opt = AdamFamily(net.parameters())
    train(net, opt, 1)
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.enable_diagnostics()
    with pytest.raises(ValueError, match="diagnostics.sample must be a positive integer"):
        Diagnostics(AdamFamily(model().parameters()), sample=0)


def test_summarize_pools_and_reports_nothing_without_coordinates() -> None:
    assert summarize([]) == {}
    empty = {k: torch.empty(0, dtype=torch.float64) for k in ("floor", "root_q", "step_ratio", "eff_lr")}
    assert summarize([empty]) == {}
    a = {"floor": torch.tensor([1.0, 1.0]), "root_q": torch.tensor([0.0, 2.0]),
         "step_ratio": torch.tensor([1.0, 3.0]), "eff_lr": torch.tensor([0.1, 0.3])}
    row = summarize([a, empty])
    assert row["opt/floor_share"] == 0.5 and row["opt/case3_share"] == 0.5


# ---------------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------------


def test_off_by_default_and_silent_outside_the_family(tmp_path: Path) -> None:
    assert run_inprocess(["task=toy2d", "profile=smoke", "optimizer=adabelief"], tmp_path / "off").status == "completed"
    (folder,) = run_folders(tmp_path / "off")
    assert not any(k.startswith("opt/") for k in metrics(folder)[-1])
    on = ["task=toy2d", "profile=smoke", "diagnostics.enabled=true"]
    for name in ("sgd", "adam"):  # SGD, and torch's own Adam: not our core, so no keys (not zeros)
        assert run_inprocess([*on, f"optimizer={name}"], tmp_path / name).status == "completed"
        (folder,) = run_folders(tmp_path / name)
        assert not any(k.startswith("opt/") for k in metrics(folder)[-1])


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=toy2d", "profile=smoke", "diagnostics.sample=0", "diagnostics.enabled=true",
                             "optimizer=adabelief"], tmp_path)
    assert outcome.status == "error" and "diagnostics.sample must be a positive integer" in outcome.reason



# ---------------------------------------------------------------------------------------------
# analysis: figure and REPORT section
# ---------------------------------------------------------------------------------------------


def _with_diagnostics(folder: Path, values: dict[str, float]) -> None:
    import json

    path = folder / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, **values}) + "\n" for r in rows))


def test_analysis_figure_and_report_section(tmp_path: Path) -> None:
    from analysis_fixtures import write_run
    from optrepro.analyze import analyze

    runs = tmp_path / "runs"
    floor = {"ablation_adam": 0.0, "ablation_eadam": 0.6, "ablation_belief_outside": 0.0, "ablation_belief_inside": 0.9}
    case3 = {"ablation_adam": 0.0, "ablation_eadam": 0.0, "ablation_belief_outside": 0.3, "ablation_belief_inside": 0.3}
    for corner in floor:
        for seed in range(3):
            folder = write_run(runs, optimizer=corner, seed=seed, curve=[0.5, 0.6, 0.7 + 0.01 * seed])
            _with_diagnostics(folder, {"opt/floor_share": floor[corner] + 0.01 * seed,
                                       "opt/case3_share": case3[corner] + 0.02 * seed,
                                       "opt/step_ratio_q10": 1.0, "opt/step_ratio_q50": 1.5,
                                       "opt/step_ratio_q90": 3.0, "opt/eff_lr_q50": 1e-3})
    write_run(runs, optimizer="sgd", opt_class="sgd", second_moment=None, placement=None)  # no diagnostics
    artifacts = analyze(runs, tmp_path / "out", published_path=None)
    assert artifacts.figures["fake_task"]["diagnostics"].is_file()
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "Where the step size comes from" in report and "diagnostics_fake_task.png" in report
    assert "(g−m)², ε inside (AdaBelief code) 91%" in report  # mean floor share over seeds
    # floor share: inside 0.90-0.92 vs outside 0.00-0.02 -> higher; case 3 equal -> cannot tell
    assert "floor share higher, case-3 share cannot tell" in report  # one nominal ε: no "At ε" prefix
    curves = (tmp_path / "out" / "curves.csv").read_text()
    assert "opt/floor_share" in curves


def test_report_sentences_are_per_nominal_eps_and_ignore_matched_floor_runs(tmp_path: Path) -> None:
    """Two nominal ε plus an outside run at the inside floor: each ε gets its own sentence, made of the
    corners at that ε only (the matched-floor run, whose floor share is 1, must not stand in for Adam)."""
    from analysis_fixtures import write_run
    from optrepro.analysis.diagnostics import sentences, summary_table
    from optrepro.analysis.load import load_runs

    runs = tmp_path / "runs"
    floor = {"ablation_adam": 0.1, "ablation_eadam": 0.7, "ablation_belief_outside": 0.2, "ablation_belief_inside": 0.8}
    for eps, shift in ((1e-8, 0.0), (1e-4, 0.1)):
        for corner, share in floor.items():
            for seed in range(3):
                folder = write_run(runs, optimizer=corner, seed=seed, eps=eps, curve=[0.5, 0.6, 0.7])
                _with_diagnostics(folder, {"opt/floor_share": share + shift + 0.01 * seed, "opt/case3_share": 0.0,
                                           "opt/step_ratio_q10": 1.0, "opt/step_ratio_q50": 1.0,
                                           "opt/step_ratio_q90": 1.0, "opt/eff_lr_q50": 1e-3})
    for seed in range(3):  # ablation_adam at the inside floor of 1e-8 (a matched-floor run): floor share 1
        folder = write_run(runs, optimizer="ablation_adam", seed=seed, eps=3.1622776601683794e-3, curve=[0.5, 0.6, 0.7])
        _with_diagnostics(folder, {"opt/floor_share": 1.0, "opt/case3_share": 0.0, "opt/step_ratio_q10": 1.0,
                                   "opt/step_ratio_q50": 1.0, "opt/step_ratio_q90": 1.0, "opt/eff_lr_q50": 1e-3})
    data = load_runs(runs)
    _, estimates = summary_table(data, "fake_task")
    lines = sentences(data, "fake_task", estimates)
    assert len(lines) == 2, lines
    assert lines[0].startswith("At ε = 1e-08: ") and "g², ε outside (Adam) 11%" in lines[0]
    assert lines[1].startswith("At ε = 0.0001: ") and "g², ε outside (Adam) 21%" in lines[1]
    assert "outcome: cannot tell (intervals overlap)" in lines[0]
    assert not any("(Adam) 100%" in line for line in lines)


def test_diagnostics_in_a_compiled_step() -> None:
    """Inside the caller's torch.compile the probe gives the eager numbers and adds no recompiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    nets = [model(), model()]
    opts = [AdaBelief(n.parameters(), lr=1e-2) for n in nets]
    probes = [o.enable_diagnostics(sample=40, seed=2) for o in opts]

    @torch.compile(backend="eager")
    def compiled_step() -> None:
        opts[1].step()

    x = torch.randn(16, 6)
    for _ in range(8):
        for net in nets:
            net.zero_grad()
            net(x).pow(2).mean().backward()
        opts[0].step()
        compiled_step()
    assert counters["stats"]["unique_graphs"] == 1
    eager, traced = probes[0].metrics(), probes[1].metrics()
    for key in KEYS:
        assert traced[key] == pytest.approx(eager[key], rel=1e-4), key
