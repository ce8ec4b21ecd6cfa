"""Run folders -> a runs table (one row per run) and a long curves table (one row per logged value).

A folder is a run when it holds ``config.yaml`` or ``summary.json``; it counts only when
``summary.json`` exists and parses (the run store's rule: the run is complete only then). Folders
without it are listed in ``RunsData.incomplete`` and never enter a statistic; so are damaged ones
(an unreadable or non-UTF-8 file, a garbled metrics row, a metrics.jsonl that no longer matches the
digest its summary.json recorded, a symlink, a folder outside ``runs_dir``) and folders of an older
config layout, with the reason in ``state``. One bad folder never stops the analysis of the others.

Runs are grouped into *settings*: within one task, runs of the same optimizer config whose
hyperparameters differ (an eps sweep, another lr, another profile) are different rows of every
table. ``setting`` is the readable label, e.g. ``adam (eps=1e-16)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from optrepro.errors import UserError
from optrepro.identity import CONFIG_LAYOUT, identity_config
from optrepro.status import RunStatus

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: Optimizer config keys that name the config rather than set a hyperparameter.
_OPT_SKIP = ("name", "config_name")
#: Task config keys that name the task.
_TASK_SKIP = ("name", "kind")
#: Top-level keys flattened on their own (``opt.*``, ``task.*``) or not a setting (the seed). What does not
#: change what a run computes is dropped first, by the run identity (optrepro.identity).
_TOP_SKIP = ("task", "optimizer", "seed", "config_layout")

RUN_COLUMNS = [
    "run",
    "path",
    "task",
    "task_kind",
    "optimizer",
    "opt_class",
    "family",
    "second_moment",
    "eps_placement",
    "lr",
    "eps",
    "beta1",
    "beta2",
    "weight_decay",
    "effective_floor",
    "seed",
    "status",
    "reason",
    "metric",
    "mode",
    "final",
    "best",
    "best_epoch",
    "steps",
    "epochs",
    "wall_time",
    "diverged_step",
    "device",
    "precision",
    "git_sha",
    "git_dirty",
    "torch",
    "cuda",
    "device_name",
    "hostname",
    "profile",
    "data_dataset",
    "data_kind",
    "data_real",
    "data_summary",
]
#: what a run folder without data.json (written before provenance was recorded) says about its data
NO_PROVENANCE = "no data provenance recorded"
INCOMPLETE_COLUMNS = ["run", "path", "task", "optimizer", "seed", "state", "last_step", "last_epoch"]
CURVE_COLUMNS = [
    "run",
    "task",
    "optimizer",
    "setting",
    "seed",
    "status",
    "step",
    "epoch",
    "wall_time",
    "key",
    "value",
]


@dataclass
class RunsData:
    """Everything the tables and figures are built from."""

    runs_dir: Path
    runs: pd.DataFrame  # complete runs, RUN_COLUMNS + setting columns + "setting"
    curves: pd.DataFrame  # CURVE_COLUMNS, complete runs only
    incomplete: pd.DataFrame  # INCOMPLETE_COLUMNS
    #: per task, the hyperparameter columns that differ between runs of one optimizer config
    varying: dict[str, list[str]] = field(default_factory=dict)
    #: per run name, the parsed summary (for artifacts: trajectories, samples)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per run name, its config.yaml (what the comparability rule composes the table's recipe against)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def counted(self) -> pd.DataFrame:
        """Runs whose metric enters a mean: completed with a finite final value."""
        return self.runs[(self.runs.status == RunStatus.COMPLETED) & np.isfinite(self.runs.final.astype(float))]


# ------------------------------------------------------------------------------------- reading
def find_run_dirs(runs_dir: Path) -> list[Path]:
    """Every folder under ``runs_dir`` holding config.yaml or summary.json (Hydra's folders skipped)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found: set[Path] = set()
    for name in ("config.yaml", "summary.json"):
        for path in runs_dir.rglob(name):
            rel = path.relative_to(runs_dir).parts
            if any(part in (".hydra", ".sweeps") for part in rel):
                continue
            found.add(path.parent)
    return sorted(found)


class DamagedRunError(Exception):
    """A run folder whose files do not read back as the run store wrote them; the message says which."""


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None when it is missing; a symlink is damage (runs hold only regular files)."""
    if path.is_symlink():
        raise DamagedRunError(f"{path.name} is a symlink")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedRunError(f"{path.name} is unreadable ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_text(path: Path) -> str | None:
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedRunError(f"{path.name} is not UTF-8 text") from None


def _read_yaml(path: Path, strict: bool = False) -> dict[str, Any]:
    """config.yaml as a dict; {} when missing or (unless ``strict``) damaged."""
    try:
        text = _read_text(path)
        if text is None:
            return {}
        data = yaml.load(text, Loader=_Loader)
        if not isinstance(data, dict):
            raise DamagedRunError(f"{path.name} is not a mapping")
    except yaml.YAMLError:
        if strict:
            raise DamagedRunError(f"{path.name} is not valid YAML") from None
        return {}
    except DamagedRunError:
        if strict:
            raise
        return {}
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = _read_text(path)
        data = json.loads(text) if text is not None else None
    except (DamagedRunError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl rows. A last line cut by a kill ends the file (as RunDir.read_metrics does); any
    other line that is not a JSON object ends it too, or with ``strict`` raises DamagedRunError."""
    try:
        data = _read_bytes(path)
    except DamagedRunError:
        if strict:
            raise
        return []
    if data is None:
        return []
    rows = []
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            if strict and n < len(lines):
                raise DamagedRunError(f"{path.name} line {n} is not a JSON row") from None
            break
        rows.append(row)
    return rows


def _check_run(folder: Path, runs_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """config, summary (None: the run is not finished) and metrics of a folder; DamagedRunError when
    any of them is damaged or the folder lies outside ``runs_dir``."""
    if not folder.resolve().is_relative_to(runs_dir.resolve()):
        raise DamagedRunError(f"folder lies outside {runs_dir} (through a symlink)")
    cfg = _read_yaml(folder / "config.yaml", strict=True)
    metrics = read_metrics(folder / "metrics.jsonl", strict=True)
    text = _read_text(folder / "summary.json")
    if text is None:
        return cfg, None, metrics
    try:
        summary = json.loads(text)
    except json.JSONDecodeError:
        raise DamagedRunError("summary.json unreadable (not JSON)") from None
    if not isinstance(summary, dict) or "status" not in summary:
        raise DamagedRunError("summary.json unreadable (not a run summary)")
    if "checksum" in summary:
        from optrepro.runs import json_checksum

        if json_checksum(summary) != summary["checksum"]:
            raise DamagedRunError("summary.json fails its checksum (changed after the run)")
    digest = summary.get("metrics_sha256")
    if digest is not None and hashlib.sha256(_read_bytes(folder / "metrics.jsonl") or b"").hexdigest() != digest:
        raise DamagedRunError("metrics.jsonl does not match the digest in summary.json (changed after the run)")
    for name in (summary.get("artifacts") or {}).values():  # what the figures read: trajectories, samples
        data = _read_bytes(folder / str(name))
        if data is not None and str(name).endswith(".csv"):
            try:
                pd.read_csv(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001 - any parse error is damage
                raise DamagedRunError(f"{name} is unreadable ({type(exc).__name__})") from None
    return cfg, summary, metrics


def _number(value: Any) -> float:
    """A float, or NaN for None / non-numbers (so columns stay numeric)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _scalar(value: Any) -> Any:
    """A hashable, printable value for a setting column (lists become '[0.9, 0.999]')."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_scalar(v)) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _flatten(prefix: str, node: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(_flatten(f"{prefix}{key}.", value))
        else:
            out[f"{prefix}{key}"] = _scalar(value)
    return out


def settings_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a run that can distinguish settings: ``opt.*``, ``task.*``, ``cfg.*``.

    Taken from the run's identity config (optrepro.identity, the definition the run hash uses):
    where data lives or how it is loaded (``root``, ``num_workers``, ...) is left out, so the same
    config run on two machines stays one setting, and anything that changes the hash separates settings.
    """
    return _settings_tree(identity_config(cfg))


def _settings_tree(cfg: dict[str, Any]) -> dict[str, Any]:
    out = _flatten("opt.", cfg.get("optimizer") or {}, _OPT_SKIP)
    out.update(_flatten("task.", cfg.get("task") or {}, _TASK_SKIP))
    out.update(_flatten("cfg.", cfg, _TOP_SKIP))
    return out


def read_data_record(folder: Path) -> dict[str, Any]:
    """data.json's dataset, kind, verdict and summary; a missing or damaged one is never real."""
    if not os.path.lexists(folder / "data.json"):
        return {"data_dataset": None, "data_kind": None, "data_real": False, "data_summary": NO_PROVENANCE}
    record = _read_json(folder / "data.json")
    from optrepro.runs import json_checksum

    if record is None or ("checksum" in record and json_checksum(record) != record["checksum"]):
        return {"data_dataset": None, "data_kind": None, "data_real": False,
                "data_summary": "data.json is damaged (unreadable or fails its checksum)"}
    return {"data_dataset": record.get("dataset"), "data_kind": record.get("kind"),
            "data_real": record.get("real") is True, "data_summary": str(record.get("summary") or "")}


def _run_row(
    folder: Path, runs_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], env: dict[str, Any]
) -> dict[str, Any]:
    opt = cfg.get("optimizer") or {}
    task_cfg = cfg.get("task") or {}
    factors = summary.get("factors") or {}
    metric = summary.get("metric")
    final = summary.get("final") or {}
    best = summary.get("best") or {}
    betas = opt.get("betas")
    betas = list(betas) if isinstance(betas, (list, tuple)) and len(betas) == 2 else [None, None]
    eps = factors.get("eps") if factors.get("eps") is not None else opt.get("eps")
    return {
        "run": folder.name,
        "path": folder.relative_to(runs_dir).as_posix(),
        "task": str(summary.get("task") or task_cfg.get("name") or "?"),
        "task_kind": task_cfg.get("kind"),
        "optimizer": str(summary.get("optimizer") or opt.get("config_name") or opt.get("name") or "?"),
        "opt_class": opt.get("name"),
        "family": factors.get("family"),
        "second_moment": factors.get("second_moment"),
        "eps_placement": factors.get("eps_placement"),
        "lr": _number(opt.get("lr")),
        "eps": _number(eps),
        "beta1": _number(betas[0]),
        "beta2": _number(betas[1]),
        "weight_decay": _number(opt.get("weight_decay")),
        "effective_floor": _number(factors.get("effective_floor")),
        "seed": int(summary.get("seed", cfg.get("seed", -1))),
        "status": str(summary.get("status")),
        "reason": summary.get("reason"),
        "metric": metric,
        "mode": summary.get("mode") or "max",
        "final": _number(final.get(metric)) if metric else math.nan,
        "best": _number(best.get("value")),
        "best_epoch": _number(best.get("epoch")),
        "steps": _number(summary.get("steps")),
        "epochs": _number(summary.get("epochs")),
        "wall_time": _number(summary.get("wall_time")),
        "diverged_step": _number(summary.get("diverged_step")),
        # a constant predictor's score (fine-tuning tasks: their summary's chance_level); NaN elsewhere
        "chance_level": _number(summary.get("chance_level")),
        "device": summary.get("device") or env.get("device"),
        "precision": summary.get("precision"),
        "git_sha": env.get("git_sha"),
        "git_dirty": env.get("git_dirty"),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "device_name": env.get("device_name"),
        "hostname": env.get("hostname"),
        "profile": str((cfg.get("profile") or {}).get("name") or "?"),
        **read_data_record(folder),
    }


def _incomplete_row(folder: Path, runs_dir: Path, cfg: dict[str, Any], note: str | None = None) -> dict[str, Any]:
    rows = read_metrics(folder / "metrics.jsonl")
    last = rows[-1] if rows else {}
    state = note or (
        "running or killed (run.lock present)" if (folder / "run.lock").exists() else "interrupted (no summary.json)"
    )
    task = (cfg.get("task") or {}).get("name")
    opt = cfg.get("optimizer") or {}
    return {
        "run": folder.name,
        "path": folder.relative_to(runs_dir).as_posix(),
        "task": task if task is not None else "?",
        "optimizer": opt.get("config_name") or opt.get("name") or "?",
        "seed": cfg.get("seed"),
        "state": state,
        "last_step": _number(last.get("step")),
        "last_epoch": _number(last.get("epoch")),
    }


# ------------------------------------------------------------------------------------- settings
def _varying_columns(runs: pd.DataFrame, setting_cols: list[str]) -> dict[str, list[str]]:
    """Per task: setting columns taking more than one value within one optimizer config."""
    out: dict[str, list[str]] = {}
    for task, frame in runs.groupby("task", sort=True):
        cols = []
        for col in setting_cols:
            per_opt = frame.groupby("optimizer")[col].agg(lambda s: s.map(_identity_text).nunique())
            if (per_opt > 1).any():
                cols.append(col)
        out[str(task)] = cols
    return out


def _identity_text(value: Any) -> str:
    """Exact text of a setting value (NaN and None alike), for telling settings apart."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    return repr(value)


def format_value(value: Any) -> str:
    """Compact, stable text for a hyperparameter value (1e-08 -> 1e-08, 0.001 -> 0.001)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "none"
        return f"{value:.6g}"
    if value is None:
        return "none"
    return str(value)


def short_key(col: str) -> str:
    """``opt.eps`` -> ``eps``; task and other keys keep their prefix."""
    return col[4:] if col.startswith("opt.") else col


def _setting_labels(runs: pd.DataFrame, varying: dict[str, list[str]]) -> pd.Series:
    labels = []
    for _, row in runs.iterrows():
        cols = varying.get(row["task"], [])
        parts = [f"{short_key(c)}={format_value(row[c])}" for c in cols if _identity_text(row[c]) != "none"]
        labels.append(row["optimizer"] + (f" ({', '.join(parts)})" if parts else ""))
    return pd.Series(labels, index=runs.index, dtype=object)


def configured_tasks(config_dir: Path | None) -> dict[str, str]:
    """Task config stem -> its task name (or the stem when the name is interpolated)."""
    out: dict[str, str] = {}
    if config_dir is None or not (Path(config_dir) / "task").is_dir():
        return out
    for path in sorted((Path(config_dir) / "task").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            data = {}
        name = data.get("name") if isinstance(data, dict) else None
        out[path.stem] = name if isinstance(name, str) and "${" not in name else path.stem
    return out


# ------------------------------------------------------------------------------------- entry
def _check_layout(folder: Path, cfg: dict[str, Any]) -> None:
    """Refuse run folders of another config layout: their keys and hashes mean other things."""
    if cfg and cfg.get("config_layout") != CONFIG_LAYOUT:
        raise UserError(
            f"run folder {folder} was written with config layout {cfg.get('config_layout', 1)}, this code reads "
            f"layout {CONFIG_LAYOUT} (other keys and run hashes); rerun it or move it out of the runs folder"
        )


def load_runs(runs_dir: Path | str) -> RunsData:
    """Read every run folder under ``runs_dir`` (recursively)."""
    runs_dir = Path(runs_dir)
    rows: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    incomplete: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    curve_parts: list[pd.DataFrame] = []
    for folder in find_run_dirs(runs_dir):
        try:
            cfg, summary, metrics = _check_run(folder, runs_dir)
            _check_layout(folder, cfg)
            if summary is None:
                incomplete.append(_incomplete_row(folder, runs_dir, cfg))
                continue
            env = _read_json(folder / "env.json") or {}
            row = _run_row(folder, runs_dir, cfg, summary, env)
            curve = _curve_frame(row, metrics) if metrics else None
            setting = settings_of(cfg)
        except UserError as exc:  # another config layout: never mixed with these runs
            incomplete.append(_incomplete_row(folder, runs_dir, {}, f"refused: {exc}"))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad folder is listed, never fatal to the analysis
            reason = str(exc) if isinstance(exc, DamagedRunError) else f"unreadable ({type(exc).__name__}: {exc})"
            incomplete.append(_incomplete_row(folder, runs_dir, _read_yaml(folder / "config.yaml"),
                                              f"damaged: {reason}"))
            continue
        rows.append(row)
        settings.append(setting)
        summaries[row["run"]] = summary
        configs[row["run"]] = cfg
        if curve is not None:
            curve_parts.append(curve)

    if rows:
        runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
        setting_frame = pd.DataFrame(settings, index=runs.index)
        setting_cols = sorted(setting_frame.columns)
        runs = pd.concat([runs, setting_frame[setting_cols]], axis=1)
        varying = _varying_columns(runs, setting_cols)
        runs["setting"] = _setting_labels(runs, varying)
        runs = runs.sort_values(["task", "optimizer", "setting", "seed", "run"], kind="stable")
        runs = runs.reset_index(drop=True)
    else:
        runs = pd.DataFrame(columns=[*RUN_COLUMNS, "setting"])
        varying = {}
    if curve_parts:
        curves = pd.concat(curve_parts, ignore_index=True)
        label = dict(zip(runs.run, runs.setting, strict=True))
        curves["setting"] = curves["run"].map(label)
        curves = (
            curves[CURVE_COLUMNS]
            .sort_values(["task", "setting", "seed", "run", "step", "key"], kind="stable")
            .reset_index(drop=True)
        )
    else:
        curves = pd.DataFrame(columns=CURVE_COLUMNS)
    incomplete_frame = pd.DataFrame(incomplete, columns=INCOMPLETE_COLUMNS)
    return RunsData(runs_dir, runs, curves, incomplete_frame, varying, summaries, configs)


def _curve_frame(row: dict[str, Any], metrics: list[dict[str, Any]]) -> pd.DataFrame:
    """One run's metrics.jsonl in long form: one row per (eval point, key)."""
    records = []
    for m in metrics:
        step, epoch, wall = _number(m.get("step")), _number(m.get("epoch")), _number(m.get("wall_time"))
        for key, value in m.items():
            if key in ("step", "epoch", "wall_time"):
                continue
            number = _number(value)
            if isinstance(value, str) and math.isnan(number):
                continue  # text fields are not curves
            records.append((step, epoch, wall, key, number))
    frame = pd.DataFrame(records, columns=["step", "epoch", "wall_time", "key", "value"])
    for col in ("run", "task", "optimizer", "seed", "status"):
        frame[col] = row[col]
    frame["setting"] = None
    return frame
