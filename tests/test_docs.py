"""The reference pages are what the code and configuration say, and the README's links lead somewhere."""

from __future__ import annotations

import re

from conftest import PROJECT, PROJECT_CONF

from lakehouse.config import load_settings
from lakehouse.docs import PAGES, stale


def test_generated_pages_describe_the_shipped_catalog_and_configuration():
    assert stale(load_settings(PROJECT_CONF, "local")) == []


def test_a_changed_rule_makes_its_page_stale(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in PAGES:
        (docs / name).write_text((PROJECT / "docs" / name).read_text(encoding="utf-8"), encoding="utf-8")
    (docs / "data-quality.md").write_text("an old page\n", encoding="utf-8")
    assert stale(load_settings(PROJECT_CONF, "local"), docs) == ["data-quality.md"]


def test_every_local_link_of_the_readme_and_docs_exists():
    for page in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md")), PROJECT / "notebooks" / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
