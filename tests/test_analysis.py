"""The analysis stage on hand-written run folders (same format as train.py writes): numbers checked
against a direct pandas computation, intervals, the ablation effects, missing/empty/NaN handling."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis_fixtures import ABLATION_CORNERS, write_run
from conftest import REPO
from optrepro.analysis.load import load_runs, settings_of
from optrepro.analysis.stats import improvement, mean_interval, seeds_needed
from optrepro.analysis.tables import (
    CI_HEADER,
    Stat,
    ablation_tables,
    comparison_tables,
    load_published,
    paper_views,
    verdict,
)
from optrepro.analyze import DEFAULT_PUBLISHED, analyze, main

PUBLISHED = REPO / "results" / "published_results.csv"


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def mixed_runs(tmp_path: Path) -> Path:
    """cifar10_vgg11-like task with an eps sweep, a diverged, a failed, a NaN and an incomplete run."""
    root = tmp_path / "runs"
    rng = np.random.default_rng(1)
    for opt in ("adam", "adabelief", "eadam"):
        for eps in (1e-16, 1e-8):
            for seed in range(3):
                final = 88.0 + (1.5 if opt != "adam" else 0.0) + float(rng.normal(0, 0.4))
                write_run(
                    root,
                    task="cifar10_vgg11",
                    optimizer=opt,
                    seed=seed,
                    eps=eps,
                    curve=[final - 3, final - 1, final],
                )
    write_run(
        root,
        task="cifar10_vgg11",
        optimizer="sgd",
        seed=0,
        status="diverged",
        reason="non-finite training loss at step 7",
        curve=[10.0, float("nan")],
        second_moment=None,
        placement=None,
    )
    write_run(
        root,
        task="cifar10_vgg11",
        optimizer="sgd",
        seed=1,
        curve=[80.0, 85.0],
        second_moment=None,
        placement=None,
    )
    write_run(root, task="cifar10_vgg11", optimizer="radam", seed=0, status="failed", reason="RuntimeError: boom")
    write_run(root, task="cifar10_vgg11", optimizer="radam", seed=1, curve=[50.0, float("nan")])
    write_run(root, task="cifar10_vgg11", optimizer="yogi", seed=0, complete=False)
    write_run(root, task="toyish", optimizer="adam", seed=0, metric="loss", mode="min", curve=[1.0, 0.1])
    return root


def _direct_table(root: Path) -> pd.DataFrame:
    """The expected comparison numbers straight from the summary files (no analysis code)."""
    import json

    rows = []
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        cfg_eps = s["factors"]["eps"] if s["factors"]["eps"] is not None else 1e-8
        rows.append(
            {
                "task": s["task"],
                "optimizer": s["optimizer"],
                "eps": cfg_eps,
                "status": s["status"],
                "final": s["final"].get(s["metric"], math.nan),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_interval_contains_mean_and_is_reproducible(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.lognormal(0, 1.5, size=n)  # skewed on purpose
        est = mean_interval(x)
        assert est.n == n and est.lo <= x.mean() <= est.hi and est.method == "Student t"
        assert est.mean == pytest.approx(x.mean()) and est.std == pytest.approx(x.std(ddof=1))
        assert mean_interval(x) == est
    assert improvement(np.array([1.0]), "min")[0] == -1.0 and improvement(2.0, "max") == 2.0


# ------------------------------------------------------------------------------------- loading
def test_runs_table_and_incomplete(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    assert len(data.runs) == 18 + 4 + 1
    assert data.incomplete.run.str.contains("yogi").all() and len(data.incomplete) == 1
    assert "yogi" not in set(data.runs.optimizer)
    assert data.varying["cifar10_vgg11"] == ["opt.eps"]  # the only hyperparameter swept within a config
    assert data.varying["toyish"] == []
    assert "adam (eps=1e-16)" in set(data.runs.setting)
    row = data.runs[data.runs.setting == "adam (eps=1e-16)"].iloc[0]
    assert row.eps == 1e-16 and row.second_moment == "grad_sq" and row.eps_placement == "outside"
    assert row.lr == 1e-3 and row.beta2 == 0.999 and row.weight_decay == 0.0 and row.git_sha.startswith("abc")
    # the curves table holds every logged value of every complete run, nothing of the incomplete one
    curves = data.curves
    assert set(curves.run) == set(data.runs.run)
    assert len(curves[(curves.run == row.run)]) == 3 * 4  # 3 eval points x (train_loss, lr, test_acc, test_loss)
    assert curves[(curves.run == row.run) & (curves.key == "test_acc")].value.iloc[-1] == row.final


def test_comparison_matches_direct_pandas(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    published = load_published(PUBLISHED)
    comparison = comparison_tables(data, published)
    comp = comparison.per_task["cifar10_vgg11"][0]
    direct = _direct_table(mixed_runs)
    direct = direct[direct.task == "cifar10_vgg11"]
    counted = direct[(direct.status == "completed") & np.isfinite(direct.final)]
    expected = counted.groupby(["optimizer", "eps"]).final.agg(["mean", "std", "count"])
    for (opt, eps), exp in expected.iterrows():
        label = f"{opt} (eps={eps:.6g})"
        got = comp[comp.setting == label].iloc[0]
        assert got["mean"] == pytest.approx(exp["mean"], rel=1e-12)
        assert got["n"] == exp["count"]
        if exp["count"] > 1:
            assert got["std"] == pytest.approx(exp["std"], rel=1e-12)
            assert got.ci_lo <= got["mean"] <= got.ci_hi
        else:
            assert math.isnan(got.ci_lo)
    sgd = comp[comp.optimizer == "sgd"].iloc[0]
    assert sgd.diverged == 1 and sgd.n == 1 and sgd["mean"] == 85.0  # the diverged seed is not averaged
    radam = comp[comp.optimizer == "radam"].iloc[0]
    assert radam.failed == 1 and radam.nan == 1 and radam.n == 0 and math.isnan(radam["mean"])
    # published value and difference, from the CSV directly (repo_curves lists a 'final' adam number)
    pub = pd.read_csv(PUBLISHED)
    adam = comp[comp.setting == "adam (eps=1e-08)"].iloc[0]
    final_rows = pub[(pub.task == "cifar10_vgg11") & (pub.optimizer == "adam") & (pub.which == "final")]
    assert adam.published == final_rows.value.iloc[0]
    # these hand-written runs are no table's recipe and record no data: never compared (test_comparability.py)
    assert adam.comparable == 0 and math.isnan(adam["diff"])
    others = comparison.not_comparable["cifar10_vgg11"]
    assert set(others.run) >= set(data.runs[(data.runs.optimizer == "adam") & (data.runs.task == "cifar10_vgg11")].run)
    assert others.reason.str.contains("no data provenance recorded").all()


def test_paper_view_fills_ours_and_dashes(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    published = load_published(PUBLISHED)
    views = paper_views(data, published)
    view = views["eadam2020_table2"]
    numeric, display, title = view.numeric, view.display, view.title
    assert "EAdam" in title
    assert list(display.optimizer) == ["adam", "radam", "adabelief", "eadam"]
    cell = numeric[(numeric.task == "cifar10_vgg11") & (numeric.optimizer == "eadam")].iloc[0]
    # none of these runs is the table's recipe: ours stays empty, the 6 eadam runs are listed instead
    assert cell.ours_n == 0 and math.isnan(cell["diff"]) and cell.not_comparable == 6
    assert cell.published == 91.45
    assert display.loc[display.optimizer == "eadam", "cifar10_vgg11 ours"].iloc[0] == "—"
    assert set(view.not_comparable[view.not_comparable.optimizer == "eadam"].run) == set(
        data.runs[data.runs.optimizer == "eadam"].run)
    assert display.loc[display.optimizer == "adam", "cifar10_resnet18 ours"].iloc[0] == "—"
    assert display.loc[display.optimizer == "adam", "cifar10_resnet18 published"].iloc[0] == "92.88"


# ------------------------------------------------------------------------------------- ablation
def _ablation_runs(
    root: Path,
    mode: str,
    belief: float,
    inside: float,
    seeds: int = 4,
    noise: float = 0.05,
    eps_values: tuple[float, ...] = (1e-8,),
) -> None:
    """Corners with known main effects (as raw metric changes) plus shared seed noise."""
    rng = np.random.default_rng(3)
    seed_noise = rng.normal(0, 1.0, size=seeds)
    for eps in eps_values:
        for optimizer, (second, placement) in ABLATION_CORNERS.items():
            for seed in range(seeds):
                value = 50.0 + seed_noise[seed] + rng.normal(0, noise)
                value += belief * (second == "belief") + inside * (placement == "inside")
                write_run(
                    root,
                    task="abl",
                    optimizer=optimizer,
                    seed=seed,
                    eps=eps,
                    curve=[value],
                    metric="m",
                    mode=mode,
                )


def test_ablation_effects_match_direct_and_verdict(tmp_path: Path) -> None:
    _ablation_runs(tmp_path, "max", belief=0.1, inside=2.0, eps_values=(1e-16, 1e-8))
    data = load_runs(tmp_path)
    abl = ablation_tables(data)
    effects = abl.effects.set_index(["eps", "effect"])
    runs = data.runs
    wide = runs.pivot_table(index=["seed", "eps"], columns="optimizer", values="final")
    belief = (
        (wide.ablation_belief_outside - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_eadam)
    ) / 2
    place = (
        (wide.ablation_eadam - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_belief_outside)
    ) / 2
    assert effects.loc[("all", "belief"), "mean"] == pytest.approx(belief.mean())
    assert effects.loc[("all", "placement"), "mean"] == pytest.approx(place.mean())
    assert effects.loc[("all", "placement"), "n_pairs"] == 8
    assert effects.loc[("1e-08", "placement"), "n_pairs"] == 4  # per-eps rows exist when eps was swept
    for name in ("belief", "placement", "gap"):
        row = effects.loc[("all", name)]
        assert row.ci_lo <= row["mean"] <= row.ci_hi
    corners = abl.corners.set_index(["eps", "corner"])
    assert corners.loc[("all", "eadam"), "mean"] == pytest.approx(runs[runs.optimizer == "ablation_eadam"].final.mean())
    assert "ε placement explains more of the gap than the belief second moment (inside better) at every ε" in (
        abl.sentences["abl"]
    )
    assert (abl.effects.ci_method[abl.effects.n_pairs >= 2] == "Student t").all()


def test_ablation_min_mode_counts_decrease_as_improvement(tmp_path: Path) -> None:
    _ablation_runs(tmp_path, "min", belief=-3.0, inside=0.0)  # belief lowers a lower-is-better metric
    abl = ablation_tables(load_runs(tmp_path))
    effects = abl.effects.set_index(["eps", "effect"])
    assert effects.loc[("all", "belief"), "mean"] == pytest.approx(3.0, abs=0.2)  # improvement: positive
    assert "belief second moment explains more" in abl.sentences["abl"]


def test_ablation_cannot_tell(tmp_path: Path) -> None:
    _ablation_runs(tmp_path / "a", "max", belief=0.0, inside=0.0, noise=1.0)
    sentence = ablation_tables(load_runs(tmp_path / "a")).sentences["abl"]
    assert "cannot tell" in sentence and "with 4 seeds an effect below" in sentence
    _ablation_runs(tmp_path / "b", "max", belief=1.0, inside=5.0, seeds=1)
    sentence = ablation_tables(load_runs(tmp_path / "b")).sentences["abl"]
    assert "cannot tell (n=1" in sentence
    # only two corners: no complete pair, still a sentence, no crash
    for opt in ("ablation_adam", "ablation_eadam"):
        write_run(tmp_path / "c", task="abl", optimizer=opt, seed=0, curve=[1.0])
    abl = ablation_tables(load_runs(tmp_path / "c"))
    assert "no seed/ε has all four" in abl.sentences["abl"]


def _stat(values: list[float], p_holm: float) -> Stat:
    return Stat(mean_interval(values), p_holm, 0.5)


def test_verdict_both_significant_but_sizes_not_told_apart() -> None:
    belief, placement = _stat([1.0, 1.2, 0.9, 1.1], 0.01), _stat([1.05, 1.15, 0.95, 1.0], 0.01)
    scoped = {"1e-08": {"belief": belief, "placement": placement, "gap": belief, "size_difference":
                        _stat([0.05, -0.05, 0.05, -0.1], 0.9), "placement_matched": _stat([], math.nan),
                        "floor_size": _stat([], math.nan)}}
    text = verdict("t", scoped, scoped["1e-08"], "max", "m")
    assert "both factors matter" in text and "cannot tell which explains more" in text and "(ε = 1e-08)" in text
    assert "At matched floors" not in text  # no matched-floor runs, no matched sentence


def _matched_runs(root: Path, floor_breaks: float = 0.1, seeds: int = 3) -> None:
    """Corners where only the floor's size matters: any run whose floor exceeds ``floor_breaks`` loses 70
    points; plus the outside corners at each inside ε's floor (the matched runs)."""
    rng = np.random.default_rng(5)
    seed_noise = rng.normal(0, 1.0, size=seeds)
    for eps in (1e-16, 1e-8, 1e-4):
        matched = math.sqrt(eps / (1 - 0.999))
        for optimizer, (second, placement) in ABLATION_CORNERS.items():
            runs = [(eps, placement)] + ([(matched, "outside")] if placement == "outside" else [])
            for run_eps, where in runs:
                floor = run_eps if where == "outside" else math.sqrt(run_eps / (1 - 0.999))
                for seed in range(seeds):
                    value = 97.0 + 0.3 * (second == "belief") - 70.0 * (floor > floor_breaks)
                    value += seed_noise[seed] + rng.normal(0, 0.2)
                    write_run(root, task="abl", optimizer=optimizer, seed=seed, eps=run_eps, curve=[value])


