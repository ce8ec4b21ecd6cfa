"""Figures: eps sensitivity (nominal eps and effective floor), learning curves, the belief x eps
ablation on the floor axis, toy 2-D trajectories over contours (AdaBelief Figure 3) and ring-GAN
samples. Every figure is written as PNG and PDF with no time stamp in the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogLocator, NullLocator  # noqa: E402

from optrepro.analysis.load import RunsData, format_value, short_key  # noqa: E402
from optrepro.analysis.tables import (  # noqa: E402
    CORNER_TITLES,
    ablation_runs,
    main_setting,
    safe_name,
    split_task_variants,
)
from optrepro.status import RunStatus  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def save(fig: plt.Figure, out_dir: Path, stem: str) -> Path:
    """PNG and PDF of ``fig`` without creation dates; returns the PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=110, metadata={"Software": None})
    fig.savefig(
        out_dir / f"{stem}.pdf",
        metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    )
    plt.close(fig)
    return png


def _sparse_log_ticks(axis: Any) -> None:
    """Decade ticks only: minor ticks over 15 decades of eps cost seconds of text layout per figure."""
    axis.set_major_locator(LogLocator(base=10.0, numticks=8))
    axis.set_minor_locator(NullLocator())


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _counted(runs: pd.DataFrame, value_kind: str) -> pd.DataFrame:
    return runs[(runs.status == RunStatus.COMPLETED) & np.isfinite(runs[value_kind].astype(float))]


def _maybe_log_y(ax: plt.Axes, values: np.ndarray, mode: str) -> None:
    """Log y for 'min' metrics (losses, perplexities) whose plotted values span over two decades."""
    values = values[np.isfinite(values)]
    if mode != "min":
        return
    if len(values) and (values > 0).all() and values.max() / max(values.min(), 1e-300) > 100:
        ax.set_yscale("log")
        _sparse_log_ticks(ax.yaxis)


# ------------------------------------------------------------------------------------- eps
def _line_key(row: pd.Series, other: list[str]) -> str:
    parts = [f"{short_key(c)}={format_value(row[c])}" for c in other]
    return row["optimizer"] + (f" ({', '.join(parts)})" if parts else "")


def eps_sensitivity(data: RunsData, out_dir: Path, value_kind: str = "final") -> dict[str, Path]:
    """Per task with an eps sweep: metric vs eps and vs effective floor, one line per optimizer."""
    paths: dict[str, Path] = {}
    for task, frame in data.runs.groupby("task", sort=True):
        task = str(task)
        counted = _counted(frame, value_kind)
        counted = counted[np.isfinite(counted.eps.astype(float)) & (counted.eps.astype(float) > 0)]
        if counted.eps.nunique() < 2:
            continue
        other = [c for c in data.varying.get(task, []) if c not in ("opt.eps",)]
        counted = counted.assign(_line=[_line_key(r, other) for _, r in counted.iterrows()])
        metric, mode = str(frame.metric.iloc[0]), str(frame["mode"].iloc[0])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
        for ax, xcol, xlabel in (
            (axes[0], "eps", "ε (nominal, as configured)"),
            (axes[1], "effective_floor", "effective denominator floor"),
        ):
            for i, (line, sub) in enumerate(counted.groupby("_line", sort=True)):
                sub = sub[np.isfinite(sub[xcol].astype(float)) & (sub[xcol].astype(float) > 0)]
                if sub.empty:
                    continue
                agg = sub.groupby(xcol)[value_kind].agg(["mean", "min", "max"]).sort_index()
                ax.plot(
                    agg.index,
                    agg["mean"],
                    marker="o",
                    ms=3,
                    color=_color(i),
                    label=line,
                    ls="--" if str(sub.eps_placement.iloc[0]) in ("inside", "both") else "-",
                )
                ax.fill_between(agg.index, agg["min"], agg["max"], color=_color(i), alpha=0.15, lw=0)
            ax.set_xscale("log")
            _sparse_log_ticks(ax.xaxis)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"{metric} ({value_kind}; line: mean, band: min–max over seeds)")
        _maybe_log_y(axes[0], counted[value_kind].to_numpy(float), mode)
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{task}: ε sensitivity (dashed: ε inside the sqrt, or inside and outside)")
        paths[task] = save(fig, out_dir, f"eps_{safe_name(task)}")
    return paths


