"""Which runs may stand beside a published number, and for every other run what differs.

A run is compared with a paper table's number only when (a) its config is that table's recipe,
run identity for run identity (:func:`optrepro.identity.identity_config`, what the run store hashes
and the recipe audit checks): Hydra composes ``experiment=<the table's preset> task=<the run's
task> optimizer=<the published optimizer> seed=<the run's seed>`` and the two identity configs
must be equal; and (b) its ``data.json`` says the files were the real dataset
(:mod:`optrepro.data.provenance`). The presets are the recipe audit's (docs/recipes.yaml).

Every other run gets its reasons, e.g. ``profile=smoke``, ``data: CIFAR-10 files are fake or
modified: ...``, ``changed keys: task.epochs 200→1, ...``; the tables leave it out of every
published comparison and list it under the table instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from optrepro.analysis.load import NO_PROVENANCE, RunsData, configured_tasks
from optrepro.identity import identity_config

#: changed keys shown in one reason before the rest is counted
MAX_KEYS = 8
#: one table's published row: (paper, table, published optimizer name)
Ref = tuple[str, str, str]


def load_presets() -> dict[str, Any] | None:
    """The recipe audit's presets (``paper/table`` -> experiment config), or None without docs/recipes.yaml."""
    from optrepro.audit import AUDIT_YAML, load

    if not AUDIT_YAML.is_file():
        return None
    presets, _ = load(AUDIT_YAML)
    return presets


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return "null" if value is None else str(value)


_ABSENT = object()


