"""The reference pages and notebooks are what the code and configuration say (notebooks committed without
outputs), and the README's links lead somewhere."""

from __future__ import annotations

import re

import pytest
from conftest import PROJECT, PROJECT_CONF

from lakehouse import catalog, docs
from lakehouse.catalog import TableRef
from lakehouse.config import LEARNER_PARAMETERS, ModelSpec, load_settings
from lakehouse.docs import stale
from lakehouse.notebooks import has_outputs


def test_generated_pages_describe_the_shipped_catalog_and_configuration():
    assert stale(load_settings(PROJECT_CONF, "local")) == []


def test_a_changed_rule_makes_its_page_stale():
    settings = load_settings(PROJECT_CONF, "local")
    name, table = next((n, t) for n, t in sorted(settings.dq.items()) if t.rules)
    rule = table.rules[0]
    changed_rule = rule.model_copy(update={"threshold": 0.5 if rule.threshold != 0.5 else 0.25})
    changed_table = table.model_copy(update={"rules": [changed_rule, *table.rules[1:]]})
    changed = settings.model_copy(update={"dq": {**settings.dq, name: changed_table}})
    assert stale(changed, PROJECT / "docs") == ["data-quality.md"]


def test_every_table_of_the_catalog_is_on_the_tables_page():
    refs = []
    for value in vars(catalog).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        refs += [ref for ref in items if isinstance(ref, TableRef)]
    page = (PROJECT / "docs" / "tables.md").read_text(encoding="utf-8")
    assert len(refs) > 30
    assert [ref.qualified for ref in refs if f"`{ref.qualified}`" not in page] == []


def test_an_undescribed_vocabulary_file_fails_loudly(monkeypatch):
    monkeypatch.delitem(docs.VOCABULARY_USE, "sex.csv")
    with pytest.raises(KeyError, match="conf/vocab/sex.csv"):
        docs.vocabularies_page(load_settings(PROJECT_CONF, "local"))


def test_the_learner_parameters_are_model_spec_fields_and_cover_them():
    learners = ModelSpec.model_fields["type"].annotation.__args__
    assert set(LEARNER_PARAMETERS) == set(learners)
    used = {p for params in LEARNER_PARAMETERS.values() for p in params}
    assert used == set(ModelSpec.model_fields) - {"type"}


def test_every_local_link_of_the_readme_and_docs_exists():
    for page in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md")), PROJECT / "notebooks" / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_five_notebooks_are_committed_without_outputs():
    notebooks = {p.stem: p for p in sorted((PROJECT / "notebooks").glob("*.ipynb"))}
    assert list(notebooks) == ["01_region_tour", "02_person_timeline", "03_cohort_from_yaml",
                               "04_train_and_compare", "05_score_and_predictions"]
    assert [name for name, path in notebooks.items() if has_outputs(path)] == []
