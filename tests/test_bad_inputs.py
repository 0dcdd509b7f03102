"""The bad-input corpus (tests/corpus.py) run end to end: two ingest runs (the second delivers duplicates and a
renamed file) and a refine, on a private root. Every case ends as the corpus says: a ledger status and reason
for a bad file, quarantine records with their reason at their file and line for bad lines, a DQ flag for an
implausible value; nothing is lost (the ledger reconciles against bronze and quarantine) and nothing crashes.
A configuration pointing at a missing folder is refused before anything is touched."""

from __future__ import annotations

from pathlib import Path

import corpus
import pytest
from conftest import CONF
from pyspark.sql import functions as F

from lakehouse import io, pipeline
from lakehouse.bronze.reconcile import reconcile
from lakehouse.catalog import BRONZE, ENCOUNTER, INGEST_LEDGER, PERSON, QUARANTINE
from lakehouse.cli import main


def _relative(path: str) -> str:
    return path.split("/landing/", 1)[1]


@pytest.fixture(scope="module")
def corpus_run(region, spark, settings, tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    landing = base / "landing"
    local = settings.model_copy(update={"root": str(base / "root")})
    cases = corpus.build(landing, region.landing)
    first = pipeline.run_ingest(spark, local, str(landing))
    cases += corpus.day_two(landing)
    second = pipeline.run_ingest(spark, local, str(landing))
    pipeline.run_refine(spark, local)
    ledger = {_relative(r.path): r for r in io.read(spark, INGEST_LEDGER, local.root).collect()}
    quarantined: dict[str, dict[int, str]] = {}
    for r in io.read(spark, QUARANTINE, local.root).where("layer = 'bronze'").collect():
        quarantined.setdefault(_relative(r.source_file), {})[r.source_line] = r.reason
    return local, cases, ledger, quarantined, (first, second)


def test_the_corpus_has_twenty_kinds_and_every_one_ends_as_expected(corpus_run):
    _, cases, ledger, quarantined, runs = corpus_run
    assert len({c.kind for c in cases}) == len(cases) >= 20
    for case in cases:
        row = ledger[case.file]
        assert row.status == case.status, (case.kind, row.status, row.reason)
        assert case.reason in (row.reason or ""), (case.kind, row.reason)
        got = {line: reason for line, reason in quarantined.get(case.file, {}).items()}
        assert set(got) == set(case.quarantined), (case.kind, got)
        assert all(case.quarantined[line] in got[line] for line in got), (case.kind, got)
        if case.status != "landed":
            assert (row.rows_read, row.rows_landed, row.rows_quarantined) == (0, 0, 0), case.kind


def test_nothing_is_lost_the_ledger_reconciles_and_no_file_is_landed_twice(corpus_run, spark):
    local, cases, ledger, _, _ = corpus_run
    balance = reconcile(spark, local)
    assert balance.where(~F.col("balanced")).count() == 0
    landed = {r.path for r in balance.collect()}
    assert {_relative(p) for p in landed} == {c.file for c in cases if c.status == "landed"}
    listed = {str(p.relative_to(Path(local.root).parent / "landing")) for p in
              (Path(local.root).parent / "landing").rglob("*") if p.is_file()}
    assert listed <= set(ledger)  # every file there is ledgered (the renamed one under both names)
    by_file = {}
    for ref in BRONZE.values():
        if io.exists(spark, ref, local.root):
            for r in io.read(spark, ref, local.root).groupBy("_source_file").count().collect():
                by_file[_relative(r._source_file)] = r["count"]
    assert by_file == {f: r.rows_landed for f, r in ledger.items() if r.status == "landed" and r.rows_landed}


def test_implausible_dates_reach_silver_flagged_or_empty_never_as_a_year_zero(corpus_run, spark):
    local, cases, _, _, _ = corpus_run
    flagged = {c.file: c.silver for c in cases if c.silver and c.file.split("/")[-1].startswith("encounter")}
    rows = (io.read(spark, ENCOUNTER, local.root).where(F.col("source_file").rlike("encounter-c000[01]"))
            .select("source_file", F.year("admit_time").alias("year"), "dq_flags").collect())
    assert {_relative(r.source_file): (r.dq_flags, r.year) for r in rows} == {
        file: ([rule], None if rule.endswith("_parsed") else 2099) for file, rule in flagged.items()}
    (born,) = [c for c in cases if c.silver == "no birth year"]
    person = io.read(spark, PERSON, local.root).where(F.col("source_file").endswith(born.file))
    assert [(r.birth_year, r.age_band) for r in person.collect()] == [(None, None)]


def test_a_configuration_pointing_at_a_missing_folder_is_refused_before_anything(tmp_path, capsys):
    root = tmp_path / "root"
    code = main(["ingest", "--conf-dir", str(CONF), "--root", str(root), "--landing", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and f"landing folder {tmp_path / 'nowhere'} does not exist" in err and "--landing" in err
    assert not root.exists()