def test_matched_floor_separates_placement_from_floor_size(tmp_path: Path) -> None:
    _matched_runs(tmp_path)
    data = load_runs(tmp_path)
    abl = ablation_tables(data)
    effects = abl.effects[abl.effects.task == "abl"].set_index(["eps", "effect"])
    # the matched-floor-only ε values are not 2x2 scopes
    assert set(effects.index.get_level_values("eps")) == {"1e-16", "1e-08", "0.0001", "all"}
    # direct: pair by seed, inside at eps against outside at sqrt(eps / (1 - b2)), same second moment
    runs = data.runs
    for eps in (1e-16, 1e-8, 1e-4):
        matched = math.sqrt(eps / (1 - 0.999))

        def at(opt: str, e: float) -> pd.Series:
            sel = runs[(runs.optimizer == opt) & np.isclose(runs.eps, e, rtol=1e-9, atol=0)]
            return sel.set_index("seed").final.sort_index()

        pm = ((at("ablation_eadam", eps) - at("ablation_adam", matched))
              + (at("ablation_belief_inside", eps) - at("ablation_belief_outside", matched))) / 2
        fs = ((at("ablation_adam", matched) - at("ablation_adam", eps))
              + (at("ablation_belief_outside", matched) - at("ablation_belief_outside", eps))) / 2
        label = f"{eps:.6g}"
        assert effects.loc[(label, "placement_matched"), "mean"] == pytest.approx(pm.mean())
        assert effects.loc[(label, "floor_size"), "mean"] == pytest.approx(fs.mean())
        assert effects.loc[(label, "placement_matched"), "n_pairs"] == 3
        # the nominal placement effect splits exactly into the two
        assert effects.loc[(label, "placement"), "mean"] == pytest.approx(pm.mean() + fs.mean())
        assert effects.loc[(label, "placement_matched"), "matched_eps"] == f"{matched:.6g}"
    sentence = abl.sentences["abl"]
    assert "the answer depends on ε" in sentence
    assert "only the floor's size matters at ε = 0.0001" in sentence
    assert "ε placement explains more of the gap than the belief second moment (inside worse) at ε = 0.0001" in sentence
    assert "seeds an effect below" in sentence  # the detectable effect beside each "cannot tell"
    corners = abl.corners.set_index(["eps", "corner"])
    assert corners.loc[("all", "adam"), "n"] == 9  # pooled over the nominal ε only, not the matched runs
    assert corners.loc[("0.0001", "adam_matched"), "n"] == 3
    display = abl.matched_displays["abl"]
    assert list(display["matched outside ε"])[:3] == ["3.16228e-07", "0.00316228", "0.316228"]