def ablation_floor(data: RunsData, out_dir: Path, value_kind: str = "final") -> dict[str, Path]:
    """The four ablation corners against the effective floor: coinciding placements mean only the
    floor's size matters (README, "Optimizers": the 2x2 ablation)."""
    paths: dict[str, Path] = {}
    abl = split_task_variants(ablation_runs(data.runs))
    for task, frame in abl.groupby("task", sort=True):
        task = str(task)
        counted = _counted(frame, value_kind)
        counted = counted[np.isfinite(counted.effective_floor.astype(float))]
        if counted.empty:
            continue
        metric = str(frame.metric.iloc[0])
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
        styles = {
            "adam": (0, "-"),
            "eadam": (0, "--"),
            "belief_outside": (1, "-"),
            "belief_inside": (1, "--"),
        }
        for corner, (ci, ls) in styles.items():
            sub = counted[counted.corner == corner]
            if sub.empty:
                continue
            agg = sub.groupby("effective_floor")[value_kind].agg(["mean", "min", "max"]).sort_index()
            ax.plot(agg.index, agg["mean"], marker="o", ms=3, ls=ls, color=_color(ci), label=CORNER_TITLES[corner])
            ax.fill_between(agg.index, agg["min"], agg["max"], color=_color(ci), alpha=0.15, lw=0)
        ax.set_xscale("log")
        _sparse_log_ticks(ax.xaxis)
        ax.set_xlabel("effective denominator floor (ε outside; sqrt(ε/(1−β2)) inside)")
        ax.set_ylabel(f"{metric} ({value_kind})")
        _maybe_log_y(ax, counted[value_kind].to_numpy(float), str(frame["mode"].iloc[0]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{task}: belief × ε ablation on the floor axis")
        paths[task] = save(fig, out_dir, f"ablation_floor_{safe_name(task)}")
    return paths


def ablation_by_variant(effects: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Per task run in several variants (a model-size grid: one ablation task per size, see
    ``tables.split_task_variants``): the belief and ε-placement effects with their 95% intervals against
    the variant, one line per ε — how the 2x2's answer moves with model size (or tokens)."""
    paths: dict[str, Path] = {}
    if effects.empty:
        return paths
    frame = effects[effects.effect.isin(["belief", "placement"]) & effects.task.astype(str).str.contains(" (",
                                                                                                          regex=False)]
    frame = frame.assign(base=frame.task.astype(str).str.split(" (", n=1, regex=False).str[0],
                         variant=frame.task.astype(str).str.split(" (", n=1, regex=False).str[1].str.rstrip(")"))
    for base, sub in frame.groupby("base", sort=True):
        variants = sorted(sub.variant.unique(), key=_natural_key)
        if len(variants) < 2:
            continue
        x = {v: i for i, v in enumerate(variants)}
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained", sharey=False)
        for ax, effect in zip(axes, ("belief", "placement"), strict=True):
            for ci, (eps, rows) in enumerate(sub[sub.effect == effect].groupby("eps", sort=True)):
                rows = rows.assign(_x=rows.variant.map(x)).sort_values("_x")
                mean = rows["mean"].to_numpy(float)
                err = np.vstack([mean - rows.ci_lo.to_numpy(float), rows.ci_hi.to_numpy(float) - mean])
                ax.errorbar(rows._x + 0.06 * ci, mean, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2,
                            color=_color(ci), label=f"ε = {eps}")
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=7)
            ax.set_title(f"{effect} effect")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("effect (improvement; 95% interval)")
        fig.suptitle(f"{base}: the belief × ε ablation per variant")
        paths[str(base)] = save(fig, out_dir, f"ablation_by_variant_{safe_name(str(base))}")
    return paths


def _natural_key(text: str) -> list[Any]:
    """Sort ``n_layer=12`` after ``n_layer=2``."""
    import re

    return [float(t) if t.replace(".", "", 1).isdigit() else t for t in re.split(r"(\d+(?:\.\d+)?)", text)]


# ------------------------------------------------------------------------------------- curves
def learning_curves(data: RunsData, out_dir: Path) -> dict[str, Path]:
    """Per task: primary metric vs epoch and vs wall time; one line per optimizer (its main
    setting), mean over seeds with a min–max band."""
    paths: dict[str, Path] = {}
    curves = data.curves
    if curves.empty:
        return paths
    for task, frame in data.runs.groupby("task", sort=True):
        task = str(task)
        metric = str(frame.metric.iloc[0])
        done = frame[frame.status == RunStatus.COMPLETED]
        selected: list[tuple[str, list[str]]] = []
        for optimizer, sub in done.groupby("optimizer", sort=True):
            setting = main_setting(sub)
            selected.append((str(optimizer), sub[sub.setting == setting].run.tolist()))
        task_curves = curves[(curves.task == task) & (curves.key == metric)]
        if task_curves.empty or not selected:
            continue
        plotted = task_curves[task_curves.run.isin([r for _, names in selected for r in names])]
        x_epoch = "epoch" if plotted.epoch.nunique() > 1 else "step"
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
        for i, (optimizer, run_names) in enumerate(selected):
            sub = task_curves[task_curves.run.isin(run_names)]
            if sub.empty:
                continue
            agg = sub.groupby("step").agg(
                epoch=("epoch", "mean"),
                wall=("wall_time", "mean"),
                mean=("value", "mean"),
                lo=("value", "min"),
                hi=("value", "max"),
            )
            xs = {"epoch": agg.epoch, "step": agg.index.to_series(), "wall": agg.wall}
            n = len(run_names)
            for ax, key in ((axes[0], x_epoch), (axes[1], "wall")):
                ax.plot(xs[key], agg["mean"], color=_color(i), label=f"{optimizer} (n={n})")
                ax.fill_between(xs[key], agg["lo"], agg["hi"], color=_color(i), alpha=0.15, lw=0)
        axes[0].set_xlabel(x_epoch)
        axes[1].set_xlabel("wall time (s)")
        axes[0].set_ylabel(f"{metric} (mean; band: min–max over seeds)")
        _maybe_log_y(axes[0], plotted.value.to_numpy(float), str(frame["mode"].iloc[0]))
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: learning curves")
        paths[task] = save(fig, out_dir, f"curves_{safe_name(task)}")
    return paths


# ------------------------------------------------------------------------------------- toy 2-D
def _artifact(data: RunsData, run: str, key: str) -> Path | None:
    summary = data.summaries.get(run, {})
    name = (summary.get("artifacts") or {}).get(key)
    if not name:
        return None
    row = data.runs[data.runs.run == run]
    path = data.runs_dir / str(row.path.iloc[0]) / name
    return path if path.exists() else None


def _representatives(frame: pd.DataFrame) -> list[pd.Series]:
    """One completed-or-diverged run per optimizer: its main setting, lowest seed."""
    out = []
    for _, sub in frame[frame.status != RunStatus.FAILED].groupby("optimizer", sort=True):
        setting = main_setting(sub)
        out.append(sub[sub.setting == setting].sort_values(["seed", "run"]).iloc[0])
    return out


def toy2d_trajectories(data: RunsData, out_dir: Path) -> Path | None:
    """AdaBelief Figure 3 layout: one panel per test function, one path per optimizer."""
    import torch

    from optrepro.tasks.toy2d import FUNCTIONS

    toy = [(r, data.summaries[r]["toy2d"]) for r in data.runs.run if "toy2d" in data.summaries.get(r, {})]
    if not toy:
        return None
    by_function: dict[str, list[str]] = {}
    for run, info in toy:
        by_function.setdefault(str(info.get("function")), []).append(run)
    functions = sorted(by_function)
    toy_runs = data.runs[data.runs.run.isin([r for r, _ in toy])]
    palette = {name: i for i, name in enumerate(sorted(toy_runs.optimizer.astype(str).unique()))}
    fig, axes = plt.subplots(
        1, len(functions), figsize=(4.6 * len(functions), 4.4), squeeze=False, layout="constrained"
    )
    for ax, function in zip(axes[0], functions, strict=True):
        runs = data.runs[data.runs.run.isin(by_function[function])]
        info = data.summaries[runs.run.iloc[0]]["toy2d"]
        xmin, xmax, ymin, ymax = (float(v) for v in info.get("window", (-3, 3, -3, 3)))
        if function in FUNCTIONS:
            xs = torch.linspace(xmin, xmax, 200, dtype=torch.float64)
            ys = torch.linspace(ymin, ymax, 200, dtype=torch.float64)
            gx, gy = torch.meshgrid(xs, ys, indexing="xy")
            z = FUNCTIONS[function].fn(gx, gy).numpy()
            ax.contour(gx.numpy(), gy.numpy(), np.log1p(z - z.min()), levels=25, cmap="Greys", linewidths=0.6)
        for row in _representatives(runs):
            i = palette[str(row.optimizer)]
            path = _artifact(data, row.run, "trajectory")
            if path is None:
                continue
            traj = pd.read_csv(path)[["x", "y"]].astype(float)
            traj = traj.where(np.isfinite(traj))  # a diverged path ends in inf: draw what is finite
            ax.plot(traj.x, traj.y, color=_color(i), lw=1.2, label=str(row.optimizer))
            ax.plot(traj.x.iloc[-1], traj.y.iloc[-1], "o", color=_color(i), ms=3)
        start, optimum = info.get("start"), info.get("optimum")
        if start:
            ax.plot(*start, "ks", ms=5, label="start")
        if optimum:
            ax.plot(*optimum, "k*", ms=10, label="optimum")
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_title(f"{function} ({runs.task.iloc[0]})")
        ax.set_aspect("equal", adjustable="box")
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("2-D test functions: optimizer paths (AdaBelief Figure 3 layout)")
    return save(fig, out_dir, "toy2d_trajectories")


# ------------------------------------------------------------------------------------- ring GAN
def _ring_modes(summary: dict[str, Any], cfg_task: dict[str, Any]) -> np.ndarray | None:
    """The real mixture's mode centres: from the summary if the task wrote them, else n/radius."""
    for holder in (summary.get("ring_gan") or {}, summary):
        modes = holder.get("modes") if isinstance(holder, dict) else None
        if isinstance(modes, list) and modes and isinstance(modes[0], (list, tuple)):
            return np.asarray(modes, dtype=float)
    for source in (summary.get("ring_gan") or {}, cfg_task):
        n = source.get("n_modes", source.get("num_modes", source.get("modes")))
        if isinstance(n, int) and n > 0:
            radius = float(source.get("radius", 1.0))
            angles = 2 * math.pi * np.arange(n) / n
            return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return None


def _sample_xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(generated, real or None) point sets from samples.csv (columns x,y; optional real/fake label)."""
    label = next((c for c in ("kind", "source", "type", "label", "set") if c in frame.columns), None)
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and c != label]
    xcol, ycol = ("x", "y") if {"x", "y"} <= set(frame.columns) else (numeric[0], numeric[1])
    pts = frame.rename(columns={xcol: "x", ycol: "y"})
    if label is None:
        return pts, None
    kind = pts[label].astype(str).str.lower()
    return pts[kind != "real"], pts[kind == "real"]


def ring_gan_samples(data: RunsData, out_dir: Path) -> dict[str, Path]:
    """Per task with GAN samples: one scatter per optimizer, real modes marked."""
    import yaml

    paths: dict[str, Path] = {}
    for task, frame in data.runs.groupby("task", sort=True):
        task = str(task)
        reps = [r for r in _representatives(frame) if _artifact(data, r.run, "samples") is not None]
        if not reps:
            continue
        fig, axes = plt.subplots(1, len(reps), figsize=(3.6 * len(reps), 3.8), squeeze=False, layout="constrained")
        for ax, row in zip(axes[0], reps, strict=True):
            path = _artifact(data, row.run, "samples")
            assert path is not None
            fake, real = _sample_xy(pd.read_csv(path))
            cfg = yaml.safe_load((data.runs_dir / str(row.path) / "config.yaml").read_text()) or {}
            modes = _ring_modes(data.summaries[row.run], cfg.get("task") or {})
            if real is not None and len(real):
                ax.scatter(real.x, real.y, s=2, color="0.7", label="real")
            ax.scatter(fake.x, fake.y, s=2, color=_color(0), label="generated")
            if modes is not None:
                ax.plot(modes[:, 0], modes[:, 1], "rx", ms=7, mew=1.5, label="real modes")
            metric = data.runs[data.runs.run == row.run].iloc[0]
            ax.set_title(f"{row.optimizer}\n{metric.metric}={format_value(float(metric.final))}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
            ax.legend(fontsize=6, loc="upper right")
        fig.suptitle(f"{task}: generated samples (seed {int(reps[0].seed)})")
        paths[task] = save(fig, out_dir, f"samples_{safe_name(task)}")
    return paths
