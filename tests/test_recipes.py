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