def test_holm_family_and_detectable_effect(tmp_path: Path) -> None:
    _matched_runs(tmp_path)
    abl = ablation_tables(load_runs(tmp_path))
    fam = abl.effects[abl.effects.in_family]
    # 3 eps x (belief, placement, size_difference, placement_matched, floor_size); pooled and gap are not tested
    assert abl.family_size == len(fam) == 15
    assert set(fam.eps) == {"1e-16", "1e-08", "0.0001"} and "gap" not in set(fam.effect)
    assert (fam.p_holm >= fam.p - 1e-15).all() and abl.effects[~abl.effects.in_family].p_holm.isna().all()
    smallest = fam.sort_values("p").iloc[0]
    assert smallest.p_holm == pytest.approx(min(1.0, 15 * smallest.p))
    row = fam.iloc[0]
    t_sum = sps.t.ppf(1 - 0.05 / 15 / 2, row.n_pairs - 1) + sps.t.ppf(0.8, row.n_pairs - 1)
    assert row.mde == pytest.approx(t_sum * row["std"] / math.sqrt(row.n_pairs))
    assert "family of 15 statement(s)" in abl.family_note() and "Holm" in abl.family_note()


def test_seeds_needed_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _matched_runs(tmp_path / "runs")
    main(["--runs", str(tmp_path / "runs"), "--seeds-needed", "1.5", "--task", "abl", "--contrast", "belief"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "seeds for 1.5" in lines[0] and len(lines) == 4  # header + one line per eps
    abl = ablation_tables(load_runs(tmp_path / "runs"))
    row = abl.effects[(abl.effects.eps == "1e-08") & (abl.effects.effect == "belief")].iloc[0]
    expected = seeds_needed(1.5, row["std"], 0.05 / abl.family_size)
    assert lines[2].split()[-1] == str(expected) and lines[2].split()[1] == "1e-08"
    for args, expected in ((["--task", "nope"], "no ablation runs for task 'nope'"), ([], "must be > 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--runs", str(tmp_path / "runs"), "--seeds-needed", "0" if not args else "1", *args])
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "results").exists()  # it prints; it writes nothing


# ------------------------------------------------------------------------------------- end to end
def test_analyze_writes_everything_and_is_deterministic(mixed_runs: Path, tmp_path: Path) -> None:
    for opt in ABLATION_CORNERS:
        for seed in range(2):
            write_run(mixed_runs, task="cifar10_vgg11", optimizer=opt, seed=seed, curve=[80.0 + seed, 85.0 + seed])
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    analyze(mixed_runs, out1, PUBLISHED, REPO / "configs")
    analyze(mixed_runs, out2, PUBLISHED, REPO / "configs")
    files = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    names = {p.as_posix() for p in files}
    for expected in (
        "runs.csv",
        "curves.csv",
        "REPORT.md",
        "tables/comparison_cifar10_vgg11.md",
        "tables/comparison_cifar10_vgg11.csv",
        "tables/comparison_cifar10_vgg11.tex",
        "tables/paper_eadam2020_table2.md",
        "tables/ablation_cifar10_vgg11.md",
        "figures/eps_cifar10_vgg11.png",
        "figures/eps_cifar10_vgg11.pdf",
        "figures/curves_cifar10_vgg11.png",
        "figures/ablation_floor_cifar10_vgg11.png",
    ):
        assert expected in names, expected
    for rel in files:
        if rel.name != "REPORT.md":
            assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes(), rel
    report = (out1 / "REPORT.md").read_text()
    assert "tables/comparison_cifar10_vgg11.md" in report and "figures/eps_cifar10_vgg11.png" in report
    assert "RuntimeError: boom" in report  # failed runs with their reasons
    assert "cifar10_vgg11_yogi_s0" in report  # incomplete runs listed
    assert "Tasks with published numbers but no runs" in report and "imagenet_resnet18" in report
    assert "abc123def456" in report  # environment: git SHA
    assert "\\pm" in (out1 / "tables/comparison_cifar10_vgg11.tex").read_text()
    # every interval names its method: the comparison tables' column, the numbers' ci_method, the preamble
    assert CI_HEADER == "95% CI (Student t)" and CI_HEADER in (out1 / "tables/comparison_cifar10_vgg11.md").read_text()
    assert set(pd.read_csv(out1 / "tables/comparison_all.csv").ci_method.dropna()) == {"Student t"}
    assert "95% Student t interval of the mean" in report and "bootstrap" not in report
    assert "Holm" in report and "family of" in report
    runs_csv = pd.read_csv(out1 / "runs.csv")
    assert len(runs_csv) == 23 + 8


def test_empty_runs_dir_gives_a_report(tmp_path: Path) -> None:
    analyze(tmp_path / "nothing", tmp_path / "out")  # the library call reports "no runs"; the CLI refuses
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "No complete runs found" in report
    assert (tmp_path / "out" / "tables" / "paper_eadam2020_table2.md").exists()  # paper views, all dashes


def test_cli_entry_point(mixed_runs: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optrepro.analyze",
            "--runs",
            str(mixed_runs),
            "--out",
            str(tmp_path / "cli"),
            "--no-figures",
            "--value",
            "best",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "cli" / "tables" / "comparison_cifar10_vgg11.csv")
    assert (table.value_kind == "best").all()
    assert DEFAULT_PUBLISHED.exists()
    pub = pd.read_csv(DEFAULT_PUBLISHED)
    assert "source" in pub.columns and len(pub) == len(pd.read_csv(PUBLISHED))


def test_settings_leave_out_data_location() -> None:
    cfg = {
        "task": {"name": "t", "data": {"root": "/a", "num_workers": 4, "augment": "flip"}, "epochs": 3},
        "optimizer": {"name": "adam", "config_name": "adam", "eps": 1e-8, "betas": [0.9, 0.999]},
        "seed": 1,
        "results_dir": "/r",
        "precision": "auto",
        "profile": {"name": "smoke"},
    }
    got = settings_of(cfg)
    assert got == {
        "task.data.augment": "flip",
        "task.epochs": 3,
        "opt.eps": 1e-8,
        "opt.betas": "[0.9, 0.999]",
        "cfg.precision": "auto",
        "cfg.profile.name": "smoke",
    }


def test_the_ablation_keeps_task_variants_apart() -> None:
    """A model-size grid (one task, task.model.* varying) is split into one ablation task per size, so a seed's
    corner runs of two sizes are never paired or averaged; tasks whose settings do not vary keep their name."""
    import pandas as pd

    from optrepro.analysis.tables import split_task_variants

    frame = pd.DataFrame({
        "task": ["lm", "lm", "lm", "digits"],
        "task.model.n_layer": [2, 2, 12, None],
        "task.steps": [100, 100, 100, None],
        "corner": ["adam", "eadam", "adam", "adam"],
    })
    out = split_task_variants(frame)
    assert out.task.tolist() == ["lm (task.model.n_layer=2)", "lm (task.model.n_layer=2)", "lm (task.model.n_layer=12)",
                                 "digits"]
    assert frame.task.tolist()[0] == "lm"  # the input is not changed


def test_ablation_effects_against_the_variant_are_drawn(tmp_path: Path) -> None:
    """A base task in three sizes gets one figure of the belief and placement effects per size and ε."""
    import pandas as pd

    from optrepro.analysis.figures import ablation_by_variant

    rows = [{"task": f"lm (task.model.n_layer={n})", "eps": eps, "effect": effect, "mean": 0.1 * n,
             "ci_lo": 0.1 * n - 0.05, "ci_hi": 0.1 * n + 0.05}
            for n in (2, 12, 4) for eps in ("1e-08", "1e-15") for effect in ("belief", "placement", "gap")]
    rows.append({"task": "digits", "eps": "1e-08", "effect": "belief", "mean": 1.0, "ci_lo": 0.0, "ci_hi": 2.0})
    paths = ablation_by_variant(pd.DataFrame(rows), tmp_path)
    assert list(paths) == ["lm"] and paths["lm"].is_file() and paths["lm"].with_suffix(".pdf").is_file()
