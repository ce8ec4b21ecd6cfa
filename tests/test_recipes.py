"""The recipe audit (docs/recipes.yaml) against what Hydra composes, and docs/recipes.md against the data."""

from __future__ import annotations

import dataclasses

import pytest

from optrepro import audit


@pytest.fixture(scope="module")
def audit_data() -> tuple[dict, list[audit.Entry]]:
    return audit.load()


def test_composed_configs_equal_the_recipe_table(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    presets, entries = audit_data
    assert len(entries) > 400
    found = list(audit.problems(presets, entries))
    assert not found, "\n".join(found)


def test_a_config_change_the_table_does_not_record_is_caught(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    presets, entries = audit_data
    [eps] = [e for e in entries
             if e.scope == "eadam2020/table3" and e.optimizer == "eadam" and e.knob == "optimizer.eps"]
    stale = dataclasses.replace(eps, ours=1e-8, status="deviation")  # what the table said before the audit's fix
    found = list(audit.problems(presets, [stale]))
    assert any("table says ours=1e-08, composed config has 1e-16" in line for line in found)
    wrong_status = dataclasses.replace(eps, status="deviation")
    assert any("is a match, table says deviation" in line for line in audit.problems(presets, [wrong_status]))


def test_recipes_md_is_rendered_from_the_data(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    presets, entries = audit_data
    assert audit.AUDIT_MD.read_text() == audit.render(presets, entries), "run: python -m optrepro.audit render"


def test_every_status_is_known_and_sources_name_a_commit(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    _, entries = audit_data
    assert {e.status for e in entries} <= set(audit.STATUSES)
    assert all("@" in e.source for e in entries), [e.source for e in entries if "@" not in e.source][:3]


def test_every_deviation_says_why_no_knob_reproduces_the_reference(
        audit_data: tuple[dict, list[audit.Entry]]) -> None:
    _, entries = audit_data
    found = [f"{e.scope} {e.knob} ({e.optimizer}): {problem}" for e in entries
             if (problem := audit.no_knob_problem(e))]
    assert not found, "\n".join(found)
    assert {e.no_knob_reason for e in entries if e.status != "match"} <= set(audit.NO_KNOB_REASONS)


def test_a_deviation_without_a_reason_is_caught(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    _, entries = audit_data
    deviation = next(e for e in entries if e.status == "deviation")
    match = next(e for e in entries if e.status == "match")
    assert "needs no_knob" in (audit.no_knob_problem(dataclasses.replace(deviation, no_knob=None)) or "")
    vague = dataclasses.replace(deviation, no_knob="later: some day it will be")
    assert "not one of" in (audit.no_knob_problem(vague) or "")
    assert "says too little" in (audit.no_knob_problem(dataclasses.replace(deviation, no_knob="hardware: GPUs")) or "")
    assert audit.no_knob_problem(dataclasses.replace(match, no_knob="hardware: a reason on a match entry")) is not None


def test_the_readmes_audit_counts_are_the_tables(audit_data: tuple[dict, list[audit.Entry]]) -> None:
    """The README quotes the audit's counts; they must be today's, not an earlier round's."""
    import re
    from collections import Counter

    from conftest import REPO

    text = " ".join((REPO / "README.md").read_text().split())
    quoted = re.search(r"Today: (\d+) match, (\d+) deviate, (\d+) have no key of ours", text)
    assert quoted, "README.md lost its 'Today: N match, N deviate, N have no key of ours' sentence"
    counts = Counter(e.status for e in audit_data[1])
    assert tuple(map(int, quoted.groups())) == (counts["match"], counts["deviation"], counts["missing"])
    assert all(e.no_knob_reason != "not_built" for e in audit_data[1]) == ("No deviation is left for want" in text)