def changed_keys(reference: Mapping[str, Any], ours: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key ref→ours`` for every leaf where two identity configs differ, in key order."""
    out: list[str] = []
    for key in sorted(set(reference) | set(ours), key=str):
        a, b = reference.get(key, _ABSENT), ours.get(key, _ABSENT)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_keys(a, b, f"{name}.")
        elif not _same(a, b):
            out.append(f"{name} {_show(a)}→{_show(b)}")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: true is not 1, 1 is 1.0, lists elementwise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _keys_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS])
    return shown + (f", … (+{len(keys) - MAX_KEYS} more)" if len(keys) > MAX_KEYS else "")


class Comparability:
    """The rule over one RunsData: ``reasons(run, ref)`` is [] for a comparable run, else what differs.

    Each distinct table recipe is composed once (Hydra, one initialization for all of them).
    """

    def __init__(self, data: RunsData, published: pd.DataFrame, presets: dict[str, Any] | None = None,
                 config_dir: Path | None = None) -> None:
        from optrepro.config import CONFIG_DIR

        self.data = data
        self.presets = load_presets() if presets is None else presets
        self.stems = {}
        for stem, name in configured_tasks(config_dir or CONFIG_DIR).items():
            self.stems.setdefault(name, stem)
        self._rows = {str(r.run): r for r in data.runs.itertuples(index=False)}
        self._recipes: dict[tuple[str, ...], dict[str, Any] | str] = {}
        self._cache: dict[tuple[str, Ref], list[str]] = {}

    def _overrides(self, run: str, ref: Ref) -> tuple[str, ...] | str:
        """The override list of the table's recipe for this run, or why there is none."""
        paper, table, optimizer = ref
        row = self._rows[run]
        scope = f"{paper}/{table}"
        if self.presets is None:
            return "no recipe presets (docs/recipes.yaml) to compare the config with"
        if scope not in self.presets:
            return f"no preset for {scope} in docs/recipes.yaml"
        stem = self.stems.get(str(row.task))
        if stem is None:
            return f"no task config named {row.task}"
        preset = self.presets[scope]
        if isinstance(preset, dict):
            if stem.split("_")[0] not in preset:
                return f"no preset for {scope} and task {stem} in docs/recipes.yaml"
            preset = preset[stem.split("_")[0]]  # null there: the task's own recipe
        overrides = [f"task={stem}", f"optimizer={optimizer}", f"seed={int(row.seed)}"]
        return tuple([f"experiment={preset}", *overrides] if preset else overrides)

    def prepare(self, pairs: list[tuple[str, Ref]]) -> None:
        """Compose every recipe these (run, ref) pairs need, in one Hydra initialization."""
        from omegaconf import OmegaConf

        from optrepro.config import group_options, train_composer

        known = set(group_options("optimizer"))
        wanted = set()
        for run, ref in pairs:
            overrides = self._overrides(run, ref)
            if isinstance(overrides, tuple) and overrides not in self._recipes:
                if ref[2] not in known:
                    self._recipes[overrides] = f"no optimizer config named {ref[2]}"
                else:
                    wanted.add(overrides)
        if not wanted:
            return
        with train_composer() as compose:
            for overrides in sorted(wanted):
                try:
                    cfg = OmegaConf.to_container(compose(list(overrides)), resolve=True)
                    self._recipes[overrides] = identity_config(cfg)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - a recipe that cannot compose compares with nothing
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    self._recipes[overrides] = f"cannot compose the table's recipe ({first})"

    def reasons(self, run: str, ref: Ref) -> list[str]:
        """[] when ``run`` may be compared with ``ref``'s number; else each thing that differs."""
        key = (run, ref)
        if key in self._cache:
            return self._cache[key]
        row = self._rows[run]
        out: list[str] = []
        overrides = self._overrides(run, ref)
        if isinstance(overrides, tuple) and overrides not in self._recipes:
            self.prepare([(run, ref)])
        recipe = self._recipes.get(overrides) if isinstance(overrides, tuple) else overrides
        if isinstance(recipe, str):
            out.append(recipe)
        elif recipe is not None:
            ours = identity_config(self.data.configs.get(run, {}))
            wanted_profile = (recipe.get("profile") or {}).get("name")
            if row.profile != wanted_profile:
                out.append(f"profile={row.profile}")
            keys = [k for k in changed_keys(recipe, ours) if not k.startswith("profile.name ")]
            if keys:
                out.append(f"changed keys: {_keys_text(keys)}")
        if not row.data_real:
            summary = str(row.data_summary)
            out.append(summary if summary == NO_PROVENANCE else f"data: {summary}")
        self._cache[key] = out
        return out

    def split(self, frame: pd.DataFrame, ref: Ref) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(comparable runs, the others with a ``reason`` column) of ``frame`` for ``ref``."""
        self.prepare([(str(r), ref) for r in frame.run])
        why = pd.Series([self.reasons(str(r), ref) for r in frame.run], index=frame.index, dtype=object)
        ok = why.map(len) == 0
        return frame[ok], frame[~ok].assign(reason=why[~ok].map("; ".join))


def not_comparable_lines(others: pd.DataFrame, ref_label: str | None = None) -> list[str]:
    """Markdown lines under a table: one per (setting, reason), naming its runs' seeds."""
    if others.empty:
        return []
    lines = []
    for (setting, reason), group in others.groupby(["setting", "reason"], sort=True):
        seeds = ", ".join(f"s{int(s)}" for s in sorted(group.seed))
        where = f" vs {ref_label}" if ref_label else ""
        lines.append(f"- {setting} ({len(group)} run{'s' if len(group) != 1 else ''}: {seeds}){where}: "
                     f"not comparable: {reason}")
    return lines


def not_comparable_footer(others: pd.DataFrame | None, by_ref: bool = False) -> list[str]:
    """The lines under a table naming the runs left out of its published comparison, and why."""
    if others is None or others.empty:
        return []
    lines: list[str] = []
    groups = others.groupby("published_ref", sort=True) if by_ref else [(None, others)]
    for ref, group in groups:
        lines += not_comparable_lines(group, ref)
    return ["Not compared with the published numbers:", "", *lines]


__all__ = ["Comparability", "Ref", "changed_keys", "load_presets", "not_comparable_footer", "not_comparable_lines"]
