"""The recipe audit: every knob of every paper table, reference value and source beside ours.

``docs/recipes.yaml`` is the data: one entry per (paper table, tasks, optimizer, knob) with the value
the reference *code* ran (``reference``, with ``source`` = repo@commit path:line), the paper text's
value where it differs (``text``), our value (``ours``), ``status`` (match | deviation | missing) and a
one-line ``note``. Every entry that is not a match says why no knob reproduces the reference
(``no_knob``: ``<reason>: <sentence>``, the reason one of ``NO_KNOB_REASONS``).
``docs/recipes.md`` is rendered from it. Where ``knob`` is a key of our composed config, ``ours`` must
equal what Hydra composes for that table's preset; the tests check every such entry, so a config change
that the table does not record fails the suite.

    python -m optrepro.audit check     # composed configs vs the table (exit 1 on a difference)
    python -m optrepro.audit render    # rewrite docs/recipes.md from docs/recipes.yaml

A tool of the repository (it reads docs/ beside src/), not of the installed package.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
AUDIT_YAML = REPO / "docs" / "recipes.yaml"
AUDIT_MD = REPO / "docs" / "recipes.md"
STATUSES = ("match", "deviation", "missing")
#: Why a deviation has no knob that reproduces the reference (the ``no_knob`` field's first word).
NO_KNOB_REASONS = {
    "unseeded": "the reference runs were unseeded or seeded into other RNG streams: no seed reproduces them",
    "nondeterministic": "the reference's numbers depend on non-deterministic kernels or run order",
    "hardware": "the reference ran on hardware (GPU count, device) that a config cannot supply",
    "no_reference": "no reference code or run exists for it, so there is nothing to reproduce",
    "no_effect": "a label or bookkeeping difference: the computed numbers are the same",
    "ambiguous": "the reference's own sources disagree; both values are one override away",
    "not_built": "a knob is feasible but not built yet (the sentence says what it would change)",
    "by_design": "the preset deliberately runs another value; the reference's is one override away (named)",
}
_ABSENT = object()


@dataclass(frozen=True)
class Entry:
    paper: str
    table: str
    tasks: tuple[str, ...]
    optimizer: str  # our optimizer config name, or "all" for a task-level knob
    knob: str  # our config key (optimizer.eps, task.epochs, precision) or protocol.<name>
    reference: Any
    source: str
    text: Any
    ours: Any
    status: str
    note: str | None
    no_knob: str | None = None  # "<reason>: <why>", required when status is not match

    @property
    def no_knob_reason(self) -> str | None:
        return self.no_knob.split(":", 1)[0].strip() if self.no_knob else None

    @property
    def scope(self) -> str:
        return f"{self.paper}/{self.table}"


def load(path: Path = AUDIT_YAML) -> tuple[dict[str, Any], list[Entry]]:
    """The presets (which experiment config each paper table runs) and the entries."""
    data = yaml.safe_load(path.read_text())
    entries = []
    for raw in data["entries"]:
        tasks = raw["tasks"] if isinstance(raw["tasks"], list) else [raw["tasks"]]
        entry = Entry(raw["paper"], raw["table"], tuple(tasks), raw["optimizer"], raw["knob"], raw["reference"],
                      raw["source"], raw.get("text"), raw["ours"], raw["status"], raw.get("note"),
                      raw.get("no_knob"))
        if entry.status not in STATUSES:
            raise ValueError(f"{path}: status must be one of {STATUSES}, got {entry.status!r} ({entry.knob})")
        entries.append(entry)
    return data["presets"], entries


def preset_for(presets: dict[str, Any], scope: str, task: str) -> str | None:
    """The experiment config that runs ``task`` for this paper table (None: the task's own recipe)."""
    preset = presets[scope]
    if isinstance(preset, dict):
        return preset[task.split("_")[0]]
    return preset


def overrides_for(presets: dict[str, Any], entry: Entry, task: str) -> list[str]:
    overrides = [f"task={task}"]
    experiment = preset_for(presets, entry.scope, task)
    if experiment:
        overrides.insert(0, f"experiment={experiment}")
    if entry.optimizer != "all":
        overrides.append(f"optimizer={entry.optimizer}")
    return overrides


def composed_configs(presets: dict[str, Any], entries: list[Entry]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Compose each distinct override list once (Hydra's own composition, nothing applied after)."""
    from omegaconf import OmegaConf

    from optrepro.config import train_composer

    wanted = {tuple(overrides_for(presets, e, t)) for e in entries for t in e.tasks}
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    with train_composer() as compose:
        for overrides in sorted(wanted):
            out[overrides] = OmegaConf.to_container(compose(overrides), resolve=True)  # type: ignore[assignment]
    return out


def select(cfg: dict[str, Any], knob: str) -> Any:
    node: Any = cfg
    for part in knob.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def same(a: Any, b: Any) -> bool:
    """Equal as config values: numbers to float rounding, lists elementwise, strings exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def is_literal(value: Any) -> bool:
    """A value the table can compare with a config value (not a sentence describing one)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_literal(v) for v in value)
    return isinstance(value, str) and " " not in value.strip()


def no_knob_problem(e: Entry) -> str | None:
    """What is wrong with an entry's ``no_knob`` (None: nothing): a non-match must name a reason of
    :data:`NO_KNOB_REASONS` and a sentence after it; a match has none."""
    if e.status == "match":
        return "a match needs no no_knob" if e.no_knob else None
    if not e.no_knob or ":" not in e.no_knob:
        return f"a {e.status} needs no_knob: '<reason>: <why>' (reasons: {', '.join(NO_KNOB_REASONS)})"
    reason, why = (part.strip() for part in e.no_knob.split(":", 1))
    if reason not in NO_KNOB_REASONS:
        return f"no_knob reason {reason!r} is not one of {', '.join(NO_KNOB_REASONS)}"
    if len(why.split()) < 4:
        return f"no_knob {reason}: says too little ({why!r}); name why no knob is possible"
    return None


def problems(presets: dict[str, Any], entries: list[Entry]) -> Iterator[str]:
    """Each way the table and the composed configs disagree, one line each."""
    for e in entries:
        found = no_knob_problem(e)
        if found:
            yield f"{e.scope} {','.join(e.tasks)} {e.optimizer} {e.knob}: {found}"
    configs = composed_configs(presets, entries)
    for e in entries:
        for task in e.tasks:
            cfg = configs[tuple(overrides_for(presets, e, task))]
            value = select(cfg, e.knob)
            where = f"{e.scope} {task} {e.optimizer} {e.knob}"
            if value is _ABSENT:
                if not e.knob.startswith("protocol."):
                    yield f"{where}: not a key of the composed config (name it protocol.* or fix the key)"
                continue
            if not same(value, e.ours):
                yield f"{where}: table says ours={e.ours!r}, composed config has {value!r}"
            if is_literal(e.reference) and e.reference is not None:
                expected = "match" if same(e.reference, value) else "deviation"
                if e.status != expected:
                    yield f"{where}: reference {e.reference!r} vs ours {value!r} is a {expected}, table says {e.status}"


# ---------------------------------------------------------------------------------------- render
def _cell(value: Any) -> str:
    if value is None:
        return "—"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return text.replace("|", "\\|").replace("\n", " ")


def render(presets: dict[str, Any], entries: list[Entry]) -> str:
    counts = Counter(e.status for e in entries)
    lines = [
        "# Recipe audit: the papers' code beside our configs",
        "",
        "Generated from [`recipes.yaml`](recipes.yaml) by `python -m optrepro.audit render`; do not edit by hand.",
        "`make test` checks that every entry whose knob is a config key equals what Hydra composes for that",
        "table's preset (`python -m optrepro.audit check`).",
        "",
        f"{len(entries)} knobs audited: {counts['match']} match, {counts['deviation']} deviate, "
        f"{counts['missing']} have no key of ours. *reference* is what the reference code ran (source: repo@commit "
        "path:line); *text* is the paper's or README's value where it differs from the code.",
        "",
    ]
    reasons = Counter(e.no_knob_reason for e in entries if e.status != "match")
    if reasons:
        lines += ["Why the deviations have no knob that reproduces the reference:", ""]
        lines += [f"- {reasons[r]} {r}: {text}" for r, text in NO_KNOB_REASONS.items() if reasons[r]]
        lines.append("")
    scopes = sorted({e.scope for e in entries})
    for scope in scopes:
        mine = [e for e in entries if e.scope == scope]
        preset = presets[scope]
        lines += [f"## {scope}", "", f"Preset: `{preset}`" if not isinstance(preset, dict) else
                  "Presets: " + ", ".join(f"{k}* → `{v}`" for k, v in preset.items()), ""]
        dev = [e for e in mine if e.status != "match"]
        lines += [f"{len(mine)} knobs, {len(dev)} deviating or missing.", ""]
        lines += ["| tasks | optimizer | knob | reference | text | ours | status | note | no knob because | source |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        order = {"deviation": 0, "missing": 1, "match": 2}
        for e in sorted(mine, key=lambda e: (order[e.status], e.optimizer, e.knob)):
            status = f"**{e.status}**" if e.status != "match" else e.status
            note = _cell(e.note) if e.note else ""
            lines.append(f"| {', '.join(e.tasks)} | {e.optimizer} | `{e.knob}` | {_cell(e.reference)} "
                         f"| {_cell(e.text)} | {_cell(e.ours)} | {status} | {note} "
                         f"| {_cell(e.no_knob) if e.no_knob else ''} | {e.source} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m optrepro.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check", "render"))
    args = parser.parse_args(argv)
    presets, entries = load()
    if args.command == "render":
        AUDIT_MD.write_text(render(presets, entries))
        print(f"wrote {AUDIT_MD} ({len(entries)} entries)")
        return
    found = list(problems(presets, entries))
    for line in found:
        print(line)
    print(f"{len(entries)} entries, {len(found)} problem(s)")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
